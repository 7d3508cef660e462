"""The OTLP/HTTP collector: hostile input, partial success, shutdown flush, and a real agent."""

from __future__ import annotations

import gc
import gzip
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from google.rpc import status_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from manta_lib import MantaService
from manta_lib.collector.server import Collector
from manta_lib.settings import MantaSettings
from manta_lib.store import Store
from tests.lib.http_fixtures import RecordingHTTPServer
from tests.lib.importers.otlp_builders import (
    expected_conversation,
    genai_agent_trace,
    request,
    span,
    to_protobuf,
)

# Seeded stores or seconds per test: make test runs them, make check leaves them out.
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[3]
RESOURCE = {"service.name": "agent", "manta.run_id": "collected"}
PROTOBUF = {"Content-Type": "application/x-protobuf"}


@pytest.fixture
def collector(settings: MantaSettings) -> Iterator[Collector]:
    with Collector(
        port=0, idle_timeout=0.2, flush_interval=0.1, max_body_bytes=8 << 20, settings=settings
    ) as running:
        yield running


def _post(collector: Collector, body: bytes, headers: dict[str, str]) -> httpx.Response:
    return httpx.post(collector.endpoint, content=body, headers=headers, timeout=60)


def _stored_trace_ids(settings: MantaSettings) -> set[str]:
    with Store.open(settings) as store:
        return {t.trace_id for t in MantaService(store).get_traces()}


def test_hostile_input_gets_4xx_and_the_collector_keeps_serving(
    collector: Collector, settings: MantaSettings
) -> None:
    good = request(genai_agent_trace(1), RESOURCE)
    body = to_protobuf(good)

    truncated = _post(collector, body[:-7], PROTOBUF)
    assert truncated.status_code == 400
    assert (
        "not a protobuf ExportTraceServiceRequest"
        in status_pb2.Status.FromString(truncated.content).message
    )

    wrong_type = _post(collector, body, {"Content-Type": "text/plain"})
    assert (
        wrong_type.status_code == 415 and "application/x-protobuf" in wrong_type.json()["message"]
    )

    huge = _post(collector, b"x" * (50 << 20), PROTOBUF)
    assert huge.status_code == 413

    bomb = _post(
        collector, gzip.compress(b"\0" * (20 << 20)), {**PROTOBUF, "Content-Encoding": "gzip"}
    )
    assert (
        bomb.status_code == 413
        and "decompressed" in status_pb2.Status.FromString(bomb.content).message
    )

    # one span with a short trace id spoils the request: none of its spans is kept
    mixed = request([*genai_agent_trace(2), {**span(3, 0, "x", {}), "traceId": "abcd"}], RESOURCE)
    bad_id = _post(collector, json.dumps(mixed).encode(), {"Content-Type": "application/json"})
    assert bad_id.status_code == 400
    assert "spans[4].traceId: expected 16 bytes" in bad_id.json()["message"]

    short_span = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
    short_span.resource_spans[0].scope_spans[0].spans[1].span_id = b"1234567"
    assert _post(collector, short_span.SerializeToString(), PROTOBUF).status_code == 400

    # shapes no exporter sends: deep nesting, a year-3000 timestamp, attributes not a list
    deep = b'{"resourceSpans": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    weird = [
        deep,
        json.dumps(
            request([{**span(6, 0, "x", {}), "endTimeUnixNano": str(2**64)}], RESOURCE)
        ).encode(),
        json.dumps(request([{**span(7, 0, "x", {}), "attributes": "oops"}], RESOURCE)).encode(),
    ]
    for payload in weird:
        answer = _post(collector, payload, {"Content-Type": "application/json"})
        assert answer.status_code == 400, answer.text

    no_run = request(genai_agent_trace(4), {"service.name": "anonymous"})
    partial = _post(collector, json.dumps(no_run).encode(), {"Content-Type": "application/json"})
    assert partial.status_code == 200
    assert partial.json()["partialSuccess"]["rejectedSpans"] == "4"
    assert "manta.run_id" in partial.json()["partialSuccess"]["errorMessage"]

    # 10k spans in one request (100 traces), with attributes Manta does not know
    many = [
        span(
            100 + t,
            i,
            f"step {i}",
            {"custom.attr": i, "x.y.z": [True, 1.5]},
            parent=0 if i else None,
        )
        for t in range(100)
        for i in range(100)
    ]
    big = _post(collector, to_protobuf(request(many, RESOURCE)), PROTOBUF)
    assert big.status_code == 200
    assert not trace_service_pb2.ExportTraceServiceResponse.FromString(big.content).HasField(
        "partial_success"
    )

    # still serving: the good request is taken, gzip and JSON too
    assert _post(collector, body, PROTOBUF).status_code == 200
    gz = gzip.compress(json.dumps(request(genai_agent_trace(5), RESOURCE)).encode())
    assert (
        _post(
            collector, gz, {"Content-Type": "application/json", "Content-Encoding": "gzip"}
        ).status_code
        == 200
    )
    assert httpx.get(collector.endpoint.replace("/v1/traces", "/health")).status_code == 200
    assert (
        httpx.post(collector.endpoint.replace("/v1/traces", "/v1/logs"), content=b"").status_code
        == 404
    )

    collector.stop()
    assert collector.stats.bad_requests == 7  # the gzip bomb too
    stored = _stored_trace_ids(settings)
    expected = {f"{n:032x}" for n in (1, 5)} | {f"{100 + t:032x}" for t in range(100)}
    assert stored == expected  # nothing of traces 2, 3 (bad request) or 4 (no run id)
    with Store.open(settings) as store:
        ((spans,),) = store.rows(
            "SELECT count() FROM {db}.spans WHERE run_id = {run:String} AND kind = 'system' "
            "AND startsWith(name, 'step ')",
            {"run": "collected"},
        )
        assert spans == 10_000
        context = MantaService(store).get_trace(f"{100:032x}")
        assert context.system_events()[1].attributes["custom.attr"] == 1


