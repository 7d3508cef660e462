"""OTLP trace files: ``ExportTraceServiceRequest`` as JSON (one document, or one per line as
the OpenTelemetry Collector's file exporter writes) or as protobuf (one serialized message).

Spans are grouped by trace id across the whole file (across all files of an import) and
mapped by :mod:`manta_lib.importers.otel_map`, each ``(trace_id, span_id)`` once; a trace
stored before is joined by the new spans (:mod:`manta_lib.importers.otel_join`). Errors name
the line (1 for a single document) and the place in the request, or the trace.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from manta_lib.importers.base import Hierarchy, Problems, plain
from manta_lib.importers.otel_decode import (
    OtelSpan,
    parse_protobuf,
    spans_from_json,
    spans_from_proto,
)
from manta_lib.importers.otel_join import OtelPart, join_parts
from manta_lib.importers.otel_map import trace_from_spans
from manta_lib.ingest.loader import SourceRecord
from manta_lib.store import Store


def group_traces(
    spans: list[tuple[int, OtelSpan]], hierarchy: Hierarchy, source: str
) -> Iterator[SourceRecord]:
    """One record per trace id (first-seen order), located at its first span's line."""
    groups: dict[str, list[OtelSpan]] = {}
    first_line: dict[str, int] = {}
    for line, span in spans:
        groups.setdefault(span.trace_id, []).append(span)
        first_line.setdefault(span.trace_id, line)
    for trace_id, members in groups.items():
        line = first_line[trace_id]
        try:
            yield SourceRecord(source, line, trace_from_spans(members, hierarchy))
        except Problems as exc:
            problems = tuple(
                (f"trace {trace_id}: {f}" if f else f"trace {trace_id}", r) for f, r in exc.problems
            )
            yield SourceRecord(source, line, None, problems)


class OTLPImporter:
    """``--format otlp``: OTLP JSON or protobuf trace exports."""

    name = "otlp"

    def sniff(self, path: Path) -> bool:
        with path.open("rb") as handle:
            head = handle.read(1 << 16)
        stripped = head.lstrip()
        if stripped.startswith(b"{"):
            return b'"resourceSpans"' in head or b'"resource_spans"' in head
        if not head:
            return False
        try:
            return bool(parse_protobuf(path.read_bytes()).resource_spans)
        except Exception:  # any decoding failure: not OTLP protobuf
            return False

    def read_file(self, path: Path, hierarchy: Hierarchy) -> Iterator[SourceRecord]:
        spans: list[tuple[int, OtelSpan]] = []
        for item in read_spans(path):
            if isinstance(item, SourceRecord):
                yield item
            else:
                spans.append(item)
        yield from group_traces(spans, hierarchy, str(path))

    def map_record(self, record: Any, hierarchy: Hierarchy) -> list[dict[str, Any]]:
        """An ``ExportTraceServiceRequest`` (protobuf message or OTLP JSON dict) -> traces."""
        if hasattr(record, "SerializeToString"):
            spans = spans_from_proto(record)
        else:
            spans = spans_from_json(plain(record))
        out: list[dict[str, Any]] = []
        for item in group_traces([(0, s) for s in spans], hierarchy, "<records>"):
            if item.problems:
                raise Problems(list(item.problems))
            out.append(item.record)
        return out


def read_spans(path: Path) -> Iterator[SourceRecord | tuple[int, OtelSpan]]:
    """The spans of one OTLP file as ``(line, span)``, and a record with problems for each
    line (or protobuf body) that does not decode."""
    source = str(path)
    body = path.read_bytes()
    if body.lstrip().startswith(b"{"):
        try:
            lines: list[tuple[int, bytes]] = [(1, body)]
            json.loads(body)
        except ValueError:  # not one document: one request per line
            lines = list(enumerate(body.splitlines(), start=1))
        for number, raw in lines:
            if not raw.strip():
                continue
            try:
                doc = json.loads(raw)
            except ValueError as exc:
                yield SourceRecord(source, number, None, (("", f"invalid JSON ({exc})"),))
                continue
            try:
                yield from ((number, span) for span in spans_from_json(doc))
            except Problems as exc:
                yield SourceRecord(source, number, None, tuple(exc.problems))
    else:
        try:
            yield from ((1, span) for span in spans_from_proto(parse_protobuf(body)))
        except Problems as exc:
            yield SourceRecord(source, 1, None, tuple(exc.problems))


@dataclass
class JoinCounts:
    """What :func:`read_joined` found stored already (and, strict, the raw spans to write
    once the import has stored its traces)."""

    present: int = 0
    joined: int = 0
    raw_rows: list[tuple[str, str, str, str, str]] = field(default_factory=list)  # strict: later


def read_joined(
    paths: Sequence[Path],
    hierarchy: Hierarchy,
    store: Store,
    counts: JoinCounts,
    advance: Callable[[Path], object] | None = None,
    batch: int = 5000,
    strict: bool = False,
) -> Iterator[SourceRecord]:
    """The traces of several OTLP files, a trace's spans gathered across all of them (each
    span once) and joined with what the store holds of it (:mod:`otel_join`)."""
    spans: dict[str, OtelPart] = {}
    for path in paths:
        for item in read_spans(path):
            if isinstance(item, SourceRecord):
                yield item
                continue
            line, span = item
            part = spans.get(span.trace_id)
            if part is None:
                part = spans[span.trace_id] = OtelPart(str(path), line, [])
            part.spans.append(span)
        if advance is not None:
            advance(path)
    parts = list(spans.values())
    spans.clear()
    for start in range(0, len(parts), batch):
        joined = join_parts(store, parts[start : start + batch], hierarchy, replace=not strict)
        counts.present += joined.present
        counts.joined += joined.joined
        counts.raw_rows.extend(joined.raw_rows)
        yield from joined.records
