"""The import fuzzer's OTLP duplicate and split kinds: the spans of a few traces delivered as
hostile exporters and file writers do — a request repeated (an exporter's retry), an export
repeated in a file, concatenated protobuf, a trace split over lines, files or separate
imports, parts overlapping, spans shuffled. Whatever the delivery, the store must end up
exactly as if each trace had been imported once, whole; and importing everything again
changes nothing."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from manta_lib.importers import import_files
from manta_lib.store import Store
from tests.lib.importers.otlp_builders import genai_agent_trace, request, to_protobuf
from tests.robustness.otlp_reference import fresh_store, reference, snapshot

# Seeded stores or seconds per test: make test runs them, make check leaves them out.
pytestmark = pytest.mark.slow

EXAMPLES = 12
RESOURCE = {"service.name": "agent", "manta.run_id": "fuzz"}
KINDS = ("retry", "repeat in file", "split", "overlap", "shuffle")


def _parts(data: st.DataObject, spans: list[dict[str, Any]], label: str) -> list[list[Any]]:
    """The spans of one trace as the parts a delivery sends (together they cover all)."""
    kind = data.draw(st.sampled_from(KINDS), label=f"{label} kind")
    if kind == "split":
        cut = data.draw(st.integers(1, len(spans) - 1), label=f"{label} cut")
        return [spans[:cut], spans[cut:]]
    if kind == "overlap":
        cut = data.draw(st.integers(1, len(spans) - 1), label=f"{label} cut")
        return [spans[: cut + 1], spans[cut - 1 :]]
    if kind == "shuffle":
        return [data.draw(st.permutations(spans), label=f"{label} order")]
    return [spans, spans]  # a retry, or an export repeated (the file decides which)


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_duplicates_and_splits_store_each_trace_once_and_whole(
    data: st.DataObject, store: Store, tmp_path: Path
) -> None:
    folder = tmp_path / uuid.uuid4().hex[:8]
    folder.mkdir()
    numbers = data.draw(st.lists(st.integers(1, 50), min_size=1, max_size=3, unique=True))
    files = data.draw(st.integers(1, 3), label="files")
    contents: list[list[dict[str, Any]]] = [[] for _ in range(files)]
    for number in numbers:
        for part in _parts(data, genai_agent_trace(number), f"trace {number}"):
            target = data.draw(st.integers(0, files - 1), label=f"file of a part of {number}")
            contents[target].append(request(part, RESOURCE))
    paths = []
    for index, docs in enumerate(contents):
        if not docs:
            continue
        if data.draw(st.booleans(), label=f"file {index} as protobuf"):
            path = folder / f"part{index}.pb"
            path.write_bytes(b"".join(to_protobuf(doc) for doc in docs))  # concatenated
        else:
            path = folder / f"part{index}.jsonl"
            path.write_text("\n".join(json.dumps(doc) for doc in docs) + "\n")
        paths.append(path)

    target = fresh_store(store)
    if data.draw(st.booleans(), label="one import per file"):
        for path in paths:
            report = import_files([path], store=target, format="otlp")
            assert report.ok, [str(e) for e in report.errors]
    else:
        report = import_files(paths, store=target, format="otlp")
        assert report.ok, [str(e) for e in report.errors]

    whole = [request(genai_agent_trace(n), RESOURCE) for n in numbers]
    expected = reference(store, whole, folder)
    assert snapshot(target) == expected
    again = import_files(paths, store=target, format="otlp")
    assert (again.traces_loaded, again.spans_loaded) == (0, 0)
    assert again.traces_already_present == len(numbers)
    assert snapshot(target) == expected
