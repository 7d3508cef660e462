"""A span is identified by (trace_id, span_id): delivered twice it is stored once, and a later
part of a trace joins it (totals recomputed) — through ``manta import`` and the collector.
Each case is compared with the same spans imported once into a fresh database."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from manta_lib.collector.server import Collector
from manta_lib.importers import import_files
from manta_lib.settings import MantaSettings
from manta_lib.store import Store
from tests.lib.importers.otlp_builders import genai_agent_trace, request, to_protobuf
from tests.robustness.otlp_reference import reference, snapshot

# Seeded stores or seconds per test: make test runs them, make check leaves them out.
pytestmark = pytest.mark.slow

RESOURCE = {"service.name": "agent", "manta.run_id": "joined"}


def _doc(spans: list[dict[str, Any]]) -> dict[str, Any]:
    return request(spans, RESOURCE)


def _write(path: Path, *docs: dict[str, Any]) -> Path:
    path.write_text("\n".join(json.dumps(doc) for doc in docs) + "\n")
    return path


def test_an_export_repeated_in_a_file_is_stored_once(store: Store, tmp_path: Path) -> None:
    spans = genai_agent_trace(1) + genai_agent_trace(2)
    path = _write(tmp_path / "twice.jsonl", _doc(spans), _doc(spans))
    report = import_files([path], store=store, format="otlp")
    assert report.ok and report.traces_loaded == 2
    assert snapshot(store) == reference(store, [_doc(spans)], tmp_path)


def test_concatenated_protobuf_is_stored_once(store: Store, tmp_path: Path) -> None:
    spans = genai_agent_trace(3)
    body = to_protobuf(_doc(spans))
    path = tmp_path / "export.pb"
    path.write_bytes(body + body)  # protobuf merges: the spans are there twice
    report = import_files([path], store=store, format="otlp")
    assert report.ok and report.traces_loaded == 1
    assert snapshot(store) == reference(store, [_doc(spans)], tmp_path)


@pytest.mark.parametrize("together", [True, False], ids=["one import", "two imports"])
def test_a_trace_split_over_two_files_is_one_trace(
    store: Store, tmp_path: Path, together: bool
) -> None:
    spans = genai_agent_trace(4)
    first = _write(tmp_path / "a.jsonl", _doc(spans[:2]))
    second = _write(tmp_path / "b.jsonl", _doc(spans[1:]))  # one span in both files
    if together:
        import_files([first, second], store=store, format="otlp")
    else:
        import_files([first], store=store, format="otlp")
        import_files([second], store=store, format="otlp")
    assert snapshot(store) == reference(store, [_doc(spans)], tmp_path)
    again = import_files([first, second], store=store, format="otlp")
    assert (again.traces_loaded, again.traces_already_present) == (0, 1)
    assert snapshot(store) == reference(store, [_doc(spans)], tmp_path)


def _wait(condition: Any, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_the_collector_stores_a_retry_once_and_joins_a_late_part(
    settings: MantaSettings, tmp_path: Path
) -> None:
    retried, split = genai_agent_trace(5), genai_agent_trace(6)
    headers = {"Content-Type": "application/x-protobuf"}
    with Collector(port=0, idle_timeout=0.2, flush_interval=0.05, settings=settings) as c:
        for body in (_doc(retried), _doc(retried), _doc(split[:2])):  # an exporter retry
            assert httpx.post(c.endpoint, content=to_protobuf(body), headers=headers).is_success
        _wait(lambda: c.stats.traces_stored == 2)
        # a retry after the trace was written, and the rest of trace 6 past the idle timeout
        for body in (_doc(retried), _doc(split[1:])):
            assert httpx.post(c.endpoint, content=to_protobuf(body), headers=headers).is_success
        _wait(lambda: c.stats.traces_joined == 1)
    with Store.open(settings) as store:
        assert snapshot(store) == reference(store, [_doc(retried), _doc(split)], tmp_path)


def test_a_strict_import_refuses_to_replace_a_stored_trace(store: Store, tmp_path: Path) -> None:
    spans = genai_agent_trace(7)
    first = _write(tmp_path / "a.jsonl", _doc(spans[:2]))
    second = _write(tmp_path / "b.jsonl", _doc(spans[2:]))
    assert import_files([first], store=store, format="otlp", strict=True).traces_loaded == 1
    before = snapshot(store)
    report = import_files([second], store=store, format="otlp", strict=True)
    assert report.traces_loaded == 0
    (error,) = report.errors
    assert "strict import does not replace stored traces" in error.reason
    assert snapshot(store) == before
    assert import_files([second], store=store, format="otlp").traces_loaded == 1
    assert snapshot(store) == reference(store, [_doc(spans)], tmp_path)
