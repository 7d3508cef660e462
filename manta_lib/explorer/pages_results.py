"""Results tables: one judge's stored results for a run and level, sortable, filterable, paged.

The table comes from :meth:`MantaService.results` (the results API); each row links to the
traces it covers: a trace row to its page, a datapoint row to its rollouts at that step, a
datapoint-across-steps row to all of that datapoint's rollouts, a step row to its datapoint
groups (or its traces when the judge has no datapoint level), the run row to the run.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from manta_lib.explorer import links
from manta_lib.explorer.web import (
    BadRequest,
    Explorer,
    NotFound,
    choice_param,
    explorer,
    int_param,
    render,
    text_param,
    url_with,
)
from manta_lib.results import JudgeInfo
from manta_lib.service import MantaService

LEVELS = ("trace", "datapoint", "datapoint_across_steps", "step", "run")
PER_PAGE = 50
KEY_COLUMNS = ("run_id", "step_number", "phase", "datapoint_id", "trace_id")
BOOKKEEPING = ("status", "error", "judge_version", "computed_at")
RESULT_TABLES = ("traces", "entity_metadata")


@dataclass(frozen=True)
class ResultRow:
    link: str
    link_label: str
    group_link: str | None
    keys: list[Any]
    values: list[Any]
    status: str
    error: str | None
    version: str
    computed_at: Any


def cached_judges(state: Explorer, svc: MantaService, run_id: str | None) -> list[JudgeInfo]:
    return state.cached(
        svc, ("judges", run_id), lambda: svc.judges(run_id=run_id), tables=RESULT_TABLES
    )


def require_judge(state: Explorer, svc: MantaService, judge: str, run_id: str) -> JudgeInfo:
    judges = cached_judges(state, svc, run_id)
    for info in judges:
        if info.judge == judge:
            return info
    names = [j.judge for j in cached_judges(state, svc, None)]
    closest = difflib.get_close_matches(judge, names, n=5, cutoff=0.3) or names[:5]
    raise NotFound(
        "Judge not found",
        f"Judge {judge!r} has no stored results for run {run_id!r}."
        + (f" Judges with results: {', '.join(names)}." if names else " No judge has results."),
        [(links.results_url(j, run_id, base=""), j) for j in closest]
        + [(links.run_url(run_id, base=""), f"run {run_id}")],
    )


def results_page(request: Request) -> Response:
    judge = request.path_params["judge"]
    run_id = text_param(request, "run")
    if run_id is None:
        raise BadRequest(
            "Missing run", "A results table is per run: add ?run=RUN_ID.", [("/", "runs")]
        )
    level = choice_param(request, "level", LEVELS, "trace")
    version = text_param(request, "version")
    where = text_param(request, "where")
    page = int_param(request, "page", 1, minimum=1) or 1
    shard = int_param(request, "shard", minimum=0)
    step = int_param(request, "step")
    phase = choice_param(request, "phase", ("", "train", "eval", "prod"), "")
    state = explorer(request)
    with state.service() as svc:
        info = require_judge(state, svc, judge, run_id)
        frame = state.cached(
            svc,
            ("results", judge, run_id, level, version, where),
            lambda: svc.results(judge, run_id, level=level, version=version, where=where),
            tables=RESULT_TABLES,
            large=True,
        )
        if shard is not None:
            frame = _in_shard(svc, frame, run_id, level, shard)
    if step is not None and "step_number" in frame.columns:
        frame = frame[frame["step_number"] == step]
    if phase and "phase" in frame.columns:
        frame = frame[frame["phase"] == phase]
    key_columns = [c for c in KEY_COLUMNS if c in frame.columns]
    value_columns = [c for c in frame.columns if c not in key_columns and c not in BOOKKEEPING]
    sortable = key_columns + value_columns + ["status", "computed_at"]
    # Unsorted, rows keep the store's one order: step as a number, phase, datapoint, entity.
    sort = choice_param(request, "sort", sortable, "")
    descending = text_param(request, "desc") == "1"
    if sort:
        frame = frame.sort_values(sort, ascending=not descending, na_position="last", kind="stable")
    total = len(frame)
    pages = max(math.ceil(total / PER_PAGE), 1)
    shown = frame.iloc[(page - 1) * PER_PAGE : page * PER_PAGE]
    # A step row links on to the step's datapoint groups when the judge has that level.
    datapoints_by_step = "datapoint" in info.levels
    rows = [
        _row(record, level, run_id, key_columns, value_columns, judge, datapoints_by_step)
        for record in _records(shown)
    ]
    errors = int((frame["status"] == "error").sum()) if total else 0
    return render(
        request,
        "results.html",
        {
            "judge": info,
            "run_id": run_id,
            "level": level,
            "levels": [lv for lv in LEVELS if lv in info.levels] or list(LEVELS),
            "version": version,
            "versions": [v for v in info.versions if v.level == level],
            "where": where or "",
            "shard": shard,
            "step": step,
            "phase": phase,
            "key_columns": key_columns,
            "value_columns": value_columns,
            "numeric_columns": {
                c for c in value_columns if str(frame[c].dtype).lower().startswith(("int", "float"))
            },
            "rows": rows,
            "total": total,
            "errors": errors,
            "page": page,
            "pages": pages,
            "sort": sort,
            "desc": descending,
            "prev_url": url_with(request, page=page - 1) if page > 1 else None,
            "next_url": url_with(request, page=page + 1) if page < pages else None,
            "sort_url": lambda column: url_with(
                request,
                sort=column,
                desc="0" if (column == sort and descending) else "1",
                page=None,
            ),
            "dagster_asset": links.dagster_asset_url(
                judge,
                level,
                partition=links.run_partition(level, run_id),
                base=state.dagster_url,
            ),
        },
    )


def _records(frame: Any) -> list[dict[str, Any]]:
    columns = list(frame.columns)
    return [
        {column: _plain(value) for column, value in zip(columns, values, strict=True)}
        for values in frame.itertuples(index=False, name=None)
    ]


def _plain(value: Any) -> Any:
    """pandas' missing values (NA, NaT, NaN) as None; everything else as is."""
    if value is None:
        return None
    try:
        import pandas as pd

        if value is pd.NA or value is pd.NaT:
            return None
    except ImportError:  # pragma: no cover - pandas is a dependency
        pass
    if isinstance(value, float) and value != value:
        return None
    if hasattr(value, "item") and type(value).__module__ == "numpy":
        return value.item()  # numpy scalars as Python numbers
    return value


