"""Asset checks of a level, evaluated in the level's op against what ``entity_metadata`` holds.

- ``complete`` (trace level): every trace of the partition(s), as ClickHouse lists them after
  the map, has an output or a recorded error for the judge version among what the map
  returned (all of it stored). It fails when traces arrived during the materialization.
- ``error_rate``: the share of failed entities is at most the pipeline's threshold. It is
  *blocking*: when it fails, the levels above are not materialized in the same run, and the
  automation does not request them.
- ``schema``: the values read back from ``entity_metadata`` validate against the level's
  output schema (an output mutated after validation, or built with ``model_construct``, is
  stored as it is and caught here).

The checks are partitioned like their asset, so each evaluation names its partition. An op
over one partition yields one result per check (Dagster attaches the partition); an op over a
range (a single-run backfill) yields one result per check for the whole op (it decides the
op's outcome) plus one evaluation per check and partition, computed on that partition's
entities only (see :class:`~manta_dagster.split.PartitionSplit`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import dagster as dg
import pydantic

from manta_dagster.split import PartitionSplit
from manta_lib import EntityLevel, MetadataOutput
from manta_lib.pipeline import PipelineDefinition, Scope, plan_scope
from manta_lib.store import Store, load_entities

CHECK_COMPLETE = "complete"
CHECK_ERROR_RATE = "error_rate"
CHECK_SCHEMA = "schema"
SHOWN_IDS = 10
ID_CHUNK = 10_000

EntityKey = tuple[str, str]  # (run_id, entity_id)


def check_specs(
    key: dg.AssetKey,
    level: EntityLevel,
    error_rate_threshold: float,
    partitions_def: dg.PartitionsDefinition | None = None,
) -> list[dg.AssetCheckSpec]:
    """The checks of one level asset (``complete`` on the trace level only), partitioned like
    the asset; ``error_rate`` blocks the levels above."""
    specs = []
    if level is EntityLevel.TRACE:
        specs.append(
            dg.AssetCheckSpec(
                CHECK_COMPLETE,
                asset=key,
                description="Every trace of the partition has an output or a recorded error.",
                partitions_def=partitions_def,
            )
        )
    specs += [
        dg.AssetCheckSpec(
            CHECK_ERROR_RATE,
            asset=key,
            description=f"At most {error_rate_threshold:.0%} of the entities failed (blocking: "
            "a failing partition does not feed the level above).",
            blocking=True,
            partitions_def=partitions_def,
        ),
        dg.AssetCheckSpec(
            CHECK_SCHEMA,
            asset=key,
            description="Stored values validate against the level's output schema.",
            partitions_def=partitions_def,
        ),
    ]
    return specs


def _ids_md(ids: Sequence[str]) -> str:
    shown = ", ".join(f"`{i}`" for i in ids[:SHOWN_IDS])
    return shown + (f" … and {len(ids) - SHOWN_IDS:,} more" if len(ids) > SHOWN_IDS else "")


@dataclass
class CompleteTally:
    """The traces the partitions hold after the map (``scopes``, planned again), and those
    without an outcome."""

    scopes: list[Scope] = field(default_factory=list)
    traces: list[EntityKey] = field(default_factory=list)
    missing: list[EntityKey] = field(default_factory=list)


def tally_complete(
    store: Store, scopes: Sequence[Scope], outputs: Sequence[MetadataOutput]
) -> CompleteTally:
    """Plan each scope again (after the map) and compare with ``outputs``."""
    have = {(o.run_id, o.entity_id) for o in outputs}
    tally = CompleteTally()
    for scope in scopes:
        now = plan_scope(store, scope.run_id, shards=scope.shards, shard_count=scope.shard_count)
        tally.scopes.append(now)
        for tid in now.trace_ids:
            tally.traces.append((scope.run_id, tid))
            if (scope.run_id, tid) not in have:
                tally.missing.append((scope.run_id, tid))
    return tally


def complete_result(key: dg.AssetKey, total: int, missing: Sequence[str]) -> dg.AssetCheckResult:
    """``complete`` for ``total`` traces of which ``missing`` have no outcome."""
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


def check_complete(
    store: Store,
    key: dg.AssetKey,
    *,
    scopes: Sequence[Scope],
    outputs: Sequence[MetadataOutput],
) -> dg.AssetCheckResult:
    """``complete``: each trace the partitions hold now (planned again, after the map) has an
    outcome among ``outputs`` (what the map computed or found stored)."""
    tally = tally_complete(store, scopes, outputs)
    return complete_result(key, len(tally.traces), [tid for _, tid in tally.missing])


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
        description=None
        if rate <= threshold
        else f"{errors:,} of {len(outputs):,} entities failed ({rate:.1%} > {threshold:.0%}): "
        "the level above is not fed from this partition; see first_failures in the "
        "materialization",
    )


@dataclass
class SchemaTally:
    """The stored entities validated, and the invalid ones with their first message."""

    checked: list[EntityKey] = field(default_factory=list)
    invalid: dict[EntityKey, str] = field(default_factory=dict)


def tally_schema(
    store: Store,
    pipeline: PipelineDefinition,
    level: EntityLevel,
    outputs: Sequence[MetadataOutput],
) -> SchemaTally:
    """Read back the successful entities of ``outputs`` (the pipeline's ``level``) and
    validate them against the level's schema."""
    schema = pipeline.level(level).schema
    wanted: dict[str, set[str]] = {}
    for outcome in outputs:
        if outcome.error is None:
            wanted.setdefault(outcome.run_id, set()).add(outcome.entity_id)
    tally = SchemaTally()
    for run_id, ids in wanted.items():
        ordered = sorted(ids)
        for start in range(0, len(ordered), ID_CHUNK):
            chunk = ordered[start : start + ID_CHUNK]
            for entity in load_entities(store, pipeline.result_key(run_id, level), chunk):
                if entity.entity_id not in ids or not entity.ok:
                    continue
                tally.checked.append((run_id, entity.entity_id))
                try:
                    schema.model_validate(entity.values)
                except pydantic.ValidationError as exc:
                    first = exc.errors()[0]
                    where = ".".join(str(p) for p in first["loc"])
                    tally.invalid[(run_id, entity.entity_id)] = f"{where}: {first['msg']}"
    return tally


def schema_result(
    key: dg.AssetKey, schema_name: str, checked: int, invalid: Sequence[tuple[str, str]]
) -> dg.AssetCheckResult:
    """``schema`` for ``checked`` entities of which ``invalid`` (id, message) do not validate."""
    metadata: dict[str, dg.RawMetadataValue] = {"checked": checked, "invalid": len(invalid)}
    if invalid:
        metadata["first_invalid"] = dg.MetadataValue.md(
            "\n".join(f"- `{eid}`: {message}" for eid, message in sorted(invalid)[:SHOWN_IDS])
        )
    return dg.AssetCheckResult(
        asset_key=key,
        check_name=CHECK_SCHEMA,
        passed=not invalid,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata=metadata,
        description=None
        if not invalid
        else f"{len(invalid):,} stored entities do not validate against {schema_name}",
    )


def as_partition_evaluation(
    result: dg.AssetCheckResult, partition: str, *, blocking: bool
) -> dg.AssetCheckEvaluation:
    """``result`` as the evaluation of one partition of its (partitioned) check."""
    assert result.asset_key is not None and result.check_name is not None
    return dg.AssetCheckEvaluation(
        asset_key=result.asset_key,
        check_name=result.check_name,
        passed=result.passed,
        metadata=result.metadata,
        severity=result.severity,
        description=result.description,
        blocking=blocking,
        partition=partition,
    )


@dataclass(frozen=True)
class OpChecks:
    """Everything the checks of an op need, computed once for the whole op."""

    key: dg.AssetKey
    threshold: float
    schema_name: str
    outputs: Sequence[MetadataOutput]
    schema: SchemaTally
    complete: CompleteTally | None = None

    def results(self) -> list[dg.AssetCheckResult]:
        """One result per check for the whole op."""
        results = []
        if self.complete is not None:
            results.append(
                complete_result(
                    self.key,
                    len(self.complete.traces),
                    [tid for _, tid in self.complete.missing],
                )
            )
        invalid = [(eid, message) for (_, eid), message in self.schema.invalid.items()]
        results += [
            check_error_rate(self.key, self.outputs, self.threshold),
            schema_result(self.key, self.schema_name, len(self.schema.checked), invalid),
        ]
        return results

    def per_partition(self, split: PartitionSplit) -> list[dg.AssetCheckEvaluation]:
        """One evaluation per check and partition of an op over a range (none for one partition)."""
        if not split.is_range:
            return []

        def counts(items: Sequence[EntityKey]) -> dict[str, list[str]]:
            found: dict[str, list[str]] = {key: [] for key in split.keys}
            for run_id, entity_id in items:
                for partition in split.partitions_of(run_id, entity_id):
                    found[partition].append(entity_id)
            return found

        checked = Counter(p for item in self.schema.checked for p in split.partitions_of(*item))
        invalid: dict[str, list[tuple[str, str]]] = {key: [] for key in split.keys}
        for (run_id, entity_id), message in self.schema.invalid.items():
            for partition in split.partitions_of(run_id, entity_id):
                invalid[partition].append((entity_id, message))
        traces = counts(self.complete.traces) if self.complete else {}
        missing = counts(self.complete.missing) if self.complete else {}
        evaluations = []
        for partition, outputs in split.group(self.outputs).items():
            if self.complete is not None:
                evaluations.append(
                    as_partition_evaluation(
                        complete_result(self.key, len(traces[partition]), missing[partition]),
                        partition,
                        blocking=False,
                    )
                )
            evaluations.append(
                as_partition_evaluation(
                    check_error_rate(self.key, outputs, self.threshold), partition, blocking=True
                )
            )
            evaluations.append(
                as_partition_evaluation(
                    schema_result(
                        self.key, self.schema_name, checked[partition], invalid[partition]
                    ),
                    partition,
                    blocking=False,
                )
            )
        return evaluations
