"""Manta's own JSON Lines trace format (``docs/import_format.md``), with hierarchy overrides.

Lines pass to the loader as they are; ``--run-id``, ``--phase``, ``--step``, ``--datapoint``,
``--score`` and ``--project`` replace the trace keys of every line (and the ``run_id`` of its
embedded spans) when given.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from manta_lib.importers.base import (
    Hierarchy,
    Problems,
    first_json_line,
    json_line_records,
    plain,
    score_number,
)
from manta_lib.ingest.loader import SourceRecord


class NativeImporter:
    """``--format manta``: one trace object per line, spans embedded."""

    name = "manta"

    def sniff(self, path: Path) -> bool:
        first = first_json_line(path)
        return isinstance(first, dict) and "trace_id" in first and "messages" not in first

    def read_file(self, path: Path, hierarchy: Hierarchy) -> Iterator[SourceRecord]:
        return json_line_records(path, lambda obj, _raw: override(obj, hierarchy))

    def map_record(self, record: Any, hierarchy: Hierarchy) -> list[dict[str, Any]]:
        """A trace dict or object with ``spans``; spans may be ``SpanRecord`` objects, whose
        empty ``trace_id``/``run_id`` defaults mean "the trace's"."""
        obj = plain(record)
        if isinstance(obj, dict) and isinstance(obj.get("spans"), list):
            obj["spans"] = [_without_empty_ids(span) for span in obj["spans"]]
        return [override(obj, hierarchy)]


def _without_empty_ids(span: Any) -> Any:
    if not isinstance(span, dict):
        return span
    return {k: v for k, v in span.items() if not (k in ("trace_id", "run_id") and v == "")}


def override(obj: Any, hierarchy: Hierarchy) -> Any:
    """The trace object with the hierarchy options applied (unchanged when none is set)."""
    if not isinstance(obj, dict) or hierarchy == Hierarchy():
        return obj
    problems: list[tuple[str, str]] = []
    out = dict(obj)
    if hierarchy.run_id:
        out["run_id"] = hierarchy.run_id
        if isinstance(out.get("spans"), list):
            out["spans"] = [
                {**span, "run_id": hierarchy.run_id} if isinstance(span, dict) else span
                for span in out["spans"]
            ]
    if hierarchy.phase:
        out["phase"] = hierarchy.phase
    if hierarchy.project:
        out["project_id"] = hierarchy.project
    try:
        out["step_number"] = hierarchy.step_value(obj, out.get("step_number"))
        out["datapoint_id"] = hierarchy.path_value(obj, "datapoint", out.get("datapoint_id"))
        if hierarchy.score:
            out["score"] = score_number(hierarchy.path_value(obj, "score", None), hierarchy.score)
    except Problems as exc:
        problems.extend(exc.problems)
    if problems:
        raise Problems(problems)
    if out.get("datapoint_id") is not None:
        out["datapoint_id"] = str(out["datapoint_id"])
    return out
