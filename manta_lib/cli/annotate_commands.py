"""``manta annotate ...``: label tasks, queues, their progress, and labels in and out of files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from manta_lib.annotations import Annotations, AnnotationTask
from manta_lib.annotations.io import export_rows, import_labels, write_export
from manta_lib.service import MantaService

console = Console()
annotate_app = typer.Typer(
    no_args_is_help=True,
    help="Human labels: declare a task, sample a queue, see progress, import and export labels.",
)

CategoryOption = Annotated[
    str | None,
    typer.Option(
        "--category", help="A required category among these, comma-separated: passed,looping,..."
    ),
]
BoolOption = Annotated[
    list[str] | None, typer.Option("--bool", help="An optional yes/no field (repeatable).")
]
NumberOption = Annotated[
    list[str] | None, typer.Option("--number", help="An optional numeric field (repeatable).")
]
NoteOption = Annotated[bool, typer.Option("--note", help="An optional free-text note.")]
LevelOption = Annotated[
    str, typer.Option("--level", "-l", help="trace, or datapoint (a GRPO group at one step).")
]


def _declared(
    name: str,
    category: str | None,
    booleans: list[str] | None,
    numbers: list[str] | None,
    note: bool,
    level: str,
) -> AnnotationTask | None:
    if not (category or booleans or numbers or note):
        return None
    return AnnotationTask.from_options(
        name,
        categories=category.split(",") if category else None,
        booleans=booleans,
        numbers=numbers,
        note=note,
        level=level,
    )


@annotate_app.command("task")
def task_command(
    name: Annotated[str, typer.Argument(help="Task name (the judge its labels are stored as).")],
    category: CategoryOption = None,
    booleans: BoolOption = None,
    numbers: NumberOption = None,
    note: NoteOption = False,
    level: LevelOption = "trace",
) -> None:
    """Declare a label task, e.g. --category passed,looping,wrong_tool --note."""
    task = _declared(name, category, booleans, numbers, note, level)
    if task is None:
        raise typer.BadParameter("give the fields: --category a,b,c, --bool X, --number X, --note")
    with MantaService() as svc:
        version = Annotations(svc.store).register_task(task)
    fields = ", ".join(
        f"{f.name} ({'|'.join(f.choices) if f.choices else f.kind})" for f in task.fields()
    )
    console.print(f"task {name} version {version} ({task.level.value}): {fields}", highlight=False)


@annotate_app.command("create")
def create_command(
    task_name: Annotated[
        str,
        typer.Argument(
            metavar="TASK",
            help="A declared task (or declare it here with --category/--bool/--number/--note).",
        ),
    ],
    run: Annotated[str, typer.Option("--run", "-r", help="The run to sample.")],
    sample: Annotated[int, typer.Option("--sample", "-n", min=1, help="How many items.")],
    stratify: Annotated[
        str | None, typer.Option("--stratify", help="step or phase: a proportional share each.")
    ] = None,
    where: Annotated[
        str | None,
        typer.Option(
            "--where", "-w", help="Results condition, e.g. \"failure_modes.category != 'passed'\"."
        ),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Same seed, same sample.")] = 0,
    overlap: Annotated[
        float, typer.Option("--overlap", help="Share of items labelled by two annotators.")
    ] = 0.0,
    phase: Annotated[
        str | None, typer.Option("--phase", help="Only traces of this phase (train, eval).")
    ] = None,
    max_score: Annotated[
        float | None, typer.Option("--max-score", help="Only traces scored at most this.")
    ] = None,
    category: CategoryOption = None,
    booleans: BoolOption = None,
    numbers: NumberOption = None,
    note: NoteOption = False,
    level: LevelOption = "trace",
) -> None:
    """Sample a reproducible queue of a run's traces (or groups) to label."""  # fmt: skip
    declared = _declared(task_name, category, booleans, numbers, note, level)
    with MantaService() as svc:
        ann = Annotations(svc.store)
        queue = ann.create_queue(
            declared or task_name, run, sample=sample, stratify=stratify, where=where,
            seed=seed, overlap=overlap,
            traces={k: v for k, v in (("phase", phase), ("max_score", max_score)) if v is not None},
        )  # fmt: skip
    console.print(
        f"queue {queue.queue_id}: {queue.progress.total} {queue.level}(s) of {run} "
        f"({queue.progress.overlap_total} for two annotators), task {queue.task}",
        highlight=False,
    )
    typer.echo(queue.queue_id)


@annotate_app.command("status")
def status_command(
    queue_id: Annotated[str | None, typer.Argument(help="One queue (default: all).")] = None,
) -> None:
    """Progress per queue and per annotator."""
    from rich.table import Table

    with MantaService() as svc:
        ann = Annotations(svc.store)
        queues = [ann.queue(queue_id)] if queue_id else ann.queues()
    if not queues:
        console.print("no annotation queues (create one with `manta annotate create`)")
        return
    table = Table(box=None, padding=(0, 1))
    table.add_column("queue (task-id)", no_wrap=True)
    table.add_column("run", overflow="fold")
    for name in ("items", "labelled", "skipped", "2x"):
        table.add_column(name, justify="right")
    table.add_column("labels per annotator", overflow="fold")
    for q in queues:
        p = q.progress
        table.add_row(
            q.queue_id, q.run_id, f"{p.total} {q.level}s",
            f"{p.labelled} ({p.labelled / p.total:.0%})" if p.total else "0", str(p.skipped),
            f"{p.double_labelled}/{p.overlap_total}",
            ", ".join(f"{who}: {n}" for who, n in p.per_annotator.items()) or "-",
        )  # fmt: skip
    console.print(table)


@annotate_app.command("import")
def import_command(
    path: Annotated[Path, typer.Argument(help="A .csv or .jsonl file of labels.", dir_okay=False)],
    task_name: Annotated[str, typer.Option("--task", "-t", help="The task the labels answer.")],
    run: Annotated[
        str | None, typer.Option("--run", "-r", help="Run of lines without run_id.")
    ] = None,
    annotator: Annotated[
        str | None, typer.Option("--annotator", "-a", help="Annotator of lines without one.")
    ] = None,
) -> None:
    """Import labels made elsewhere (all checked first: one bad line stores nothing)."""
    with MantaService() as svc:
        summary = import_labels(
            Annotations(svc.store), task_name, path, run_id=run, annotator=annotator
        )
    for queue in summary.queues:
        console.print(
            f"{queue.progress.total} {queue.level}(s) of {queue.run_id} → queue {queue.queue_id}",
            highlight=False,
        )
    console.print(f"{summary.labels} labels imported from {escape(str(path))}", highlight=False)


@annotate_app.command("export")
def export_command(
    task_name: Annotated[
        str, typer.Argument(metavar="TASK", help="The task whose labels to export.")
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="File to write.", dir_okay=False)],
    run: Annotated[str | None, typer.Option("--run", "-r", help="Only this run.")] = None,
    fmt: Annotated[
        str | None, typer.Option("--format", "-f", help="jsonl or parquet (default: suffix).")
    ] = None,
) -> None:
    """Every annotator's current label, one row each (JSON Lines or Parquet)."""
    chosen = fmt or ("parquet" if output.suffix.lower() == ".parquet" else "jsonl")
    with MantaService() as svc:
        rows = export_rows(Annotations(svc.store), task_name, run)
    write_export(rows, output, chosen)
    console.print(f"{len(rows)} labels → {escape(str(output))}", highlight=False)


def register(app: typer.Typer) -> None:
    """Attach ``manta annotate ...`` to ``app``."""
    app.add_typer(annotate_app, name="annotate")