def test_bearer_token_and_flush_across_requests(settings: MantaSettings) -> None:
    spans = genai_agent_trace(9)
    with Collector(port=0, token="s3cret", idle_timeout=30, settings=settings) as collector:
        first = request(spans[:2], RESOURCE)
        assert _post(collector, to_protobuf(first), PROTOBUF).status_code == 401
        auth = {**PROTOBUF, "Authorization": "Bearer s3cret"}
        assert _post(collector, to_protobuf(first), auth).status_code == 200
        # the rest of the trace arrives later, without the resource's run id: same trace
        assert _post(collector, to_protobuf(request(spans[2:])), auth).status_code == 200
        assert collector.flush() == 0  # not idle for 30 s yet: nothing written
    # stop() wrote the buffered trace as one
    with Store.open(settings) as store:
        context = MantaService(store).get_trace(f"{9:032x}")
    assert context.conversation().to_openai_messages() == expected_conversation(9)


@pytest.mark.parametrize("collecting", [True, False])
def test_a_flush_leaves_garbage_collection_as_it_found_it(
    settings: MantaSettings, collecting: bool
) -> None:
    was = gc.isenabled()
    try:
        with Collector(port=0, idle_timeout=30, flush_interval=3600, settings=settings) as c:
            body = to_protobuf(request(genai_agent_trace(4), RESOURCE))
            assert _post(c, body, PROTOBUF).status_code == 200
            (gc.enable if collecting else gc.disable)()
            assert c.flush(everything=True) == 1  # paused while the batch is written
            assert gc.isenabled() is collecting
    finally:
        (gc.enable if was else gc.disable)()
    assert _stored_trace_ids(settings) == {f"{4:032x}"}


def _completion(message: dict[str, Any], finish: str) -> dict[str, Any]:
    return {
        "id": "cmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "fake-model-2024",
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": {"prompt_tokens": 50, "completion_tokens": 7, "total_tokens": 57},
    }


