"""The calibration page: an LLM judge measured against human labels (or any reference judge)
on one run — ``/calibration?judge=J&against=TASK&run=R[&level=datapoint]``.

Per categorical or boolean column: accuracy and Cohen's kappa with bootstrap intervals, the
confusion matrix, precision and recall per category (TPR/TNR for a boolean), the same per
step and per phase, the agreement of two annotators on the overlapped items, and the
disagreeing items linked to their trace (or group) pages. The figures are the service's
(:meth:`MantaService.compare_judges`); the page only lays them out.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from manta_lib.explorer import links
from manta_lib.explorer.pages_results import cached_judges, require_judge
from manta_lib.explorer.web import choice_param, explorer, render, text_param

LEVELS = ("trace", "datapoint")
MAX_DISAGREEING = 200


def item_url(level: str, entity_id: str, run_id: str) -> str:
    """A disagreeing item's page: its trace, or its group (``datapoint@step``) page."""
    if level == "datapoint":
        datapoint, _, step = entity_id.rpartition("@")
        if datapoint and step.lstrip("-").isdigit():
            return links.group_url(run_id, datapoint, int(step), base="")
    return links.entity_url(level, entity_id, run_id, base="")


def calibration_page(request: Request) -> Response:
    judge = text_param(request, "judge")
    against = text_param(request, "against")
    run_id = text_param(request, "run")
    level = choice_param(request, "level", LEVELS, "trace")
    state = explorer(request)
    context: dict[str, Any] = {
        "judge": judge,
        "against": against,
        "run_id": run_id,
        "level": level,
        "report": None,
        "max_disagreeing": MAX_DISAGREEING,
        "item_url": item_url,
    }
    with state.service() as svc:
        context["all_runs"] = state.cached(svc, ("run_ids",), svc.run_ids)
        context["judges"] = sorted({j.judge for j in cached_judges(state, svc, run_id)})
        if judge and against and run_id:
            svc.require_run(run_id)
            require_judge(state, svc, judge, run_id)
            require_judge(state, svc, against, run_id)
            context["report"] = svc.compare_judges(judge, against, run_id, level=level).calibration
    return render(request, "calibration.html", context)
