"""``mode="processes"``: worker processes map, this process reads the store and writes.

Against the real embedded chDB store: the workers never open it (the test would deadlock on
its lock otherwise), results equal local mode's, and resume, error isolation and timeouts
behave as in the other modes.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from manta_lib.errors import PipelineDefinitionError
from manta_lib.models import EntityLevel
from manta_lib.service import MantaService
from manta_lib.settings import MantaSettings, load_settings
from manta_lib.store import Store
from manta_lib.store.native_rows import decode_span_rows, span_rows_native
from tests.lib import processes_defs
from tests.lib.pipeline.stored import load_numbered, stored_snapshot

REPO = Path(__file__).resolve().parents[3]


def _statuses(settings: MantaSettings) -> dict[str, tuple[str, str | None]]:
    """``(status, error)`` stored per trace (the resume record)."""
    with Store.open(settings) as store:
        rows = store.rows(
            "SELECT entity_id, column, value_string FROM {db}.entity_metadata FINAL "
            "WHERE entity_level = 'trace' AND column IN ('__status__', '__error__')"
        )
    status = {tid: value for tid, column, value in rows if column == "__status__"}
    error = {tid: value for tid, column, value in rows if column == "__error__"}
    return {tid: (value, error.get(tid)) for tid, value in status.items()}


def _raw_rows(settings: MantaSettings) -> dict[str, int]:
    """Status rows written per trace before FINAL merges anything: >1 means written twice."""
    with Store.open(settings) as store:
        return dict(
            store.rows(
                "SELECT entity_id, count() FROM {db}.entity_metadata WHERE entity_level = "
                "'trace' AND column = '__status__' GROUP BY entity_id"
            )
        )


def _calls(path: Path) -> list[tuple[str, int]]:
    if not path.exists():
        return []
    return [
        (tid, int(pid))
        for tid, pid in (line.split() for line in path.read_text().split("\n") if line)
    ]


def _run(**options: object) -> object:
    return processes_defs.pipeline.run(
        "run_p",
        mode="processes",
        workers=2,
        progress=False,
        **options,  # type: ignore[arg-type]
    )


@pytest.mark.slow
def test_results_equal_local_mode_from_worker_processes_and_rerun_maps_nothing(
    settings: MantaSettings,
    manta_env: dict[str, str],
    tmp_path: Path,
    calls: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    load_numbered(settings, tmp_path, 20, "run_p")
    result = _run(batch_size=8)

    mapped = _calls(calls)
    assert sorted(tid for tid, _ in mapped) == [f"t{i:03d}" for i in range(20)]
    pids = {pid for _, pid in mapped}
    assert os.getpid() not in pids and 1 <= len(pids) <= 2, "worker processes did the mapping"
    assert len(result[EntityLevel.DATAPOINT]) == 7  # type: ignore[index]
    processed = stored_snapshot(settings)
    shards = sorted(Path(manta_env["MANTA_RUNS_LOG_DIR"]).glob("*.jsonl"))
    rows = [json.loads(line) for shard in shards for line in shard.read_text().splitlines()]
    assert [(r["mode"], r["status"], r["traces_total"]) for r in rows] == [
        ("processes", "succeeded", 20)
    ]
    assert rows[0]["summary"]["batches"] == 3

    calls.unlink()
    _run(batch_size=8)
    assert _calls(calls) == [], "every trace is stored: nothing is mapped again"
    assert set(_raw_rows(settings).values()) == {1}

    monkeypatch.setenv("MANTA_DATABASE", manta_env["MANTA_DATABASE"] + "_local")
    local = load_settings()
    load_numbered(local, tmp_path, 20, "run_p")
    processes_defs.pipeline.run("run_p", mode="local", batch_size=8, progress=False)
    assert stored_snapshot(local) == processed


@pytest.mark.slow
def test_a_failing_trace_and_a_timeout_are_that_trace_s_error_only(
    settings: MantaSettings, tmp_path: Path, calls: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    load_numbered(settings, tmp_path, 9, "run_p")
    monkeypatch.setenv("MANTA_TEST_FAIL_ON", "t002")
    monkeypatch.setenv("MANTA_TEST_SLOW_ON", "t007")
    started = time.monotonic()
    result = _run(batch_size=4, timeout_s=1.0)
    assert time.monotonic() - started < 25, "the stuck trace was not waited for"

    statuses = _statuses(settings)
    assert statuses["t002"] == ("error", "RuntimeError: cannot analyse t002")
    assert statuses["t007"] == ("error", "TimeoutError: no result after 1 s")
    assert {tid: s for tid, (s, _) in statuses.items() if tid not in ("t002", "t007")} == {
        f"t{i:03d}": "ok" for i in range(9) if i not in (2, 7)
    }
    datapoints = {o.entity_id: o.output for o in result[EntityLevel.DATAPOINT]}  # type: ignore[index]
    assert sum(o.failed for o in datapoints.values()) == 2


@pytest.mark.slow
def test_a_dying_worker_fails_only_its_batch_which_is_retried(
    settings: MantaSettings, tmp_path: Path, calls: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    load_numbered(settings, tmp_path, 12, "run_p")
    monkeypatch.setenv("MANTA_TEST_CRASH_ON", "t005")
    monkeypatch.setenv("MANTA_TEST_CRASH_ONCE_FILE", str(tmp_path / "crashed"))
    _run(batch_size=4)
    assert (tmp_path / "crashed").exists(), "the worker process really died"
    assert {tid: s for tid, (s, _) in _statuses(settings).items()} == {
        f"t{i:03d}": "ok" for i in range(12)
    }
    assert set(_raw_rows(settings).values()) == {1}


@pytest.mark.slow
def test_driver_killed_mid_run_resumes_without_losing_or_rewriting_a_trace(
    settings: MantaSettings, tmp_path: Path, calls: Path
) -> None:
    traces = 40
    load_numbered(settings, tmp_path, traces, "run_p")
    env = {
        **os.environ,
        "MANTA_TEST_MAP_DELAY_S": "0.05",
        "MANTA_FLUSH_SECONDS": "0.05",
        "PYTHONPATH": str(REPO),
    }
    command = [sys.executable, "-m", "tests.lib.processes_child", "run_p", "4"]
    child = subprocess.Popen(command, env=env, cwd=REPO, start_new_session=True)
    deadline = time.monotonic() + 60
    while len(_calls(calls)) < 16 and time.monotonic() < deadline and child.poll() is None:
        time.sleep(0.02)
    workers = psutil.Process(child.pid).children()
    assert len(workers) >= 2
    child.send_signal(signal.SIGKILL)  # the driver only: its workers notice and exit
    child.wait()
    _, alive = psutil.wait_procs(workers, timeout=15)
    with contextlib.suppress(ProcessLookupError):  # cleanup, whatever the assertion says
        os.killpg(child.pid, signal.SIGKILL)
    assert not alive, "worker processes outlived their killed driver"
    first = {tid for tid, _ in _calls(calls)}
    assert 16 <= len(first) < traces, "the driver must be killed mid-run"
    written = set(_raw_rows(settings))
    assert written, "batches finished before the kill must be written"

    env.pop("MANTA_TEST_MAP_DELAY_S")
    calls.unlink()
    subprocess.run(command, env=env, cwd=REPO, check=True, timeout=120)
    second = {tid for tid, _ in _calls(calls)}
    assert not written & second, "a written trace was mapped again"
    assert first | second == {f"t{i:03d}" for i in range(traces)}
    assert _raw_rows(settings) == {f"t{i:03d}": 1 for i in range(traces)}


def test_workers_is_checked_and_belongs_to_processes_mode(settings: MantaSettings) -> None:
    with pytest.raises(PipelineDefinitionError, match="workers must be a positive number"):
        processes_defs.pipeline.run("run_p", mode="processes", workers=0, settings=settings)
    with pytest.raises(PipelineDefinitionError, match="max_workers for the threads"):
        processes_defs.pipeline.run("run_p", mode="local", workers=2, settings=settings)


@pytest.mark.slow
def test_a_subset_run_returns_local_mode_s_outputs_and_writes_nothing(
    settings: MantaSettings, tmp_path: Path, calls: Path
) -> None:
    load_numbered(settings, tmp_path, 10, "run_p")
    subset = {"limit_traces": 7, "batch_size": 4}
    got = _run(**subset)
    local = processes_defs.pipeline.run("run_p", mode="local", progress=False, **subset)  # type: ignore[arg-type]
    for level in (EntityLevel.TRACE, EntityLevel.DATAPOINT):
        assert [(o.entity_id, o.output, o.error) for o in got[level]] == [  # type: ignore[index]
            (o.entity_id, o.output, o.error) for o in local[level]
        ]
    assert len(got[EntityLevel.TRACE]) == 7  # type: ignore[index]
    with Store.open(settings) as store:
        assert store.rows("SELECT count() FROM {db}.entity_metadata") == [(0,)]


def test_spans_shipped_undecoded_decode_to_the_rows_local_mode_reads(
    settings: MantaSettings, tmp_path: Path
) -> None:
    load_numbered(settings, tmp_path, 6, "run_p")
    with Store.open(settings) as store:
        service = MantaService(store)
        traces = service.get_traces("run_p", order_by="trace_id")
        contexts = service.load_contexts(traces)
        shipped = pickle.loads(
            pickle.dumps(span_rows_native(store, "run_p", [t.trace_id for t in traces[1:5]]))
        )
        nothing = span_rows_native(store, "run_p", ["no_such_trace"])
    decoded = decode_span_rows(shipped)
    assert sorted(decoded) == [t.trace_id for t in traces[1:5]]
    for context in contexts[1:5]:
        rows = list(context._rows)
        assert rows and decoded[context.trace_id] == rows  # values and types, timestamps too
    assert decode_span_rows(nothing) == {}
