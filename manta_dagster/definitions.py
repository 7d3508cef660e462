"""The single entry point ``workspace.yaml`` and ``dagster -m manta_dagster.definitions`` load.

Which pipelines: ``MANTA_PIPELINES`` is a comma-separated list of ``module:attribute`` entries
(the attribute defaults to ``pipeline`` and may hold one PipelineDefinition or a list of
them); the word ``examples`` stands for the three example pipelines, which are the default
when the variable is unset. ``MANTA_PIPELINES="examples,my_team.judges:pipelines"`` adds a
team's pipelines to the examples without editing Manta; :func:`build_definitions` does the same
from Python.

Nothing here opens ClickHouse: definitions are built from the environment only.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from collections.abc import Iterable
from pathlib import Path

import dagster as dg

from manta_dagster.assets import (
    DEFAULT_ERROR_RATE_THRESHOLD,
    IO_MANAGER_KEY,
    PipelineAssets,
    build_pipeline_assets,
)
from manta_dagster.automation import DEFAULT_BACKFILL_CRON, automation_sensor
from manta_dagster.io_manager import EntityMetadataIOManager
from manta_dagster.partitions import DEFAULT_SHARD_COUNT
from manta_dagster.resources import ClickHouseResource, KestrelResource
from manta_dagster.results_sync import build_results_sync_sensor
from manta_dagster.sensors import build_run_discovery_sensor
from manta_dagster.wall_time import WALL_TIME_RESOURCES, wall_time_percentiles
from manta_lib import ConfigError, PipelineDefinitionError
from manta_lib.pipeline import PipelineDefinition

log = logging.getLogger(__name__)

PIPELINES_ENV = "MANTA_PIPELINES"
EXAMPLE_MODULES = ("examples.tool_errors", "examples.pass_at_k", "examples.run_summary")
_REPO_ROOT = Path(__file__).resolve().parents[1]


def _import(module_name: str) -> object:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        # `examples/` sits at the root of a checkout, which is not always on sys.path (e.g. a
        # code server started from another directory).
        if exc.name != module_name.split(".")[0] or not (_REPO_ROOT / "examples").is_dir():
            raise
        sys.path.insert(0, str(_REPO_ROOT))
        return importlib.import_module(module_name)


def _pipelines_of(value: object, entry: str) -> list[PipelineDefinition]:
    items = list(value) if isinstance(value, list | tuple) else [value]
    bad = [item for item in items if not isinstance(item, PipelineDefinition)]
    if bad:
        raise PipelineDefinitionError(
            f"{PIPELINES_ENV} entry {entry!r} is a {type(bad[0]).__name__}, not a "
            f"MapReduceComputation (or a list of them)"
        )
    return items  # type: ignore[return-value]


def load_pipelines(spec: str | None = None) -> list[PipelineDefinition]:
    """The pipelines named by ``spec`` (default: ``$MANTA_PIPELINES``, else ``examples``).

    >>> [p.judge for p in load_pipelines("examples")]
    ['tool_errors', 'pass_at_k', 'run_summary']
    """
    spec = os.environ.get(PIPELINES_ENV, "") if spec is None else spec
    entries = [e.strip() for e in (spec or "examples").split(",") if e.strip()]
    pipelines: list[PipelineDefinition] = []
    for entry in entries:
        if entry == "examples":
            pipelines += [_import(m).pipeline for m in EXAMPLE_MODULES]  # type: ignore[attr-defined]
            continue
        module_name, _, attr = entry.partition(":")
        try:
            module = _import(module_name)
        except ImportError as exc:
            raise PipelineDefinitionError(
                f"{PIPELINES_ENV} entry {entry!r}: cannot import {module_name!r} ({exc})"
            ) from exc
        try:
            value = getattr(module, attr or "pipeline")
        except AttributeError:
            raise PipelineDefinitionError(
                f"{PIPELINES_ENV} entry {entry!r}: module {module_name!r} has no attribute "
                f"{attr or 'pipeline'!r} (use module:attribute)"
            ) from None
        pipelines += _pipelines_of(value, entry)
    return pipelines


def embedded_store() -> bool:
    """Whether the environment points at the embedded chDB store (read settings, no connect)."""
    try:
        return ClickHouseResource().embedded
    except ConfigError:
        return True


def build_definitions(
    pipelines: Iterable[PipelineDefinition] | None = None,
    *,
    shard_count: int = DEFAULT_SHARD_COUNT,
    error_rate_threshold: float = DEFAULT_ERROR_RATE_THRESHOLD,
    backfill_cron: str = DEFAULT_BACKFILL_CRON,
    clickhouse: ClickHouseResource | None = None,
    kestrel: KestrelResource | None = None,
    include_wall_time: bool = True,
    automation_in_code_server: bool = False,
    max_failures: int | float | None = None,
) -> dg.Definitions:
    """Definitions for ``pipelines`` (default: :func:`load_pipelines`).

    Embedded chDB (the default store) runs ops in-process, since one process at a time may
    open it; with ``CLICKHOUSE_URL=http(s)://…`` ops run in subprocesses.

    Example::

        from manta_dagster.definitions import build_definitions, load_pipelines
        from my_team.judges import refusal_rate

        defs = build_definitions([*load_pipelines("examples"), refusal_rate])
    """
    chosen = list(load_pipelines() if pipelines is None else pipelines)
    judges = [p.judge for p in chosen]
    duplicates = sorted({j for j in judges if judges.count(j) > 1})
    if duplicates:
        raise PipelineDefinitionError(
            f"two pipelines share the judge id(s) {', '.join(duplicates)}: give them distinct names"
        )
    built: list[PipelineAssets] = [
        build_pipeline_assets(
            p,
            shard_count=shard_count,
            error_rate_threshold=error_rate_threshold,
            backfill_cron=backfill_cron,
            max_failures=max_failures,
        )
        for p in chosen
    ]
    clickhouse = clickhouse or ClickHouseResource()
    assets: list[dg.AssetsDefinition] = [a for b in built for a in b.assets]
    if include_wall_time:
        assets.append(wall_time_percentiles)
    sensors: list[dg.SensorDefinition] = [
        automation_sensor(
            dg.AssetSelection.assets(*assets), use_user_code_server=automation_in_code_server
        )
    ]
    if built:
        sensors.append(
            build_run_discovery_sensor([b.trace_key for b in built], shard_count=shard_count)
        )
        sensors.append(
            build_results_sync_sensor([b.pipeline for b in built], shard_count=shard_count)
        )
    embedded = clickhouse.embedded if clickhouse.url else embedded_store()
    return dg.Definitions(
        assets=assets,
        sensors=sensors,
        resources={
            "clickhouse": clickhouse,
            "kestrel": kestrel or KestrelResource(),
            IO_MANAGER_KEY: EntityMetadataIOManager(clickhouse=clickhouse),
            **(WALL_TIME_RESOURCES if include_wall_time else {}),
        },
        executor=dg.in_process_executor if embedded else dg.multiprocess_executor,
    )


defs = build_definitions()
