"""``manta llm-estimate``: project a pipeline's LLM calls, tokens, dollars and wall time."""

from __future__ import annotations

import importlib
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from manta_lib.errors import PipelineDefinitionError


def load_pipeline(spec: str) -> Any:
    """``package.module:attribute`` -> the MapReduceComputation it names."""
    from manta_lib.pipeline.computation import MapReduceComputation

    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise PipelineDefinitionError(
            f"pipeline {spec!r} must be written module:attribute, e.g. "
            f"examples.failure_modes:pipeline"
        )
    if str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))  # a team's module next to where the command runs
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise PipelineDefinitionError(f"cannot import {module_name!r}: {exc}") from None
    except SyntaxError as exc:
        where = f"{exc.filename}:{exc.lineno}" if exc.filename else module_name
        raise PipelineDefinitionError(
            f"cannot import {module_name!r}: {where}: {exc.msg}"
        ) from None
    pipeline = getattr(module, attribute, None)
    if not isinstance(pipeline, MapReduceComputation):
        raise PipelineDefinitionError(
            f"{spec!r} is {type(pipeline).__name__}, not a MapReduceComputation"
        )
    return pipeline


def llm_estimate_command(
    pipeline: Annotated[
        str,
        typer.Argument(
            help="module:attribute of the pipeline, e.g. examples.failure_modes:pipeline"
        ),
    ],
    run_id: Annotated[str, typer.Argument(help="Run whose traces form the scope.")],
    sample: Annotated[int, typer.Option("--sample", help="Traces to run the judge on.")] = 50,
    workers: Annotated[
        int | None, typer.Option("--workers", help="Threads (default: 32, like run()).")
    ] = None,
    phase: Annotated[str | None, typer.Option("--phase", help="Only this phase.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Emit JSON.")] = False,
) -> None:
    """Run the judge on a sample of a run and project calls, tokens, dollars and wall time."""
    from manta_lib.pipeline.estimate import estimate_pipeline

    filters: dict[str, Any] = {"phase": phase} if phase else {}
    result = estimate_pipeline(
        load_pipeline(pipeline), run_id, sample=sample, max_workers=workers, **filters
    )
    if as_json:
        typer.echo(json.dumps(asdict(result)))
        return
    console = Console()
    for line in result.lines():
        console.print(line, highlight=False)


def register(app: typer.Typer) -> None:
    """Attach the LLM commands to ``app``."""
    app.command("llm-estimate")(llm_estimate_command)