@pytest.mark.slow
@pytest.mark.parametrize("instrumentation", ["genai", "openinference"])
def test_real_openai_agent_through_manta_collect(
    manta_env: dict[str, str], settings: MantaSettings, instrumentation: str
) -> None:
    rollouts = 3
    env = {**os.environ, "PYTHONPATH": str(REPO), "MANTA_LOG_LEVEL": "WARNING"}
    collect = subprocess.Popen(
        [sys.executable, "-m", "manta_lib.cli", "collect", "--port", "0", "--idle-timeout", "60"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert collect.stdout is not None
        line = collect.stdout.readline()
        endpoint = line.split()[2]
        with RecordingHTTPServer() as chat:
            for r in range(rollouts):
                calls = [
                    {
                        "id": f"call_l{r}",
                        "type": "function",
                        "function": {"name": "lookup", "arguments": json.dumps({"x": f"pi{r}"})},
                    },
                    {
                        "id": f"call_d{r}",
                        "type": "function",
                        "function": {"name": "divide", "arguments": '{"x": "1/0"}'},
                    },
                ]
                chat.respond(
                    200,
                    json=_completion(
                        {"role": "assistant", "content": None, "tool_calls": calls}, "tool_calls"
                    ),
                )
                chat.respond(
                    200, json=_completion({"role": "assistant", "content": f"Answer {r}"}, "stop")
                )
            agent = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "tests.lib.importers.otel_agent_child",
                    chat.url + "/v1",
                    endpoint,
                    "agent_run",
                    str(rollouts),
                    instrumentation,
                ],
                cwd=REPO,
                env=env,
                capture_output=True,
                text=True,
                timeout=180,
                check=True,
            )
            sent = [request.json()["messages"] for request in chat.requests]
        transcripts = json.loads(agent.stdout)
        # traces are complete only after 60 idle seconds: SIGTERM must write them all
        collect.send_signal(signal.SIGTERM)
        out, _ = collect.communicate(timeout=60)
        assert collect.returncode == 0, out
    finally:
        if collect.poll() is None:
            collect.kill()
    with Store.open(settings) as store:
        service = MantaService(store)
        traces = service.get_traces("agent_run", order_by="datapoint_id")
        contexts = service.load_contexts(traces)
    assert [t.datapoint_id for t in traces] == [f"dp_{r}" for r in range(rollouts)]
    for r, (trace, context) in enumerate(zip(traces, contexts, strict=True)):
        assert trace.step_number == r
        conversation = context.conversation().to_openai_messages()
        assert conversation == transcripts[r]
        # what the model was sent on its last call is the conversation minus its last answer
        assert [m["content"] for m in sent[2 * r + 1]] == [
            m["content"] or "" for m in conversation[:-1]
        ]
        tools = context.tools()
        assert [(t.tool_name, t.is_error, t.error_type) for t in tools] == [
            ("lookup", False, None),
            ("divide", True, "ZeroDivisionError"),
        ]
        assert tools[0].result == f"found pi{r}"
        llm = context.llm_calls()
        assert [(c.model_name, c.tokens_input, c.tokens_output) for c in llm] == [
            ("fake-model-2024", 50, 7)
        ] * 2
        assert (trace.tokens_input, trace.model_name) == (100, "fake-model-2024")


def test_unwritable_store_keeps_traces_in_the_spool_until_the_next_start(
    manta_env: dict[str, str], settings: MantaSettings
) -> None:
    from manta_lib.settings import load_settings

    down = load_settings(CLICKHOUSE_URL="http://127.0.0.1:9", MANTA_CONNECT_TIMEOUT_S=0.5)
    collector = Collector(port=0, idle_timeout=0.05, flush_interval=0.05, settings=down).start()
    body = to_protobuf(request(genai_agent_trace(21), RESOURCE))
    assert _post(collector, body, PROTOBUF).status_code == 200
    collector.stop()
    assert collector.stats.traces_stored == 0
    assert not collector.dead_letter.exists()  # not a mapping problem: kept for a retry
    assert list(collector.spool_dir.glob("*.spool"))
    # the store is back: the next start writes what was acknowledged, and empties the spool
    with Collector(port=0, idle_timeout=0.05, flush_interval=0.05, settings=settings) as again:
        assert again.stats.spans_replayed == 4
    assert _stored_trace_ids(settings) == {f"{21:032x}"}
    assert not list(again.spool_dir.glob("*.spool"))


def test_a_killed_worker_process_is_replaced_and_its_request_kept(
    settings: MantaSettings, caplog: pytest.LogCaptureFixture
) -> None:
    with Collector(
        port=0, idle_timeout=0.05, flush_interval=0.05, settings=settings, workers=1
    ) as collector:
        (first,) = collector.worker_pids
        os.kill(first, signal.SIGKILL)
        body = to_protobuf(request(genai_agent_trace(31), RESOURCE))
        assert _post(collector, body, PROTOBUF).status_code == 200
        (second,) = collector.worker_pids
        assert second != first  # the request met the dead worker: it was replaced
        assert "worker process failed" in caplog.text
        body = to_protobuf(request(genai_agent_trace(32), RESOURCE))
        assert _post(collector, body, PROTOBUF).status_code == 200
        assert collector.worker_pids == [second]
        bad = _post(collector, body[:-7], PROTOBUF)  # refused by the worker, whole
        assert bad.status_code == 400
        assert "not a protobuf" in status_pb2.Status.FromString(bad.content).message
    assert _stored_trace_ids(settings) == {f"{31:032x}", f"{32:032x}"}
    assert not Path(f"/proc/{second}").exists()  # stop() ended the worker


def test_without_worker_processes_requests_are_prepared_in_process(
    settings: MantaSettings,
) -> None:
    with Collector(
        port=0, idle_timeout=0.05, flush_interval=0.05, settings=settings, workers=0
    ) as collector:
        assert collector.worker_pids == []
        body = to_protobuf(request(genai_agent_trace(41), RESOURCE))
        assert _post(collector, body, PROTOBUF).status_code == 200
        bad = _post(collector, body[:-7], PROTOBUF)
        assert bad.status_code == 400
        assert "not a protobuf" in status_pb2.Status.FromString(bad.content).message
    assert _stored_trace_ids(settings) == {f"{41:032x}"}
