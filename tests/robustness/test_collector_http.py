"""The collector under hostile HTTP: every request is answered, nothing answered 200 is lost
to the dead-letter file, every gzip member is read, a slow body times out, 50 concurrent
clients are all served, a client hanging up prints nothing, and an open address without a
token is warned about."""

from __future__ import annotations

import contextlib
import gzip
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from manta_lib import MantaService
from manta_lib.collector.server import Collector
from manta_lib.settings import MantaSettings
from manta_lib.store import Store
from tests.lib.importers.otlp_builders import (
    attrs,
    genai_agent_trace,
    request,
    span,
    to_protobuf,
)

# Seeded stores or seconds per test: make test runs them, make check leaves them out.
pytestmark = pytest.mark.slow

RESOURCE = {"service.name": "agent", "manta.run_id": "hostile"}
JSON_TYPE = {"Content-Type": "application/json"}


@pytest.fixture
def collector(settings: MantaSettings) -> Iterator[Collector]:
    with Collector(
        port=0, idle_timeout=0.1, flush_interval=0.05, body_timeout=1.0, settings=settings
    ) as running:
        yield running


def raw_exchange(collector: Collector, data: bytes, timeout: float = 10.0) -> bytes:
    """Send ``data`` on a new connection; the answer's head and body (up to its length), or
    what came before the server closed the connection (b"" for no answer)."""
    with socket.create_connection(collector.address, timeout=timeout) as conn:
        with contextlib.suppress(OSError):  # the server may answer and close before the end
            conn.sendall(data)
        received = b""
        while True:
            try:
                chunk = conn.recv(65536)
            except (TimeoutError, ConnectionResetError):
                return received
            if not chunk:
                return received
            received += chunk
            head, sep, body = received.partition(b"\r\n\r\n")
            if sep:
                lengths = [
                    line.split(b":", 1)[1]
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                ]
                if lengths and len(body) >= int(lengths[0]):
                    return received


def post(body: bytes, *headers: str, path: str = "/v1/traces", version: str = "1.1") -> bytes:
    head = [f"POST {path} HTTP/{version}", "Host: x", *headers]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


def _json(doc: object) -> bytes:
    return json.dumps(doc).encode()


def _with(**fields: object) -> bytes:
    return _json(request([{**span(90, 0, "x", {}), **fields}], RESOURCE))


HOSTILE: dict[str, bytes] = {
    "negative length": post(b"{}", "Content-Type: application/json", "Content-Length: -5"),
    "length not a number": post(b"{}", "Content-Type: application/json", "Content-Length: 1e3"),
    "two lengths": post(
        b"{}", "Content-Type: application/json", "Content-Length: 2", "Content-Length: 3"
    ),
    "garbage request line": b"GARBAGE\r\n\r\n",
    "binary request line": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\0" * 64,
    "start time 1e400": post(
        body := _json(request([{**span(91, 0, "x", {}), "startTimeUnixNano": 1e400}], RESOURCE)),
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
    ),
    "intValue 1e400": post(
        body := _json(
            request(
                [
                    {
                        **span(92, 0, "x", {}),
                        "attributes": [{"key": "n", "value": {"intValue": 1e400}}],
                    }
                ],
                RESOURCE,
            )
        ),
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
    ),
    "event time 1e400": post(
        body := _with(events=[{"name": "e", "timeUnixNano": 1e400}]),
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
    ),
    "span id a number": post(
        body := _with(spanId=12345),
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
    ),
    "resourceSpans a string": post(
        b'{"resourceSpans": "x"}', "Content-Type: application/json", "Content-Length: 22"
    ),
    "JSON null": post(b"null", "Content-Type: application/json", "Content-Length: 4"),
    "chunked JSON": post(
        b"2\r\n{}\r\n0\r\n\r\n", "Content-Type: application/json", "Transfer-Encoding: chunked"
    ),
    "HTTP/1.0 without a length": post(b"{}", "Content-Type: application/json", version="1.0"),
    "path with bytes": post(b"", path="/v1/%ff%00/../traces", version="1.1"),
    "huge header": post(b"{}", "Content-Type: application/json", "X-Big: " + "a" * 200_000),
    "unknown method": b"BREW /v1/traces HTTP/1.1\r\nHost: x\r\n\r\n",
    "two encodings": post(
        b"{}", "Content-Type: application/json", "Content-Encoding: gzip, gzip", "Content-Length: 2"
    ),
    "protobuf of junk": post(
        b"\xff" * 40, "Content-Type: application/x-protobuf", "Content-Length: 40"
    ),
}


