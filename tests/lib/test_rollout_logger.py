"""RolloutLogger: the spool keeps every rollout a killed trainer logged more than a second
before it died, a busy store leaves them in the spool for the next start, bad rollouts are
set aside with their reason, and nothing raises into the training loop."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from manta_lib import MantaService, RolloutLogger
from manta_lib.rollout_spool import REJECTED, claimed, shards, ship_once
from manta_lib.settings import MantaSettings
from manta_lib.store import Store

# timing-sensitive: run one at a time, after the parallel pass
pytestmark = pytest.mark.serial

CHILD = [sys.executable, "-m", "tests.lib.rollout_child"]
ROOT = Path(__file__).resolve().parents[2]


def _logged_indexes(store: Store, run_id: str) -> set[int]:
    rows = store.rows("SELECT meta FROM {db}.traces WHERE run_id = {run:String}", {"run": run_id})
    return {json.loads(row[0])["i"] for row in rows}


def _wait_gone(pid: int, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    raise AssertionError(f"process {pid} still running")


@pytest.mark.slow
def test_sigkilled_trainer_loses_nothing_logged_a_second_before(
    settings: MantaSettings, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    child = subprocess.Popen(
        [*CHILD, "train", "killed", str(spool)], stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    assert child.stdout is not None
    shipper = int(child.stdout.readline().split()[1])
    progress: list[tuple[int, float]] = []
    started = time.monotonic()
    while time.monotonic() - started < 3.0:
        line = child.stdout.readline()
        logged, at = line.split()
        progress.append((int(logged), float(at)))
    # the job is killed as a whole: the trainer and its shipper, nothing flushed or drained
    killed_at = time.monotonic()
    os.kill(child.pid, signal.SIGKILL)
    os.kill(shipper, signal.SIGKILL)
    child.wait()
    _wait_gone(shipper)
    for line in child.stdout:  # batches printed before the kill but not yet read
        logged, at = line.split()
        progress.append((int(logged), float(at)))
    must_have = max(logged for logged, at in progress if at < killed_at - 1.0)
    assert must_have >= 1000, progress[:3]
    assert shards(spool), "the killed trainer left its spool"

    # restart: the next logger ships what the killed one left, then its own rollouts
    restart = subprocess.run(
        [*CHILD, "finish", "killed", str(spool), "20"], capture_output=True, text=True, cwd=ROOT
    )
    assert restart.returncode == 0, restart.stderr
    assert not shards(spool)
    with Store.open(settings) as store:
        stored = _logged_indexes(store, "killed")
        steps = store.rows(
            "SELECT uniqExact(trace_id), count() FROM {db}.traces WHERE run_id = 'killed'"
        )[0]
    missing = set(range(must_have)) - stored
    assert not missing, f"{len(missing)} rollouts logged > 1 s before the kill are not stored"
    assert set(range(10**6, 10**6 + 20)) <= stored
    assert steps[0] == steps[1]  # every rollout once


@pytest.mark.slow
def test_busy_store_keeps_the_spool_for_the_next_start(
    settings: MantaSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = tmp_path / "spool"
    monkeypatch.setenv("MANTA_LOCK_TIMEOUT_S", "0.2")
    with Store.open(settings):  # another process owns the embedded store
        first = subprocess.run(
            [*CHILD, "finish", "busy", str(spool), "30"], capture_output=True, text=True, cwd=ROOT
        )
        assert first.returncode == 0, first.stderr
        assert len(shards(spool)) >= 1
    second = subprocess.run(
        [*CHILD, "finish", "busy", str(spool), "30"], capture_output=True, text=True, cwd=ROOT
    )
    assert second.returncode == 0, second.stderr
    assert not shards(spool)
    with Store.open(settings) as store:
        # both runs logged indexes 10**6 .. +29 with their own trace ids: 60 rollouts
        count = store.rows("SELECT count() FROM {db}.traces WHERE run_id = 'busy'")[0][0]
    assert count == 60


def test_spool_lines_cut_bad_rollouts_and_unserializable_values(
    store: Store, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    good = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    with RolloutLogger(run_id="spooled", ship=False, spool_dir=spool) as log:
        ids = [log.rollout(step=1, datapoint="dp", messages=good, score=0.5) for _ in range(5)]
        log.rollout(step=1, messages=[{"role": "robot", "content": "?"}], meta={"k": 1})
        log.rollout(step=2, messages=good, meta={"bad": object()})
        graded = log.rollout(
            step=3, messages=good, score=1.5, criteria={"correct": True, "style": 0.5}, grader="g"
        )
        assert log.flush(timeout=10)
        assert log.dropped == 1
        assert log.logged == 8
    assert len(set(ids)) == 5
    with log:  # started again after closing (a trainer's second train())
        ids.append(log.rollout(step=1, datapoint="dp", messages=good, score=0.5))
    files = shards(spool)
    assert files and all(f.name.endswith(".jsonl") for f in files)  # finished shards
    # a line that is not JSON is set aside; a crash in the middle of a line: the cut line is
    # not shipped, the others are
    with files[-1].open("ab") as handle:
        handle.write(b"{garbled\n")
        handle.write(b'{"trace_id": "cut", "run_id": "spooled", "mess')
    assert ship_once(spool) == 7
    assert not shards(spool)
    grader = MantaService(store).get_trace(graded).grader_result()
    assert grader is not None and (grader.name, grader.score) == ("g", 1.5)
    assert [(c.name, c.score, c.passed) for c in grader.criteria] == [
        ("correct", 1.0, True),
        ("style", 0.5, None),
    ]
    rows = store.rows(
        "SELECT trace_id, step_number, datapoint_id, score FROM {db}.traces "
        "WHERE run_id = 'spooled' AND step_number = 1 ORDER BY trace_id"
    )
    assert sorted(r[0] for r in rows) == sorted(ids)
    assert {(r[1], r[2], r[3]) for r in rows} == {(1, "dp", 0.5)}
    rejected = [json.loads(line) for line in (spool / REJECTED).read_text().splitlines()]
    assert len(rejected) == 2
    assert rejected[0]["record"]["messages"][0]["role"] == "robot"
    assert "robot" in rejected[0]["reasons"][0]
    assert rejected[1]["record"] == "{garbled"
    assert rejected[1]["reasons"][0].startswith("invalid JSON")


def test_a_forked_worker_does_not_hold_the_shard(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    log = RolloutLogger(run_id="forked", ship=False, spool_dir=spool, shard_seconds=100).start()
    log.rollout(step=1, messages=[{"role": "user", "content": "hi"}])
    assert log.flush(timeout=10)
    ready, started = os.pipe()
    worker = os.fork()  # a data loader worker, still alive when the trainer's logger closes
    if worker == 0:
        os.write(started, b"1")  # the fork handlers have run
        time.sleep(5)
        os._exit(0)
    try:
        assert os.read(ready, 1) == b"1"
        log.close()
        (shard,) = shards(spool)
        with claimed(shard) as fd:
            assert fd is not None, "the forked worker's copy keeps the shard locked"
    finally:
        os.kill(worker, signal.SIGKILL)
        os.waitpid(worker, 0)
        os.close(ready)
        os.close(started)
