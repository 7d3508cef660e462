"""Label, then judge: people label a sample of failed rollouts, the failure-mode LLM judge is
tried on exactly those rollouts, and its agreement with the people is printed per step, before
it is run on every rollout.

1. Sample a queue: 30 failed rollouts (scored below 0.5) of a run, stratified by step, 20%
   of them for two annotators (inter-annotator agreement)::

       python -m examples.label_then_judge queue [RUN_ID]

2. Label them in the explorer (``manta explore --annotate``), or import labels made
   elsewhere (``manta annotate import labels.csv --task failure_modes_human``).

3. Try the judge on the labelled rollouts only (nothing is stored) and print its agreement
   with the labels, overall and per step, with bootstrap intervals::

       OPENAI_API_KEY=sk-... python -m examples.label_then_judge report [RUN_ID]

If the agreement is good enough, run ``examples.failure_modes`` on the whole run.
"""

from __future__ import annotations

import sys
from typing import Literal

from pydantic import BaseModel, Field
from rich.console import Console
from rich.table import Table

from manta import EntityLevel, MantaService
from manta_lib.annotations import Annotations, AnnotationTask, QueueSummary
from manta_lib.results.calibration import Calibration, calibrate

TASK_NAME = "failure_modes_human"
FAILED = {"max_score": 0.49}  # what "failed" means here: the grader scored it below 0.5


class FailureLabel(BaseModel):
    """What a person answers about one rollout (the judge's categories, so they compare)."""

    category: Literal[
        "passed", "tool_misuse", "reasoning_error", "wrong_final_answer", "gave_up", "looping",
        "other",
    ]  # fmt: skip
    note: str = Field("", description="why, in a few words (optional)")


TASK = AnnotationTask(TASK_NAME, FailureLabel, level=EntityLevel.TRACE)


def create_queue(
    svc: MantaService, run_id: str, *, sample: int = 30, seed: int = 7
) -> QueueSummary:
    """The queue of failed rollouts to label (the same arguments give the same queue)."""
    return Annotations(svc).create_queue(
        TASK, run_id, sample=sample, stratify="step", traces=FAILED, seed=seed, overlap=0.2
    )


def judge_labelled(svc: MantaService, run_id: str) -> Calibration:
    """Run the failure-mode judge on the labelled rollouts only (a trial: nothing stored) and
    measure it against the labels."""
    import pandas as pd

    from examples.failure_modes import pipeline

    outputs = pipeline.run(
        run_id=run_id, mode="local", results=f"{TASK_NAME}.status == 'ok'", progress=False
    )[EntityLevel.TRACE]
    judged = pd.DataFrame(
        {
            "run_id": run_id,
            "trace_id": o.entity_id,
            "step_number": o.step_number,
            "phase": o.phase,
            "status": "ok" if o.output is not None else "error",
            "category": getattr(o.output, "category", None),
        }
        for o in outputs
    )
    labels = svc.results(TASK_NAME, run_id)
    people = Annotations(svc).annotator_labels(TASK_NAME, run_id)
    return calibrate(
        judged,
        labels,
        judge="failure_modes",
        reference=TASK_NAME,
        run_id=run_id,
        columns=[("category", "category")],
        annotator_labels=[(x.entity_id, x.annotator, x.values) for x in people],
    )


def print_report(report: Calibration, console: Console) -> None:
    """Agreement overall and per step, and the items to look at."""
    [column] = report.columns
    console.print(
        f"[bold]{report.judge}[/] against [bold]{report.reference}[/] on {column.n} labelled "
        f"rollouts of {report.run_id}: accuracy {_fmt(column.accuracy)}, "
        f"Cohen's kappa {_fmt(column.kappa)}"
    )
    table = Table(title="agreement per step", box=None, padding=(0, 1))
    for name in ("phase", "step", "labelled", "accuracy", "kappa", "disagree"):
        table.add_column(name, justify="left" if name == "phase" else "right")
    for part in column.by_step:
        table.add_row(
            part.phase, str(part.step_number), str(part.n), _fmt(part.accuracy),
            _fmt(part.kappa), str(part.disagreeing),
        )  # fmt: skip
    console.print(table)
    for agreement in report.inter_annotator:
        console.print(
            f"two annotators agree on {_fmt(agreement.accuracy)} of {agreement.n} items "
            f"(kappa {_fmt(agreement.kappa)})"
        )
    for item in column.disagreeing[:10]:
        console.print(
            f"  {item.entity_id} (step {item.step_number}): people said "
            f"{item.reference_value}, the judge {item.judge_value}",
            highlight=False,
        )


def _fmt(estimate: object) -> str:
    value, low, high = (getattr(estimate, k) for k in ("value", "low", "high"))
    if value is None:
        return "-"
    return f"{value:.2f}" + ("" if low is None else f" [{low:.2f}, {high:.2f}]")


def main(argv: list[str]) -> None:
    console = Console()
    if not argv or argv[0] not in ("queue", "report"):
        raise SystemExit("usage: python -m examples.label_then_judge queue|report [RUN_ID]")
    with MantaService() as svc:
        run_id = argv[1] if len(argv) > 1 else max(
            svc.list_runs(), key=lambda r: (r.trace_count, r.run_id)
        ).run_id  # fmt: skip
        if argv[0] == "queue":
            queue = create_queue(svc, run_id)
            console.print(
                f"queue {queue.queue_id}: {queue.progress.total} failed rollouts of {run_id}; "
                f"label them with `manta explore --annotate`"
            )
            return
        print_report(judge_labelled(svc, run_id), console)


if __name__ == "__main__":
    main(sys.argv[1:])