def test_every_hostile_request_is_answered_without_a_traceback(
    collector: Collector, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    unanswered = []
    server_errors = []
    for name, data in HOSTILE.items():
        answer = raw_exchange(collector, data)
        if not answer.startswith(b"HTTP/1."):
            unanswered.append(name)
        elif answer.split(b" ", 2)[1].startswith(b"5"):
            server_errors.append((name, answer[:200]))
    assert not unanswered, unanswered
    assert not server_errors, server_errors
    good = to_protobuf(request(genai_agent_trace(1), RESOURCE))
    ok = httpx.post(
        collector.endpoint, content=good, headers={"Content-Type": "application/x-protobuf"}
    )
    assert ok.status_code == 200  # still serving
    assert "Traceback" not in capfd.readouterr().err
    assert not [r for r in caplog.records if r.exc_info and r.levelno >= logging.WARNING]


# Requests that decode but hold a trace the store refuses: answered 400 (nothing kept), never
# 200 and then written to the dead-letter file instead of the store.
REFUSED_TRACES = {
    "step not a number": {"manta.step": "abc"},
    "score not a number": {"manta.score": "high"},
    "phase unknown": {"manta.phase": "bogus"},
    "step past Int64": {"manta.step": 2**63},
    "run id with a NUL": {"manta.run_id": "a\u0000b"},
}


def test_nothing_answered_200_goes_to_the_dead_letter_file(
    collector: Collector, settings: MantaSettings
) -> None:
    answers = {}
    for number, (name, extra) in enumerate(REFUSED_TRACES.items(), start=10):
        spans = genai_agent_trace(number)
        root = spans[0]  # the root span's attributes come first
        kept = [a for a in root["attributes"] if a["key"] not in extra]
        spans[0] = {**root, "attributes": kept + attrs(extra)}
        body = _json(request(spans, RESOURCE))
        answers[name] = httpx.post(collector.endpoint, content=body, headers=JSON_TYPE)
    time.sleep(0.5)  # idle timeout passes: anything buffered is written
    collector.flush(everything=True)
    accepted = {n: a.status_code for n, a in answers.items() if a.status_code == 200}
    with Store.open(settings) as store:
        stored = {t.trace_id for t in MantaService(store).get_traces()}
    assert not collector.dead_letter.exists(), collector.dead_letter.read_text()[:2000]
    assert len(stored) == len(accepted), (accepted, stored)
    for name, answer in answers.items():
        if answer.status_code != 200:
            assert answer.status_code == 400 and answer.json()["message"], name


def test_every_gzip_member_is_read(collector: Collector, settings: MantaSettings) -> None:
    doc = json.dumps(request(genai_agent_trace(30), RESOURCE)).encode()
    half = len(doc) // 2
    body = gzip.compress(doc[:half]) + gzip.compress(doc[half:])
    answer = httpx.post(
        collector.endpoint, content=body, headers={**JSON_TYPE, "Content-Encoding": "gzip"}
    )
    assert answer.status_code == 200, answer.text
    collector.stop()
    with Store.open(settings) as store:
        trace = MantaService(store).get_trace(f"{30:032x}")
    assert trace is not None and trace.trace.turn_count == 2


def test_a_short_body_times_out_instead_of_holding_the_connection(collector: Collector) -> None:
    started = time.monotonic()
    with socket.create_connection(collector.address, timeout=10) as conn:
        conn.sendall(post(b"{", "Content-Type: application/json", "Content-Length: 1000"))
        answer = conn.recv(65536)
        rest = conn.recv(65536)  # then the server closes the connection
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert rest == b"" or b"408" not in rest
    assert time.monotonic() - started < 8


def test_fifty_concurrent_clients_are_all_served(collector: Collector) -> None:
    body = to_protobuf(request(genai_agent_trace(40), RESOURCE))
    failures: list[str] = []
    statuses: list[int] = []
    go = threading.Event()

    def client() -> None:
        go.wait()
        for _ in range(4):
            try:  # a new connection per request: each one goes through the listen backlog
                with httpx.Client(timeout=60) as http:
                    answer = http.post(
                        collector.endpoint,
                        content=body,
                        headers={"Content-Type": "application/x-protobuf"},
                    )
                statuses.append(answer.status_code)
            except Exception as exc:
                failures.append(repr(exc))

    threads = [threading.Thread(target=client) for _ in range(50)]
    for thread in threads:
        thread.start()
    go.set()
    for thread in threads:
        thread.join()
    assert not failures, failures[:5]
    assert statuses == [200] * 200


def test_clients_hanging_up_print_nothing(
    collector: Collector, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    body = _json(request(genai_agent_trace(50), RESOURCE))
    for cut in (0, 10, len(body) // 2):
        for _ in range(5):
            with socket.create_connection(collector.address, timeout=5) as conn:
                conn.sendall(
                    post(
                        body[:cut], "Content-Type: application/json", f"Content-Length: {len(body)}"
                    )
                )
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
    time.sleep(0.3)
    ok = httpx.post(collector.endpoint, content=body, headers=JSON_TYPE)
    assert ok.status_code == 200
    assert "Traceback" not in capfd.readouterr().err
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_an_open_address_without_a_token_is_warned_about(
    settings: MantaSettings, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="manta_lib.collector"):
        for host, token in (("0.0.0.0", None), ("127.0.0.1", None), ("0.0.0.0", "t")):
            with Collector(host=host, port=0, token=token, settings=settings):
                pass
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "without a token" in warnings[0] and "0.0.0.0" in warnings[0]
