"""Compare pages, from the results API's compare functions.

- two runs under one judge: ``/compare/JUDGE?run=A&run=B&level=datapoint``
- two versions of a judge on one run: ``/compare/JUDGE?run=R&version=V1&version=V2``
- a judge column against the traces' own grader: ``/compare/JUDGE?run=R&against=grader&column=C``

Without enough parameters the page shows the forms that build these URLs.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from manta_lib.explorer import links
from manta_lib.explorer.pages_results import LEVELS, RESULT_TABLES, _plain, require_judge
from manta_lib.explorer.web import (
    BadRequest,
    choice_param,
    explorer,
    list_param,
    render,
    text_param,
)
from manta_lib.store import Store
from manta_lib.store.judge_versions import version_records

MAX_ROWS = 100
MAX_IDS = 200


@dataclass(frozen=True)
class EntityLink:
    label: str
    url: str


def entity_link(level: str, entity_id: str, run_id: str) -> EntityLink:
    """Where a compared entity's traces are: ``dp@step`` ids name a datapoint at one step."""
    return EntityLink(entity_id, links.entity_url(level, entity_id, run_id, base=""))


def compare_page(request: Request) -> Response:
    judge = request.path_params["judge"]
    runs = list_param(request, "run")
    versions = list_param(request, "version")
    against = text_param(request, "against")
    state = explorer(request)
    context: dict[str, Any] = {"judge_name": judge, "runs": runs, "versions": versions}
    with state.service() as svc:
        if not runs:
            raise BadRequest(
                "Missing run",
                "A comparison needs ?run=A&run=B (two runs), or ?run=R&version=V1&version=V2, "
                "or ?run=R&against=grader&column=C.",
                [("/", "runs")],
            )
        info = require_judge(state, svc, judge, runs[0])
        context["judge"] = info
        context["all_runs"] = state.cached(svc, ("run_ids",), svc.run_ids)
        if against is not None:
            if against != "grader":
                raise BadRequest("Invalid parameter", f"against={against!r}: only 'grader'.")
            column = text_param(request, "column")
            if column is None:
                raise BadRequest("Missing column", "Add &column=C (a trace-level column).")
            agreement = state.cached(
                svc,
                ("grader", judge, runs[0], column),
                lambda: svc.compare_with_grader(judge, runs[0], column),
                tables=RESULT_TABLES,
                large=True,
            )
            context.update(mode="agreement", agreement=agreement, run_id=runs[0])
        elif len(versions) == 2:
            level = choice_param(request, "level", LEVELS, "trace")
            agreement = state.cached(
                svc,
                ("versions", judge, runs[0], *versions, level),
                lambda: svc.compare_versions(judge, runs[0], versions[0], versions[1], level=level),
                tables=RESULT_TABLES,
                large=True,
            )
            context.update(mode="agreement", agreement=agreement, run_id=runs[0])
            context["source_diff"] = source_diff(svc.store, judge, versions[0], versions[1])
        elif len(runs) == 2:
            level = choice_param(request, "level", LEVELS, "datapoint")
            comparison = state.cached(
                svc,
                ("runs", judge, *runs, level),
                lambda: svc.compare_runs(judge, runs[0], runs[1], level=level),
                tables=RESULT_TABLES,
                large=True,
            )
            context.update(mode="runs", comparison=comparison, **_run_rows(comparison))
        else:
            context.update(mode="choose")
    if context["mode"] == "agreement":
        agreement = context["agreement"]
        context["disagreeing"] = {
            c.column: [
                entity_link(agreement.level, str(i), context["run_id"])
                for i in c.disagreeing[:MAX_IDS]
            ]
            for c in agreement.columns
        }
    context["max_ids"] = MAX_IDS
    context["levels"] = LEVELS
    return render(request, "compare.html", context)


@dataclass(frozen=True)
class SourceDiff:
    """The unified diff of two versions' recorded sources (A then B), or which has none."""

    lines: list[tuple[str, str]]  # (css class, line)
    unrecorded: list[str]  # versions computed before their source was kept


def source_diff(store: Store, judge: str, version_a: str, version_b: str) -> SourceDiff:
    records = version_records(store, judge, [version_a, version_b])
    unrecorded = [v for v in (version_a, version_b) if (judge, v) not in records]
    if unrecorded:
        return SourceDiff([], unrecorded)
    diff = difflib.unified_diff(
        records[(judge, version_a)][1].splitlines(),
        records[(judge, version_b)][1].splitlines(),
        fromfile=f"A {version_a}",
        tofile=f"B {version_b}",
        lineterm="",
        n=3,
    )
    kinds = {"+": "diff-add", "-": "diff-del", "@": "diff-hunk"}
    return SourceDiff([(kinds.get(line[:1], ""), line) for line in diff], [])


def _run_rows(comparison: Any) -> dict[str, Any]:
    """The joined entities, largest absolute change of the first numeric column first."""
    joined = comparison.joined
    keys = list(comparison.keys)
    deltas = [c for c in joined.columns if c.endswith("_delta")]
    if deltas and not joined.empty:
        order = joined[deltas[0]].abs().sort_values(ascending=False, na_position="last").index
        joined = joined.loc[order]
    columns = [c for c in joined.columns if c not in keys]
    rows = []
    for record in joined.head(MAX_ROWS).to_dict("records"):
        key_values = [_plain(record[k]) for k in keys]
        filters = _entity_filters(comparison.level, dict(zip(keys, key_values, strict=True)))
        rows.append(
            {
                "keys": key_values,
                "values": [_plain(record[c]) for c in columns],
                "link_a": links.traces_url(comparison.run_a, base="", **filters),
                "link_b": links.traces_url(comparison.run_b, base="", **filters),
            }
        )
    return {"row_keys": keys, "row_columns": columns, "rows": rows, "shown": len(rows)}


def _entity_filters(level: str, keys: dict[str, Any]) -> dict[str, Any]:
    filters: dict[str, Any] = {}
    if "datapoint_id" in keys:
        filters["datapoint"] = keys["datapoint_id"]
    if "step_number" in keys:
        filters.update(step_min=keys["step_number"], step_max=keys["step_number"])
    if keys.get("phase"):
        filters["phase"] = keys["phase"]
    return filters
