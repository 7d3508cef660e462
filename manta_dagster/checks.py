"""Asset checks of a level, evaluated in the level's step against what ``entity_metadata`` holds.

- ``complete`` (trace level): every trace of the partition(s), as ClickHouse lists them after
  the map, has an output or a recorded error for the judge version among what the map
  returned (all of it stored). It fails when traces arrived during the materialization.
- ``error_rate``: the share of failed entities is at most the pipeline's threshold.
- ``schema``: the values read back from ``entity_metadata`` validate against the level's
  output schema (an output mutated after validation, or built with ``model_construct``, is
  stored as it is and caught here).
"""

from __future__ import annotations

from collections.abc import Sequence

import dagster as dg
import pydantic
from pydantic import BaseModel

from manta_lib import EntityLevel, MetadataOutput
from manta_lib.pipeline import Scope, plan_scope
from manta_lib.store import Store, load_entities

CHECK_COMPLETE = "complete"
CHECK_ERROR_RATE = "error_rate"
CHECK_SCHEMA = "schema"
SHOWN_IDS = 10
ID_CHUNK = 10_000


def check_specs(
    key: dg.AssetKey, level: EntityLevel, error_rate_threshold: float
) -> list[dg.AssetCheckSpec]:
    """The checks of one level asset (``complete`` on the trace level only)."""
    specs = []
    if level is EntityLevel.TRACE:
        specs.append(
            dg.AssetCheckSpec(
                CHECK_COMPLETE,
                asset=key,
                description="Every trace of the partition has an output or a recorded error.",
            )
        )
    specs += [
        dg.AssetCheckSpec(
            CHECK_ERROR_RATE,
            asset=key,
            description=f"At most {error_rate_threshold:.0%} of the entities failed.",
        ),
        dg.AssetCheckSpec(
            CHECK_SCHEMA,
            asset=key,
            description="Stored values validate against the level's output schema.",
        ),
    ]
    return specs


def _ids_md(ids: Sequence[str]) -> str:
    shown = ", ".join(f"`{i}`" for i in ids[:SHOWN_IDS])
    return shown + (f" … and {len(ids) - SHOWN_IDS:,} more" if len(ids) > SHOWN_IDS else "")


def check_complete(
    store: Store,
    key: dg.AssetKey,
    *,
    scopes: Sequence[Scope],
    outputs: Sequence[MetadataOutput],
) -> dg.AssetCheckResult:
    """``complete``: each trace the partitions hold now (planned again, after the map) has an
    outcome among ``outputs`` (what the map computed or found stored)."""
    have = {o.entity_id for o in outputs}
    missing: list[str] = []
    total = 0
    for scope in scopes:
        now = plan_scope(store, scope.run_id, shards=scope.shards, shard_count=scope.shard_count)
        total += len(now.refs)
        missing.extend(tid for tid in now.trace_ids if tid not in have)
    metadata: dict[str, dg.RawMetadataValue] = {"traces": total, "without_outcome": len(missing)}
    if missing:
        metadata["missing_trace_ids"] = dg.MetadataValue.md(_ids_md(sorted(missing)))
    return dg.AssetCheckResult(
        asset_key=key,
        check_name=CHECK_COMPLETE,
        passed=not missing,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata=metadata,
        description=None
        if not missing
        else f"{len(missing):,} of {total:,} traces have no output and no recorded error "
        f"(arrived during the materialization?): materialize the partition again",
    )


def check_error_rate(
    key: dg.AssetKey, outputs: Sequence[MetadataOutput], threshold: float
) -> dg.AssetCheckResult:
    """``error_rate``: failed entities / entities ≤ ``threshold``."""
    errors = sum(1 for o in outputs if o.error is not None)
    rate = errors / len(outputs) if outputs else 0.0
    return dg.AssetCheckResult(
        asset_key=key,
        check_name=CHECK_ERROR_RATE,
        passed=rate <= threshold,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={
            "error_rate": dg.MetadataValue.float(round(rate, 6)),
            "errors": errors,
            "entities": len(outputs),
            "threshold": dg.MetadataValue.float(threshold),
        },
    )


def check_schema(
    store: Store,
    key: dg.AssetKey,
    *,
    schema: type[BaseModel],
    level: EntityLevel,
    project_id: str,
    judge: str,
    judge_version: str,
    outputs: Sequence[MetadataOutput],
) -> dg.AssetCheckResult:
    """``schema``: the stored values of the computed entities validate against ``schema``."""
    wanted: dict[str, set[str]] = {}
    for outcome in outputs:
        if outcome.error is None:
            wanted.setdefault(outcome.run_id, set()).add(outcome.entity_id)
    invalid: list[str] = []
    messages: list[str] = []
    checked = 0
    for run_id, ids in wanted.items():
        ordered = sorted(ids)
        stored = [
            entity
            for start in range(0, len(ordered), ID_CHUNK)
            for entity in load_entities(
                store,
                project_id=project_id,
                run_id=run_id,
                judge=judge,
                level=level,
                judge_version=judge_version,
                entity_ids=ordered[start : start + ID_CHUNK],
            )
        ]
        for entity in stored:
            if entity.entity_id not in ids or not entity.ok:
                continue
            checked += 1
            try:
                schema.model_validate(entity.values)
            except pydantic.ValidationError as exc:
                invalid.append(entity.entity_id)
                if len(messages) < SHOWN_IDS:
                    first = exc.errors()[0]
                    where = ".".join(str(p) for p in first["loc"])
                    messages.append(f"- `{entity.entity_id}`: {where}: {first['msg']}")
    metadata: dict[str, dg.RawMetadataValue] = {"checked": checked, "invalid": len(invalid)}
    if messages:
        metadata["first_invalid"] = dg.MetadataValue.md("\n".join(messages))
    return dg.AssetCheckResult(
        asset_key=key,
        check_name=CHECK_SCHEMA,
        passed=not invalid,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata=metadata,
        description=None
        if not invalid
        else f"{len(invalid):,} stored entities do not validate against {schema.__name__}",
    )
