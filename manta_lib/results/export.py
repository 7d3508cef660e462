"""Export traces (with spans) and stored results for a notebook or another tool.

Parquet: ``traces.parquet`` and ``spans.parquet`` (the store's columns, streamed from
ClickHouse in Arrow batches) plus one ``results_<judge>_<level>.parquet`` per judge.
JSON Lines: ``traces.jsonl`` in the import format (one trace per line with its ``spans``, so
``manta import traces.jsonl`` loads it back) plus ``results_<judge>_<level>.jsonl``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from manta_lib.errors import QueryError
from manta_lib.store.export_queries import arrow_batches

if TYPE_CHECKING:  # the service exposes this module: importing it here would be a cycle
    from manta_lib.service import MantaService

ExportFormat = Literal["parquet", "jsonl"]


@dataclass
class ExportSummary:
    """What was written: ``{path: rows}``."""

    files: dict[Path, int] = field(default_factory=dict)


def export(
    svc: MantaService,
    output_dir: Path,
    run_id: str | Sequence[str] | None,
    *,
    fmt: ExportFormat = "parquet",
    traces: bool = True,
    spans: bool = True,
    judges: Sequence[str] = (),
    level: str = "trace",
    **filters: Any,
) -> ExportSummary:
    """Write the selected traces (``filters`` as in ``get_traces``, ``results=`` included)
    and the stored results of ``judges`` at ``level`` into ``output_dir``.

    Example::

        export(svc, Path("out"), "run_grpo_math_v1", judges=["tool_errors"],
               results="tool_errors.tool_errors > 0")
    """
    if fmt not in ("parquet", "jsonl"):
        raise QueryError(f"export format {fmt!r} is not valid (expected parquet or jsonl)")
    if not traces and not judges:
        raise QueryError("nothing to export: keep the traces or name a judge with --judge")
    output_dir.mkdir(parents=True, exist_ok=True)
    summary = ExportSummary()
    if traces:
        trace_filter = svc._trace_filter(run_id, filters)
        if fmt == "parquet":
            path = output_dir / "traces.parquet"
            summary.files[path] = _write_parquet(svc, trace_filter, path, spans=False)
            if spans:
                path = output_dir / "spans.parquet"
                summary.files[path] = _write_parquet(svc, trace_filter, path, spans=True)
        else:
            path = output_dir / "traces.jsonl"
            summary.files[path] = _write_jsonl(svc, run_id, path, spans, filters)
    for judge in judges:
        path = output_dir / f"results_{judge}_{level}.{fmt}"
        if fmt == "parquet":
            import pyarrow.parquet as pq

            table = svc.results_arrow(judge, run_id, level=level)
            pq.write_table(table, path)
            summary.files[path] = table.num_rows
        else:
            frame = svc.results(judge, run_id, level=level)
            frame.to_json(path, orient="records", lines=True, date_format="iso", force_ascii=False)
            summary.files[path] = len(frame)
    return summary


def _write_parquet(svc: MantaService, trace_filter: Any, path: Path, *, spans: bool) -> int:
    """Stream rows into ``path`` batch by batch (bounded memory); no file when nothing matched."""
    import pyarrow.parquet as pq

    rows = 0
    writer = None
    reader = svc.store.sibling()  # its own connection: the service stays usable meanwhile
    try:
        with arrow_batches(reader, trace_filter, spans=spans) as stream:
            for batch in stream:
                if writer is None:
                    writer = pq.ParquetWriter(path, batch.schema)
                writer.write_batch(batch)
                rows += batch.num_rows
    finally:
        if writer is not None:
            writer.close()
        reader.close()
    return rows


def _write_jsonl(
    svc: MantaService, run_id: Any, path: Path, spans: bool, filters: dict[str, Any]
) -> int:
    rows = 0
    with path.open("w", encoding="utf-8") as handle:
        for batch in svc.iter_trace_batches(run_id, with_spans=spans, **filters):
            for trace in batch:
                record = trace.trace.model_dump(mode="json")
                if spans:
                    record["spans"] = [
                        _span_json(span.model_dump(mode="json")) for span in trace.spans()
                    ]
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
                rows += 1
    return rows


def _span_json(span: dict[str, Any]) -> dict[str, Any]:
    span.pop("trace_id", None)
    span.pop("run_id", None)
    return span
