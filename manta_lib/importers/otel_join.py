"""OTLP traces that arrive in parts, or twice, become one stored trace each.

An OpenTelemetry span is identified by ``(trace_id, span_id)``. An exporter's retry, a file
holding an export twice, or concatenated protobuf messages deliver some spans again: each is
kept once. A trace whose spans arrive in several parts (two files, two collector requests
further apart than the idle timeout) is mapped again from all its spans, so its totals
(tokens, cost, turns, span count) are those of the whole trace.

For that the raw spans of every stored OTLP trace are kept (:mod:`manta_lib.store.otel_spans`).
A part is joined in this order: its new raw spans are written, the stored trace (with its
spans) is deleted, the trace mapped from all raw spans is written. A crash between any two
steps leaves a stored trace whose ``meta.otel_spans`` differs from its raw span count, or no
trace: the next delivery of any part (an exporter retry, the collector's spool replay, the
import run again) writes it whole. Traces stored before the raw spans were kept cannot be
joined: a later part of one is skipped as already present.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field

from manta_lib.importers.base import Hierarchy, Problems
from manta_lib.importers.otel_decode import OtelSpan
from manta_lib.importers.otel_map import trace_from_spans, unique_spans
from manta_lib.ingest.loader import CheckedTrace, SourceRecord
from manta_lib.store import Store
from manta_lib.store.otel_spans import stored_otel_traces, write_otel_spans
from manta_lib.store.trace_writes import delete_written

__all__ = [
    "JoinedParts",
    "OtelPart",
    "join_parts",
    "span_from_payload",
    "span_payload",
    "write_otel_spans",
]


def span_payload(span: OtelSpan) -> str:
    """One span as a JSON array of its fields in declaration order (for ``otel_spans``)."""
    return _dumps(
        [
            span.trace_id,
            span.span_id,
            span.parent_span_id,
            span.name,
            span.start_ns,
            span.end_ns,
            span.attributes,
            span.resource,
            span.events,
            span.status_code,
            span.status_message,
            span.scope,
        ]
    )


_dumps = json.JSONEncoder(separators=(",", ":")).encode


def span_from_payload(payload: str) -> OtelSpan:
    fields = json.loads(payload)
    fields[8] = [tuple(event) for event in fields[8]]
    return OtelSpan(*fields)


@dataclass
class OtelPart:
    """The spans of one OTel trace in this delivery, and where they came from.

    ``payloads`` (span id -> :func:`span_payload` text, with ``trace_id``) may stand in for
    ``spans``, as the collector keeps them: spans are then made from the text only if the
    trace is mapped here."""

    source: str
    line: int
    spans: list[OtelSpan]
    checked: CheckedTrace | None = None  # these very spans mapped and checked already
    payloads: dict[str, str] | None = None
    trace_id: str = ""  # the OTel trace id (with payloads)


@dataclass
class JoinedParts:
    records: list[SourceRecord]  # to load (new traces, and stored ones joined by new spans)
    present: int = 0  # traces whose every span was stored already
    joined: int = 0  # stored traces replaced by a bigger version
    raw_rows: list[tuple[str, str, str, str, str]] = field(default_factory=list)  # not written


def _payload(span: OtelSpan | str) -> str:
    return span if isinstance(span, str) else span_payload(span)


def _trace_id(part: OtelPart) -> str:
    if part.payloads is not None:
        return part.trace_id
    return part.spans[0].trace_id if part.spans else ""


def join_parts(
    store: Store, parts: Sequence[OtelPart], hierarchy: Hierarchy, *, replace: bool = True
) -> JoinedParts:
    """Map each part together with what the store holds of its trace; write the new raw spans
    and delete the stored traces that the returned records replace (see the module doc).

    ``replace=False`` (a strict import, which must not change the store unless every record
    is good) refuses a part that would replace a stored trace, with a problem saying so, and
    leaves the raw spans in :attr:`JoinedParts.raw_rows` for the caller to write (with
    :func:`write_otel_spans`) once the records are stored."""
    stored = stored_otel_traces(store, [_trace_id(part) for part in parts if _trace_id(part)])
    out = JoinedParts([])
    raw_rows: list[tuple[str, str, str, str, str]] = []
    replaced: list[tuple[str, str]] = []
    for part in parts:
        # the part's new spans: (span id, the span or its payload text)
        items: list[tuple[str, OtelSpan | str]]
        otel_trace_id = _trace_id(part)
        if part.payloads is not None:
            items = list(part.payloads.items())
        else:
            items = [(s.span_id, s) for s in unique_spans(part.spans)]
        if not items:
            continue
        entry = stored.get(otel_trace_id)
        if entry is not None:
            items = [item for item in items if item[0] not in entry.payloads]
            if entry.built_from == len(entry.payloads) + len(items):
                out.present += 1
                continue
        if entry is not None and entry.built_from is not None and not replace:
            problem = (
                f"trace {otel_trace_id}",
                f"has {len(items)} spans the stored trace {entry.trace_id!r} lacks; a strict "
                "import does not replace stored traces: import without --strict to join them",
            )
            out.records.append(SourceRecord(part.source, part.line, None, (problem,)))
            continue
        if entry is None and part.checked is not None:
            checked = part.checked
            raw_rows.extend(
                (otel_trace_id, span_id, checked.run_id, checked.trace_id, _payload(x))
                for span_id, x in items
            )
            out.records.append(SourceRecord(part.source, part.line, checked))
            continue
        whole = [span_from_payload(p) for p in entry.payloads.values()] if entry else []
        whole += [span_from_payload(x) if isinstance(x, str) else x for _, x in items]
        try:
            trace = trace_from_spans(whole, hierarchy)
        except Problems as exc:
            problems = tuple(
                (f"trace {otel_trace_id}: {f}" if f else f"trace {otel_trace_id}", r)
                for f, r in exc.problems
            )
            out.records.append(SourceRecord(part.source, part.line, None, problems))
            continue
        run_id, trace_id = str(trace["run_id"]), str(trace["trace_id"])
        raw_rows.extend(
            (otel_trace_id, span_id, run_id, trace_id, _payload(x)) for span_id, x in items
        )
        if entry is not None and entry.built_from is not None:
            replaced.append((entry.run_id, entry.trace_id))
            out.joined += 1
        out.records.append(SourceRecord(part.source, part.line, trace))
    if not replace:
        out.raw_rows = raw_rows
        return out
    write_otel_spans(store, raw_rows)
    if replaced:
        delete_written(store, replaced)
    return out
