"""URLs of explorer pages (for Dagster metadata, notebooks, logs) and of Dagster asset pages.

Both bases come from the environment: ``MANTA_EXPLORER_URL`` (default
``http://127.0.0.1:8050``, where ``manta explore`` listens) and ``MANTA_DAGSTER_URL`` (default
``http://127.0.0.1:3000``, where ``dagster dev`` listens). Pass ``base=`` to override.

Example, in a Dagster asset body::

    import dagster as dg
    from manta_lib.explorer.links import results_url, trace_url

    context.add_output_metadata({
        "explorer": dg.MetadataValue.url(results_url("tool_errors", run_id, "trace",
                                                     shard=7)),
        "first_failure": dg.MetadataValue.url(trace_url(failed_trace_id)),
    })
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from urllib.parse import quote, urlencode

from manta_lib.errors import QueryError

DEFAULT_EXPLORER_URL = "http://127.0.0.1:8050"
DEFAULT_DAGSTER_URL = "http://127.0.0.1:3000"

__all__ = [
    "DEFAULT_DAGSTER_URL",
    "DEFAULT_EXPLORER_URL",
    "dagster_asset_url",
    "dagster_base_url",
    "entity_url",
    "explorer_base_url",
    "group_url",
    "results_url",
    "run_url",
    "trace_url",
    "traces_url",
]


def explorer_base_url() -> str:
    """``MANTA_EXPLORER_URL`` without a trailing slash, or the default."""
    return (os.environ.get("MANTA_EXPLORER_URL") or DEFAULT_EXPLORER_URL).rstrip("/")


def dagster_base_url() -> str:
    """``MANTA_DAGSTER_URL`` without a trailing slash, or the default."""
    return (os.environ.get("MANTA_DAGSTER_URL") or DEFAULT_DAGSTER_URL).rstrip("/")


def _join(base: str | None, path: str, query: Mapping[str, object] | None = None) -> str:
    root = (base if base is not None else explorer_base_url()).rstrip("/")
    pairs: list[tuple[str, str]] = []
    for key, value in (query or {}).items():
        values = value if isinstance(value, list | tuple) else [value]
        pairs.extend((key, str(v)) for v in values if v is not None and v != "")
    return root + path + (f"?{urlencode(pairs)}" if pairs else "")


def _segment(value: str) -> str:
    return quote(value, safe="")


def run_url(run_id: str, *, base: str | None = None) -> str:
    """The run's page: counts, steps, judges and curves."""
    return _join(base, f"/runs/{_segment(run_id)}")


def trace_url(trace_id: str, *, base: str | None = None) -> str:
    """The trace page: conversation, tool calls, grader verdict, timeline, stored results."""
    return _join(base, f"/traces/{_segment(trace_id)}")


def traces_url(
    run_id: str | None = None,
    *,
    base: str | None = None,
    **filters: object,
) -> str:
    """The trace list with filters, e.g. ``traces_url("run_a", datapoint="dp_3", status="error")``.

    Filter names are the trace list's query parameters: ``phase``, ``step_min``, ``step_max``,
    ``datapoint``, ``status``, ``model``, ``min_score``, ``max_score``, ``shard``.
    """
    return _join(base, "/traces", {"run": run_id, **filters})


def group_url(
    run_id: str,
    datapoint_id: str,
    step: int | str | None = None,
    *,
    base: str | None = None,
    **extra: object,
) -> str:
    """A datapoint's rollouts at one step side by side (its GRPO group); ``step=None`` is the
    datapoint's last step. ``extra``: ``vs`` (a second step), ``a`` / ``b`` (two trace ids
    to diff)."""
    return _join(base, "/group", {"run": run_id, "datapoint": datapoint_id, "step": step, **extra})


def results_url(
    judge: str,
    run_id: str,
    level: str = "trace",
    *,
    shard: int | str | None = None,
    version: str | None = None,
    base: str | None = None,
) -> str:
    """A judge's results table for one run and level; ``shard`` narrows it to one Dagster
    partition of the trace and datapoint levels (``"run|07"`` is shard 7)."""
    query: dict[str, object] = {"run": run_id, "level": level}
    if shard is not None:
        query["shard"] = int(shard)
    if version:
        query["version"] = version
    return _join(base, f"/results/{_segment(judge)}", query)


def entity_url(level: str, entity_id: str, run_id: str, *, base: str | None = None) -> str:
    """The page that shows one entity: a trace's page, or the traces of a datapoint or step.

    ``entity_id`` is the id stored with a result: a trace id, ``"{datapoint_id}@{step}"`` for
    a datapoint at one step (its traces at that step), a datapoint id for a datapoint across
    steps (all its traces), ``"{phase}/{step}"`` for a step (its traces of that phase), or
    ``"{phase}/{run_id}"`` for the run level.
    """
    if level == "trace":
        return trace_url(entity_id, base=base)
    if level == "datapoint":
        datapoint, _, step = entity_id.rpartition("@")
        if not datapoint or not step.lstrip("-").isdigit():
            raise QueryError(
                f"datapoint entity id {entity_id!r} is not '<datapoint_id>@<step_number>' (a "
                f"datapoint over all steps is level 'datapoint_across_steps')"
            )
        return traces_url(run_id, base=base, datapoint=datapoint, step_min=step, step_max=step)
    if level == "datapoint_across_steps":
        return traces_url(run_id, base=base, datapoint=entity_id)
    if level == "step":  # "{phase}/{step}"; an older store's bare step number has no phase
        phase, _, step = entity_id.rpartition("/")
        filters = {"phase": phase} if phase else {}
        return traces_url(run_id, base=base, step_min=step, step_max=step, **filters)
    return run_url(run_id, base=base)


def run_partition(level: str, run_id: str) -> str | None:
    """The Dagster partition of a whole run at ``level``: the run id where the level's asset
    is partitioned by run; None for the trace and datapoint levels (``run|shard`` partitions)."""
    return None if level in ("trace", "datapoint") else run_id


def dagster_asset_url(
    judge: str, level: str, *, partition: str | None = None, base: str | None = None
) -> str:
    """The Dagster UI page of a judge level's asset (asset key ``[judge, level]``)."""
    root = (base if base is not None else dagster_base_url()).rstrip("/")
    url = f"{root}/assets/{_segment(judge)}/{_segment(level)}"
    return url + (f"?{urlencode({'partition': partition})}" if partition else "")
