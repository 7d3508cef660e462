"""Rollouts through ``manta collect``: while another process holds the embedded store, a
RolloutLogger's shipper sends its shards to the collector's ``/v1/rollouts``, which keeps them
durably (a collector killed after its 2xx loses none) and stores them, each once; refused
lines come back with reasons into ``rejected.jsonl``; a wrong token keeps the shards."""

from __future__ import annotations

import gzip
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from manta_lib import RolloutLogger
from manta_lib.collector.server import Collector
from manta_lib.errors import ConfigError, ValidationError
from manta_lib.rollout_spool import REJECTED, CollectorRefusedError, post_once, shards
from manta_lib.settings import MantaSettings, load_settings
from manta_lib.store import Store

CHILD = [sys.executable, "-m", "tests.lib.rollout_child"]
ROOT = Path(__file__).resolve().parents[2]
TOKEN = "s3cret"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _env(manta_env: dict[str, str], **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MANTA_COLLECT")}
    env.update(manta_env, MANTA_LOCK_TIMEOUT_S="0.2", PYTHONUNBUFFERED="1", **extra)
    return env


@dataclass
class Collect:
    """A ``manta collect`` process (token ``TOKEN``) on the test's store."""

    base: str
    process: subprocess.Popen[bytes]
    output: Path

    def stop(self) -> str:
        """SIGTERM: it writes everything it accepted, then exits 0; its summary line."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(120)
        text = self.output.read_text(errors="replace")
        assert code == 0, text
        return text


def _start_collect(manta_env: dict[str, str], output: Path) -> Collect:
    port = _free_port()
    with output.open("wb") as sink:  # a file, not a pipe: nothing blocks on a full pipe
        process = subprocess.Popen(
            [sys.executable, "-m", "manta_lib.cli", "collect", "--port", str(port)]
            + ["--token", TOKEN],
            env=_env(manta_env, COLUMNS="200"),
            stdout=sink,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
    running = Collect(f"http://127.0.0.1:{port}", process, output)
    deadline = time.monotonic() + 120
    while True:
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"the collector did not start: {output.read_text()}")
        try:
            if httpx.get(f"{running.base}/health", timeout=1).status_code == 200:
                return running
        except httpx.HTTPError:
            pass
        time.sleep(0.1)


@pytest.fixture
def collect(manta_env: dict[str, str], tmp_path: Path) -> Iterator[Collect]:
    running = _start_collect(manta_env, tmp_path / "collect.log")
    try:
        yield running
    finally:
        if running.process.poll() is None:
            running.process.kill()
            running.process.wait()


def _stored(settings: MantaSettings, run_id: str) -> tuple[int, int, set[int]]:
    """``(rows, distinct trace ids, meta.i values)`` of a run in the store."""
    with Store.open(settings) as store:
        rows = store.rows(
            "SELECT trace_id, meta FROM {db}.traces WHERE run_id = {run:String}", {"run": run_id}
        )
    return len(rows), len({r[0] for r in rows}), {json.loads(r[1])["i"] for r in rows}


@pytest.mark.slow
def test_held_store_sends_rollouts_through_the_collector(
    settings: MantaSettings, manta_env: dict[str, str], collect: Collect, tmp_path: Path
) -> None:
    """The trainer's shipper posts to the collector while the store is held; the collector,
    killed before it could store them, keeps what it acknowledged for its next start."""
    spool = tmp_path / "spool"
    count = 300

    def train(token: str) -> subprocess.CompletedProcess[str]:
        env = _env(manta_env, MANTA_COLLECTOR_URL=collect.base, MANTA_COLLECTOR_TOKEN=token)
        return subprocess.run(
            [*CHILD, "finish", "held", str(spool), str(count)],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env=env,
        )

    with Store.open(settings):  # another process holds the embedded store
        refused = train("wrong")  # the collector refuses the token: the shards stay
        assert refused.returncode == 0, refused.stderr
        assert shards(spool)
        assert "401" in refused.stderr
        trainer = train(TOKEN)  # ships its own rollouts and those the first one left
        assert trainer.returncode == 0, trainer.stderr
        # every shard was acknowledged by the collector: none is left, none refused
        assert not shards(spool), trainer.stderr
        assert not (spool / REJECTED).exists()
        # a 2xx means on the collector's disk: killed now, it has stored nothing yet
        collect.process.kill()
        collect.process.wait()
        kept = Path(manta_env["MANTA_DATA_DIR"]) / "collector" / "spool" / "rollouts"
        assert shards(kept)
    # the store is free again: the next collector stores what the killed one acknowledged
    summary = _start_collect(manta_env, tmp_path / "restart.log").stop()
    assert f"0 rollouts received, {2 * count:,} in the store, 0 refused" in summary
    assert not shards(kept)
    rows, distinct, indexes = _stored(settings, "held")
    assert indexes == set(range(10**6, 10**6 + count))
    assert rows == distinct == 2 * count  # both trainers' rollouts (their own trace ids), once


@pytest.mark.slow
def test_resent_shard_is_stored_once_refusals_and_wrong_token(
    settings: MantaSettings, collect: Collect, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    with RolloutLogger(run_id="resent", spool_dir=spool, ship=False) as log:
        for i in range(20):
            log.rollout(
                step=i // 5,
                datapoint=f"dp_{i % 4}",
                messages=[
                    {"role": "user", "content": f"q{i}"},
                    {"role": "assistant", "content": "a"},
                ],
                score=float(i % 2),
                meta={"i": i},
                criteria={"exact": bool(i % 2)},
            )
    [shard] = shards(spool)
    bad = [
        b'{"trace_id": "cut',  # not JSON
        json.dumps({"trace_id": "no_messages", "run_id": "resent", "step": 1}).encode(),
        json.dumps(
            {"trace_id": "bad_step", "run_id": "resent", "step": "x", "messages": []}
        ).encode(),
    ]
    with shard.open("ab") as handle:
        handle.write(b"\n".join(bad) + b"\n")
    sent = shard.read_bytes()
    url = f"{collect.base}/v1/rollouts"

    with pytest.raises(CollectorRefusedError, match="401"):
        post_once(spool, url, "wrong")
    assert shards(spool) == [shard]  # kept, nothing marked refused
    assert not (spool / REJECTED).exists()

    assert post_once(spool, url, TOKEN) == 20
    assert not shards(spool)
    rejected = [json.loads(line) for line in (spool / REJECTED).read_text().splitlines()]
    reasons = {
        (r["record"]["trace_id"] if isinstance(r["record"], dict) else r["record"]): r["reasons"]
        for r in rejected
    }
    assert set(reasons) == {'{"trace_id": "cut', "no_messages", "bad_step"}
    assert "invalid JSON" in reasons['{"trace_id": "cut'][0]
    assert any("messages" in why for why in reasons["no_messages"])
    assert any("step" in why for why in reasons["bad_step"])

    shard.write_bytes(sent)  # the same shard again (a shipper killed before its delete)
    assert post_once(spool, url, TOKEN) == 20
    assert not shards(spool)

    # both sends counted; the collector refused the 2 bad records that are JSON, each time
    assert "40 rollouts received, 40 in the store, 4 refused" in collect.stop()
    rows, distinct, indexes = _stored(settings, "resent")
    assert indexes == set(range(20))
    assert rows == distinct == 20  # each once
    with Store.open(settings) as store:
        graders = store.rows(
            "SELECT count() FROM {db}.spans WHERE run_id = 'resent' AND kind = 'grader'"
        )[0][0]
    assert graders == 20


def test_rollout_endpoint_answers(settings: MantaSettings, tmp_path: Path) -> None:
    """The endpoint's HTTP answers: token, content type, gzip, body limit, per-line reasons."""
    good = {
        "trace_id": "t1",
        "run_id": "answers",
        "step": 0,
        "messages": [{"role": "user", "content": "hi"}],
    }
    body = b"\n".join([json.dumps(good).encode(), b"", b"[1]"]) + b"\n"
    ndjson = {"content-type": "application/x-ndjson", "authorization": f"Bearer {TOKEN}"}
    with Collector(
        port=0, token=TOKEN, settings=settings, max_body_bytes=4096, flush_interval=60
    ) as collector:
        url = collector.endpoint.replace("/v1/traces", "/v1/rollouts")
        assert (
            httpx.post(url, content=body, headers={**ndjson, "authorization": ""}).status_code
            == 401
        )
        wrong_type = httpx.post(url, content=body, headers={**ndjson, "content-type": "text/csv"})
        assert wrong_type.status_code == 415
        too_big = httpx.post(url, content=b"x" * 5000, headers=ndjson)
        assert too_big.status_code == 413
        answer = httpx.post(
            url, content=gzip.compress(body), headers={**ndjson, "content-encoding": "gzip"}
        )
        assert answer.status_code == 200
        # line 2 is blank: the refused record is line 3
        assert answer.json() == {
            "accepted": 1,
            "rejected": 1,
            "rejections": [{"line": 3, "reasons": ["expected a JSON object, got list"]}],
        }
        assert shards(collector.rollout_dir), "accepted lines are on disk before the 200"
    assert not shards(collector.rollout_dir)  # stopping stored them
    with Store.open(settings) as store:
        assert store.rows("SELECT count() FROM {db}.traces WHERE run_id = 'answers'")[0][0] == 1


def test_a_body_over_the_limit_is_sent_in_parts(settings: MantaSettings, tmp_path: Path) -> None:
    """Past the collector's body limit the shipper halves its request; a single rollout over
    the limit is refused with the collector's reason, the others are stored."""
    spool = tmp_path / "spool"
    with RolloutLogger(run_id="parts", spool_dir=spool, ship=False) as log:
        for i in range(12):
            size = 6000 if i == 5 else 900
            text = os.urandom(size // 2).hex()  # incompressible: gzip does not hide the size
            log.rollout(step=0, messages=[{"role": "user", "content": text}], meta={"i": i})
    with Collector(port=0, settings=settings, max_body_bytes=4096) as collector:
        url = collector.endpoint.replace("/v1/traces", "/v1/rollouts")
        assert post_once(spool, url) == 11
    [rejected] = [json.loads(line) for line in (spool / REJECTED).read_text().splitlines()]
    assert rejected["record"]["metadata"] == {"i": 5}
    assert "limit" in rejected["reasons"][0]
    rows, distinct, indexes = _stored(settings, "parts")
    assert indexes == set(range(12)) - {5}
    assert rows == distinct == 11


def test_logger_refuses_a_collector_url_that_is_not_http(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="collector_url"):
        RolloutLogger(run_id="r", spool_dir=tmp_path, collector_url="127.0.0.1:4318")


def test_a_collector_url_setting_that_is_not_http_names_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MANTA_COLLECTOR_URL", "localhost:4318")
    with pytest.raises(ConfigError, match="MANTA_COLLECTOR_URL: 'localhost:4318' is not an http"):
        load_settings()
    monkeypatch.setenv("MANTA_COLLECTOR_URL", " ")
    assert load_settings().collector_url is None
