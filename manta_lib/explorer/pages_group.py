"""The group page: one datapoint's rollouts at one step side by side, a diff of any two, and
the same datapoint's group at another step next to it.

Reads are batched: one query for the datapoint's steps, one for a group's traces, one for
their spans (and the same two again for a second step).
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from manta_lib.annotations import Annotations
from manta_lib.context import TraceContext
from manta_lib.explorer import links
from manta_lib.explorer.group_view import build_group_view, diff_rollouts
from manta_lib.explorer.web import BadRequest, NotFound, explorer, int_param, render, text_param
from manta_lib.service import MantaService
from manta_lib.store.explorer_queries import datapoint_steps


def _group(svc: MantaService, run_id: str, datapoint_id: str, step: int) -> list[TraceContext]:
    traces = svc.get_traces(run_id, datapoint_id=datapoint_id, step=step, order_by="trace_id")
    return svc.load_contexts(traces)


def group_page(request: Request) -> Response:
    run_id = text_param(request, "run")
    datapoint_id = text_param(request, "datapoint")
    if run_id is None or datapoint_id is None:
        raise BadRequest(
            "Missing group",
            "A group is one datapoint of one run: add ?run=RUN_ID&datapoint=DATAPOINT_ID "
            "(and &step=N; the datapoint's last step otherwise).",
            [("/", "runs")],
        )
    values = group_page_values(request, run_id, datapoint_id, int_param(request, "step"))
    return render(request, "group.html", values)


def group_page_values(
    request: Request, run_id: str, datapoint_id: str, step: int | None
) -> dict[str, Any]:
    """What ``group.html`` renders for one datapoint's group (the group page, or an item to
    label); ``step`` None: the datapoint's last step."""
    other = int_param(request, "vs")
    with explorer(request).service() as svc:
        svc.require_run(run_id)
        steps = datapoint_steps(svc.store, run_id, datapoint_id)
        if not steps:
            raise NotFound(
                "Datapoint not found",
                f"Run {run_id!r} has no rollout of datapoint {datapoint_id!r}.",
                [(links.traces_url(run_id, base=""), f"traces of {run_id}")],
            )
        known = [s.step_number for s in steps]
        if step is None:
            step = known[-1]
        for wanted in (step, other):
            if wanted is not None and wanted not in known:
                raise NotFound(
                    "No group at this step",
                    f"Datapoint {datapoint_id!r} of run {run_id!r} has no rollout at step "
                    f"{wanted}; its steps are {', '.join(map(str, known))}.",
                    [
                        (links.group_url(run_id, datapoint_id, s, base=""), f"step {s}")
                        for s in known
                    ],
                )
        contexts = _group(svc, run_id, datapoint_id, step)
        labels = Annotations(svc.store).labels_for(run_id, f"{datapoint_id}@{step}")
        other_contexts = (
            _group(svc, run_id, datapoint_id, other) if other is not None and other != step else []
        )
    view = build_group_view(run_id, datapoint_id, step, contexts)
    other_view = (
        build_group_view(run_id, datapoint_id, other, other_contexts)
        if other is not None and other_contexts
        else None
    )
    by_id = {c.trace_id: c for c in [*contexts, *other_contexts]}
    a, b = text_param(request, "a"), text_param(request, "b")
    diff = None
    if a is not None and b is not None:
        for chosen in (a, b):
            if chosen not in by_id:
                raise BadRequest(
                    "Not in this group",
                    f"Trace {chosen!r} is not a rollout of datapoint {datapoint_id!r} at step "
                    f"{step}" + (f" or {other}" if other is not None else "") + ".",
                    [(links.group_url(run_id, datapoint_id, step, base=""), "the group")],
                )
        diff = diff_rollouts(by_id[a], by_id[b])
    return {
        "view": view,
        "other": other_view,
        "steps": steps,
        "diff": diff,
        "choices": [*view.rollouts, *(other_view.rollouts if other_view else [])],
        "a": a or (view.rollouts[0].trace_id if view.rollouts else ""),
        "b": b or (view.rollouts[1].trace_id if len(view.rollouts) > 1 else ""),
        "labels": labels,
    }