def _group_link(level: str, run_id: str, record: dict[str, Any]) -> str | None:
    """A datapoint row's rollouts side by side (at its step, or its last one across steps)."""
    if level not in ("datapoint", "datapoint_across_steps") or record.get("datapoint_id") is None:
        return None
    step = record.get("step_number") if level == "datapoint" else None
    return links.group_url(run_id, str(record["datapoint_id"]), step, base="")


def _row(
    record: dict[str, Any],
    level: str,
    run_id: str,
    key_columns: list[str],
    value_columns: list[str],
    judge: str,
    datapoints_by_step: bool,
) -> ResultRow:
    if level == "trace":
        link, label = links.trace_url(str(record["trace_id"]), base=""), "trace"
    elif level == "datapoint":
        step = record.get("step_number")
        filters: dict[str, Any] = {"datapoint": record.get("datapoint_id")}
        if step is not None:
            filters.update(step_min=step, step_max=step)
        if record.get("phase"):
            filters["phase"] = record["phase"]
        link, label = links.traces_url(run_id, base="", **filters), "rollouts"
    elif level == "datapoint_across_steps":
        link = links.traces_url(run_id, base="", datapoint=record.get("datapoint_id"))
        label = "rollouts"
    elif level == "step":
        step, phase = record.get("step_number"), record.get("phase")
        if datapoints_by_step:  # the step's datapoints, each linking on to its rollouts
            link = links.results_url(judge, run_id, "datapoint", base="") + f"&step={step}"
            if phase:
                link += f"&phase={phase}"
            label = "datapoints"
        else:
            link = links.traces_url(run_id, base="", phase=phase, step_min=step, step_max=step)
            label = "traces"
    else:
        link, label = links.run_url(run_id, base=""), "run"
    return ResultRow(
        link=link,
        link_label=label,
        group_link=_group_link(level, run_id, record),
        keys=[record.get(c) for c in key_columns],
        values=[record.get(c) for c in value_columns],
        status=str(record.get("status") or ""),
        error=record.get("error") or None,
        version=str(record.get("judge_version") or ""),
        computed_at=record.get("computed_at"),
    )


def _in_shard(svc: MantaService, frame: Any, run_id: str, level: str, shard: int) -> Any:
    """Rows of one Dagster partition (``run|shard``): entities whose traces hash into it."""
    if shard >= 64:
        raise BadRequest("Invalid parameter", f"shard={shard} must be between 0 and 63.")
    if level not in ("trace", "datapoint", "datapoint_across_steps"):
        return frame
    traces = svc.get_traces(run_id, shards=[shard])
    if level == "trace":
        return frame[frame["trace_id"].isin({t.trace_id for t in traces})]
    # Shards hash the datapoint id: all of a datapoint's steps are in the same shard.
    return frame[frame["datapoint_id"].isin({t.datapoint_id for t in traces})]
