"""Refuse a reduce over an incomplete lower level, naming the gap and the launch that fills it.

An aggregate over part of the data looks like a normal result (the step level "computed" from
one shard of 64), so a reduce asset first asks :func:`manta_lib.pipeline.missing_entities`
which entities of the level below its scope has no stored outcome for, and fails before any
reduce work when there are some: :class:`dagster.Failure` whose description names the missing
partitions (count and the first few) and the ``dagster asset materialize`` command(s) that
fill them. Materializing the lower levels again is cheap: already-stored traces are skipped.
"""

from __future__ import annotations

from collections.abc import Sequence

import dagster as dg

from manta_dagster.partitions import SHARDED_LEVELS, run_key_range, shard_key
from manta_lib import EntityLevel
from manta_lib.pipeline import MissingEntities, PipelineDefinition

SHOWN = 8


def fill_commands(
    pipeline: PipelineDefinition, level: EntityLevel, run_id: str, shard_count: int
) -> list[str]:
    """The launches that (re)materialize every level below ``level`` for ``run_id``: the
    sharded levels as one partition range, the run-partitioned ones by run id."""
    below = [spec.level for spec in pipeline.levels[: pipeline.levels.index(pipeline.level(level))]]
    sharded = [f"{pipeline.judge}/{lv.value}" for lv in below if lv in SHARDED_LEVELS]
    whole = [f"{pipeline.judge}/{lv.value}" for lv in below if lv not in SHARDED_LEVELS]
    commands = []
    if sharded:
        keys = run_key_range(run_id, shard_count)
        commands.append(
            f"dagster asset materialize -m manta_dagster --select {','.join(sharded)} "
            f"--partition-range '{keys.start}...{keys.end}'"
        )
    if whole:
        commands.append(
            f"dagster asset materialize -m manta_dagster --select {','.join(whole)} "
            f"--partition '{run_id}'"
        )
    return commands


def _partition_list(gap: MissingEntities, shard_count: int) -> str:
    keys = [f"{gap.run_id}|{shard_key(s, shard_count)}" for s in gap.shards]
    shown = ", ".join(keys[:SHOWN])
    more = f" … and {len(keys) - SHOWN} more" if len(keys) > SHOWN else ""
    return f"{len(keys)} of {shard_count} partitions ({shown}{more})"


def failed_below_failure(
    pipeline: PipelineDefinition,
    level: EntityLevel,
    below: EntityLevel,
    run_id: str,
    errors: Sequence[tuple[str, str | None]],
    total: int,
    threshold: float,
) -> dg.Failure:
    """The failure a reduce of ``level`` raises when more of the level below failed than the
    ``error_rate`` threshold allows: its aggregate would describe the few that survived."""
    rate = len(errors) / total
    description = (
        f"{pipeline.judge}/{level.value} of {run_id} not computed: {len(errors):,} of {total:,} "
        f"{below.value} entities of {pipeline.judge}/{below.value} failed ({rate:.0%}, above the "
        f"error_rate threshold of {threshold:.0%}); an aggregate over the rest would look normal. "
        f"Fix the failures (first: {errors[0][0]}: {errors[0][1]}) and materialize "
        f"{pipeline.judge}/{below.value} again, or raise error_rate_threshold."
    )
    return dg.Failure(
        description=description,
        metadata={
            "failed": len(errors),
            "entities": total,
            "error_rate": dg.MetadataValue.float(round(rate, 6)),
            "threshold": dg.MetadataValue.float(threshold),
            "first_failed_ids": ", ".join(entity for entity, _ in errors[:SHOWN]),
        },
        allow_retries=False,
    )


def incomplete_failure(
    pipeline: PipelineDefinition, level: EntityLevel, gap: MissingEntities, shard_count: int
) -> dg.Failure:
    """The failure a reduce of ``level`` raises when ``gap`` (its level below) is incomplete."""
    below = f"{pipeline.judge}/{gap.level.value}"
    commands = fill_commands(pipeline, level, gap.run_id, shard_count)
    description = (
        f"{pipeline.judge}/{level.value} of {gap.run_id} not computed: {len(gap.missing):,} of "
        f"{gap.expected:,} {gap.level.value} entities of {below} have no stored outcome for "
        f"judge version {pipeline.judge_version}, in {_partition_list(gap, shard_count)}; an "
        f"aggregate over the rest would be wrong. Materialize them first: "
        + " ; then ".join(commands)
        + " (stored traces are skipped)."
    )
    return dg.Failure(
        description=description,
        metadata={
            "missing": len(gap.missing),
            "expected": gap.expected,
            "missing_partitions": ", ".join(
                f"{gap.run_id}|{shard_key(s, shard_count)}" for s in gap.shards
            ),
            "first_missing_ids": ", ".join(gap.missing[:SHOWN]),
            "fill": dg.MetadataValue.md("\n".join(f"```\n{c}\n```" for c in commands)),
        },
        allow_retries=False,
    )
