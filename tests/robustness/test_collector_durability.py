"""A 2xx from the collector means kept: ``manta collect`` killed with SIGKILL while exporters
send loses no acknowledged span; the restarted collector writes them, each once; its worker
processes end with it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from manta_lib.importers import Hierarchy
from manta_lib.importers.otel_decode import spans_from_json
from manta_lib.importers.otel_map import trace_from_spans
from tests.lib.importers.otlp_builders import genai_agent_trace, request, to_protobuf
from tests.robustness.import_subprocess import no_duplicates, python, store_env, table_state

RUN = "durable"
RESOURCE = {"service.name": "agent", "manta.run_id": RUN}
TRACES_PER_REQUEST = 5

# timing-sensitive: run one at a time, after the parallel pass
pytestmark = pytest.mark.serial

_STORED = """
import json
from manta_lib.settings import load_settings
from manta_lib.store import Store

with Store.open(load_settings()) as store:
    rows = store.rows(
        "SELECT t.trace_id, t.tokens_input, t.turn_count, count(s.span_id) FROM {db}.traces t "
        "LEFT JOIN {db}.spans s ON s.run_id = t.run_id AND s.trace_id = t.trace_id "
        "GROUP BY t.trace_id, t.tokens_input, t.turn_count"
    )
    print(json.dumps({r[0]: [r[1], r[2], r[3]] for r in rows}))
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _collect(
    env: dict[str, str], *options: str, new_group: bool = False
) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "manta_lib.cli", "collect", "--port", str(port), *options],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=new_group,  # its own process group, as in a terminal
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        assert process.poll() is None, process.stderr.read() if process.stderr else b""
        try:
            if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                return process, f"{base}/v1/traces"
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "the collector did not start"
        time.sleep(0.1)


def _children(pid: int) -> list[int]:
    """The live processes whose parent is ``pid`` (the collector's worker processes)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _expected(number: int) -> list[int]:
    """tokens_input, turn_count and span count of trace ``number`` mapped whole (the
    reference computation: the mapper itself, on the spans sent)."""
    spans = spans_from_json(request(genai_agent_trace(number), RESOURCE))
    trace = trace_from_spans(spans, Hierarchy())
    return [trace["tokens_input"], trace["turn_count"], len(trace["spans"])]


@pytest.mark.slow
def test_kill_9_loses_no_acknowledged_span(tmp_path: Path) -> None:
    env = store_env(tmp_path)
    collector, endpoint = _collect(env, "--idle-timeout", "0.3", "--workers", "2")
    acknowledged: list[int] = []
    stop = threading.Event()

    def exporter(worker: int) -> None:
        body = b""
        with httpx.Client(timeout=10) as http:
            for batch in range(10_000):
                if stop.is_set():
                    return
                first = worker * 100_000 + batch * TRACES_PER_REQUEST + 1
                numbers = range(first, first + TRACES_PER_REQUEST)
                if batch % 5 != 4:  # else an exporter's retry: the previous request again
                    spans = [s for n in numbers for s in genai_agent_trace(n)]
                    body = to_protobuf(request(spans, RESOURCE))
                else:
                    numbers = range(0)
                try:
                    answer = http.post(
                        endpoint, content=body, headers={"Content-Type": "application/x-protobuf"}
                    )
                except httpx.HTTPError:
                    return  # the collector is gone: not acknowledged
                if answer.status_code == 200:
                    acknowledged.extend(numbers)

    threads = [threading.Thread(target=exporter, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(2.5)  # some traces written, some buffered, requests in flight
    workers = _children(collector.pid)
    assert workers, "the collector runs worker processes"
    collector.send_signal(signal.SIGKILL)
    collector.wait()
    stop.set()
    for thread in threads:
        thread.join()
    assert len(acknowledged) > 50
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in workers), "worker processes outlived the collector"

    restarted, _ = _collect(env, "--idle-timeout", "0.1")
    time.sleep(1.0)
    restarted.send_signal(signal.SIGTERM)  # writes everything buffered, then exits
    assert restarted.wait(timeout=120) == 0, restarted.stderr.read() if restarted.stderr else ""

    result = python(_STORED, env)
    assert result.returncode == 0, result.stderr
    stored = json.loads(result.stdout.strip().splitlines()[-1])
    missing = [n for n in acknowledged if f"{n:032x}" not in stored]
    assert not missing, f"{len(missing)} of {len(acknowledged)} acknowledged traces lost"
    reference = _expected(1)
    wrong = {n: stored[f"{n:032x}"] for n in acknowledged if stored[f"{n:032x}"] != reference}
    assert not wrong, (reference, list(wrong.items())[:5])
    assert no_duplicates(table_state(env))


@pytest.mark.slow
def test_ctrl_c_reaches_the_collector_not_its_workers(tmp_path: Path) -> None:
    env = store_env(tmp_path)
    collector, endpoint = _collect(env, "--idle-timeout", "30", "--workers", "2", new_group=True)
    spans = [s for n in range(1, 6) for s in genai_agent_trace(n)]
    answer = httpx.post(
        endpoint,
        content=to_protobuf(request(spans, RESOURCE)),
        headers={"Content-Type": "application/x-protobuf"},
        timeout=60,
    )
    assert answer.status_code == 200
    os.killpg(collector.pid, signal.SIGINT)  # a terminal's Ctrl-C: its whole process group
    assert collector.wait(timeout=120) == 0
    stderr = collector.stderr.read().decode() if collector.stderr else ""
    assert "KeyboardInterrupt" not in stderr, stderr  # the workers never saw the signal
    result = python(_STORED, env)
    assert result.returncode == 0, result.stderr
    stored = json.loads(result.stdout.strip().splitlines()[-1])
    assert sorted(stored) == [f"{n:032x}" for n in range(1, 6)]
