"""The entity_metadata IO manager: level outputs in, the level below out.

``handle_output`` receives a :class:`LevelResult` (the outputs a level asset computed for the
partition(s) of its step) and makes sure each one is in ``entity_metadata`` under its identity
(project, run, judge, level, entity, column) for the judge version: the engine already wrote
them as it went (that is what makes a retried partition resume), so normally nothing is
missing and nothing is written twice; anything missing is written. Rewriting is harmless
anyway: the table is a ReplacingMergeTree keyed by identity.

``load_input`` loads the level below for the downstream partition(s): the shards of the run for
a datapoint level, every shard of the run for step and run levels (the upstream keys Dagster
maps onto the downstream partition, in any order).

Within one Dagster run whose steps share a process (the in-process executor of embedded mode),
the level below was usually computed a moment ago for exactly the same partitions: its outputs
are then handed over in memory (already validated, already stored) instead of being read back
from ClickHouse and validated again, which saved ~1 s per 20k traces. Any other case (another
run, another process, other partition keys or judge version, a retried step) reads
``entity_metadata``.
"""

import threading
from collections import OrderedDict, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import dagster as dg

from manta_dagster.partitions import DEFAULT_SHARD_COUNT, scopes_from_keys
from manta_dagster.resources import ClickHouseResource
from manta_lib.entities import MetadataOutput
from manta_lib.models import EntityLevel
from manta_lib.pipeline.planner import plan_scope
from manta_lib.store import Store
from manta_lib.store.metadata import MetadataWriter, StoredEntity, load_entities, load_status

IO_MANAGER_KEY = "manta_io_manager"
"""The resource key of :class:`EntityMetadataIOManager` in the definitions."""

# Keys of the asset definition metadata the IO manager reads to know what a level stores.
META_JUDGE = "manta/judge"
META_PROJECT = "manta/project_id"
META_LEVEL = "manta/level"
META_VERSION = "manta/judge_version"
META_SHARDS = "manta/shard_count"


@dataclass
class LevelResult:
    """What a level asset returns: its outputs for the partition(s) of the step."""

    project_id: str
    judge: str
    judge_version: str
    level: EntityLevel
    outputs: list[MetadataOutput] = field(default_factory=list)

    @property
    def run_ids(self) -> list[str]:
        return sorted({o.run_id for o in self.outputs})


@dataclass
class LevelInput:
    """The outputs of the level below, per run, for a downstream step: read back from
    ``entity_metadata`` (``by_run``), or handed over in memory from the step that just
    computed them in this process (``outputs_by_run``, then ``by_run`` is empty)."""

    level: EntityLevel
    by_run: dict[str, list[StoredEntity]]
    outputs_by_run: dict[str, list[MetadataOutput]] | None = None


HandoffKey = tuple[str, str, frozenset[str], str]
"""(Dagster run id, asset key, partition keys, judge version)."""


class _Handoff:
    """Level results of this process's recent steps, each taken at most once (bounded)."""

    def __init__(self, capacity: int = 4) -> None:
        self._results: OrderedDict[HandoffKey, LevelResult] = OrderedDict()
        self._capacity = capacity
        self._lock = threading.Lock()

    def put(self, key: HandoffKey, result: LevelResult) -> None:
        with self._lock:
            # Only a step of the same run may take a result (the run id is in the key), so what
            # earlier runs left untaken is dead weight in a long-lived process: drop it.
            for stale in [k for k in self._results if k[0] != key[0]]:
                del self._results[stale]
            self._results[key] = result
            while len(self._results) > self._capacity:
                self._results.popitem(last=False)

    def take(self, key: HandoffKey) -> LevelResult | None:
        with self._lock:
            return self._results.pop(key, None)


_HANDOFF = _Handoff()


def _current_run_id(context: dg.InputContext) -> str:
    """The id of the run loading the input ("" outside a step: nothing is handed over)."""
    try:
        return context.step_context.run_id
    except dg.DagsterInvariantViolationError:
        return ""


def _meta(metadata: Mapping[str, Any], key: str) -> Any:
    value = metadata[key]
    return getattr(value, "value", value)


def child_ids(level: EntityLevel, refs: Sequence[Any]) -> list[str]:
    """Entity ids of ``level`` among the traces ``refs`` (trace, datapoint or step ids)."""
    if level is EntityLevel.TRACE:
        return [ref.trace_id for ref in refs]
    if level is EntityLevel.DATAPOINT:
        return sorted({ref.datapoint_id for ref in refs})
    if level is EntityLevel.STEP:
        return sorted({str(ref.step_number) for ref in refs})
    raise ValueError(f"{level.value} is the top level: nothing is loaded from it")


