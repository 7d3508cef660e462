"""The ``otel_spans`` table: the OpenTelemetry spans each OTLP trace was built from.

A Manta trace mapped from OTel spans is a function of the whole set of its spans (turns,
tokens, message order), so a later part of the trace can only join it by mapping the union
again. The raw spans are kept here (one row per ``(otel_trace_id, span_id)``; the payload is
the importer's own serialization) with the Manta ``(run_id, trace_id)`` they became, and the
stored trace records in ``meta.otel_spans`` how many of them it was built from: a stored trace
is complete exactly when that count equals the number of its stored raw spans.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from manta_lib.store.client import Store

__all__ = ["StoredOtelTrace", "stored_otel_traces", "write_otel_spans"]


@dataclass
class StoredOtelTrace:
    """What the store holds of one OTel trace."""

    run_id: str
    trace_id: str
    payloads: dict[str, str] = field(default_factory=dict)  # span_id -> payload
    built_from: int | None = None  # meta.otel_spans of the stored trace; None: no trace row


def stored_otel_traces(store: Store, otel_trace_ids: Sequence[str]) -> dict[str, StoredOtelTrace]:
    """``{otel_trace_id: StoredOtelTrace}`` for the given OTel trace ids with stored raw spans
    (two queries for the whole batch; none of the payloads when nothing is stored)."""
    if not otel_trace_ids:
        return {}
    rows = store.rows(
        "SELECT otel_trace_id, span_id, any(run_id), any(trace_id), any(payload) "
        "FROM {db}.otel_spans WHERE otel_trace_id IN {ids:Array(String)} "
        "GROUP BY otel_trace_id, span_id",
        {"ids": sorted(set(otel_trace_ids))},
    )
    found: dict[str, StoredOtelTrace] = {}
    for otel_trace_id, span_id, run_id, trace_id, payload in rows:
        entry = found.setdefault(otel_trace_id, StoredOtelTrace(run_id, trace_id))
        entry.payloads[span_id] = payload
    if not found:
        return found
    keys = sorted({(e.run_id, e.trace_id) for e in found.values()})
    counts = store.rows(
        "SELECT run_id, trace_id, max(JSONExtractInt(meta, 'otel_spans')) FROM {db}.traces "
        "WHERE run_id IN {runs:Array(String)} "
        "AND (run_id, trace_id) IN {keys:Array(Tuple(String, String))} GROUP BY run_id, trace_id",
        {"runs": sorted({k[0] for k in keys}), "keys": keys},
    )
    built = {(run_id, trace_id): int(count) for run_id, trace_id, count in counts}
    for entry in found.values():
        entry.built_from = built.get((entry.run_id, entry.trace_id))
    return found


def write_otel_spans(store: Store, rows: Sequence[tuple[str, str, str, str, str]]) -> None:
    """Insert ``(otel_trace_id, span_id, run_id, trace_id, payload)`` rows (the caller passes
    only spans not stored yet)."""
    if not rows:
        return
    store.insert_columns(
        "otel_spans",
        {
            name: [row[i] for row in rows]
            for i, name in enumerate(("otel_trace_id", "span_id", "run_id", "trace_id", "payload"))
        },
    )
