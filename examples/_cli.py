"""Shared ``__main__`` for the examples: run a pipeline locally and print each level."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence

from rich.console import Console
from rich.table import Table

from manta import EntityLevel, MantaService, MapReduceComputation

MAX_ROWS = 5
MAX_STEP_ROWS = 60  # the step level is a training curve: show it whole


def run_example(pipeline: MapReduceComputation, argv: Sequence[str]) -> None:
    """``python -m examples.X [RUN_ID]``: run locally (persisted) and print the results."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    console = Console()
    if argv:
        run_id = argv[0]
    else:
        with MantaService() as service:
            runs = service.list_runs()
        if not runs:
            raise SystemExit("no runs in the store: run `manta demo seed` first")
        run_id = max(runs, key=lambda r: (r.trace_count, r.run_id)).run_id
    console.print(f"[bold]{pipeline.name}[/] on [cyan]{run_id}[/] (mode=local)")
    result = pipeline.run(run_id=run_id, mode="local")
    for level, outputs in result.items():
        errors = sum(1 for o in outputs if o.error is not None)
        table = Table(title=f"{level.value}: {len(outputs)} entities, {errors} failed")
        table.add_column("entity")
        fields = list(pipeline.level(level).schema.model_fields)
        for name in fields:
            table.add_column(name)
        shown = MAX_STEP_ROWS if level is EntityLevel.STEP else MAX_ROWS
        for output in outputs[:shown]:
            if output.output is None:
                table.add_row(output.entity_id, f"[red]{output.error}")
                continue
            values = output.output.model_dump()
            table.add_row(output.entity_id, *(_fmt(values[name]) for name in fields))
        if len(outputs) > shown:
            table.caption = f"first {shown} of {len(outputs)}"
        console.print(table)


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, dict | list):
        text = json.dumps(value, separators=(",", ":"))
        return text if len(text) <= 32 else text[:31] + "…"
    return str(value)