def store_missing(store: Store, result: LevelResult) -> tuple[int, int]:
    """Write the outputs of ``result`` not yet stored for its judge version.

    Returns ``(entities stored now, entities this call wrote)``.
    """
    by_run: dict[str, list[MetadataOutput]] = defaultdict(list)
    for outcome in result.outputs:
        by_run[outcome.run_id].append(outcome)
    missing: list[MetadataOutput] = []
    for run_id, outputs in by_run.items():
        status = load_status(
            store,
            project_id=result.project_id,
            run_id=run_id,
            judge=result.judge,
            level=result.level,
            judge_version=result.judge_version,
        )
        missing.extend(o for o in outputs if status.get(o.entity_id) is not o.ok)
    if missing:
        writer = MetadataWriter(store, project_id=result.project_id, judge=result.judge)
        writer.add(missing)
        writer.flush()
    return len(result.outputs), len(missing)


class EntityMetadataIOManager(dg.ConfigurableIOManager):
    """Stores level outputs in ``entity_metadata`` and loads the level below for a reduce."""

    clickhouse: ClickHouseResource

    def handle_output(self, context: dg.OutputContext, obj: LevelResult | None) -> None:
        """Store what is missing of ``obj`` for the step's partition(s) (a range step holds
        several keys, unordered); report how many outcomes this call had to write."""
        if obj is None or not obj.outputs:
            return
        partitions = len(context.asset_partition_keys) if context.has_asset_partitions else 0
        with self.clickhouse.open() as store:
            stored, written = store_missing(store, obj)
        if context.has_asset_key:
            keys = context.asset_partition_keys if context.has_asset_partitions else []
            _HANDOFF.put(
                (
                    context.run_id,
                    context.asset_key.to_user_string(),
                    frozenset(keys),
                    obj.judge_version,
                ),
                obj,
            )
        context.add_output_metadata({"written_by_io_manager": written})
        context.log.debug(
            "%s/%s (%d partition(s)): %d entities in entity_metadata, %d written by the IO manager",
            obj.judge,
            obj.level.value,
            partitions,
            stored,
            written,
        )

    def load_input(self, context: dg.InputContext) -> LevelInput:
        upstream = context.upstream_output
        if upstream is None:
            raise dg.DagsterInvariantViolationError(
                "EntityMetadataIOManager loads level assets only (no upstream output)"
            )
        metadata = upstream.definition_metadata or {}
        level = EntityLevel(_meta(metadata, META_LEVEL))
        project_id = _meta(metadata, META_PROJECT)
        judge = _meta(metadata, META_JUDGE)
        version = _meta(metadata, META_VERSION)
        shard_count = int(_meta(metadata, META_SHARDS) or DEFAULT_SHARD_COUNT)
        keys = context.asset_partition_keys if context.has_asset_partitions else []
        handed = _HANDOFF.take(
            (
                _current_run_id(context),
                upstream.asset_key.to_user_string(),
                frozenset(keys),
                version,
            )
        )
        if handed is not None:
            outputs_by_run: dict[str, list[MetadataOutput]] = defaultdict(list)
            for outcome in handed.outputs:
                outputs_by_run[outcome.run_id].append(outcome)
            context.log.debug(
                "%s/%s: %d entities handed over in memory from this run's step",
                judge,
                level.value,
                len(handed.outputs),
            )
            return LevelInput(level, {}, dict(outputs_by_run))
        by_run: dict[str, list[StoredEntity]] = {}
        with self.clickhouse.open() as store:
            for scope in scopes_from_keys(keys, shard_count):
                ids = None
                if scope.shards is not None:
                    refs = plan_scope(
                        store, scope.run_id, shards=scope.shards, shard_count=shard_count
                    )
                    ids = child_ids(level, refs)
                by_run[scope.run_id] = load_entities(
                    store,
                    project_id=project_id,
                    run_id=scope.run_id,
                    judge=judge,
                    level=level,
                    judge_version=version,
                    entity_ids=ids,
                )
        context.log.debug(
            "loaded %s/%s for %d run(s): %d entities",
            judge,
            level.value,
            len(by_run),
            sum(len(v) for v in by_run.values()),
        )
        return LevelInput(level, by_run)
