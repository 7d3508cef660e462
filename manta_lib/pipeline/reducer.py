"""Call a level's reduce function once per entity, over the outputs of the level below.

Which entities a level has, and which children feed each, comes from
:func:`~manta_lib.pipeline.planner.group_children`.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

from pydantic import BaseModel

from manta_lib.entities import EntityRef, MetadataOutput, new_output
from manta_lib.models import EntityLevel
from manta_lib.pipeline import crash_guard
from manta_lib.pipeline.definition import LevelSpec
from manta_lib.pipeline.planner import TraceRef, group_children
from manta_lib.pipeline.pool import IsolatedPool, ItemResult
from manta_lib.store.metadata import utc_now

Entity = tuple[EntityRef, list[Any]]


def reduce_level(
    spec: LevelSpec,
    below: EntityLevel,
    run_id: str,
    refs: Sequence[TraceRef],
    children: Sequence[MetadataOutput],
    *,
    judge: str,
    judge_version: str,
    pool: IsolatedPool,
) -> list[MetadataOutput]:
    """Run ``spec``'s reduce function for every entity of its level in ``refs``' scope.

    Entities whose children are not in ``children`` at all (none computed) are skipped.
    The outputs come back in the order of the entities.
    """
    by_id = {child.entity_id: child for child in children}
    groups = group_children(spec.level, below, run_id, refs)
    return reduce_groups(
        spec,
        run_id,
        ((entity_id, keys, child_ids) for entity_id, (keys, child_ids) in groups.items()),
        by_id,
        judge=judge,
        judge_version=judge_version,
        pool=pool,
    )


class Child(Protocol):
    """What a reduce reads of a child: a stored or just computed output, or its error."""

    @property
    def output(self) -> BaseModel | None: ...

    @property
    def error(self) -> str | None: ...


def reduce_groups(
    spec: LevelSpec,
    run_id: str,
    groups: Iterable[tuple[str, dict[str, Any], Sequence[str]]],
    children: Mapping[str, Child],
    *,
    judge: str,
    judge_version: str,
    pool: IsolatedPool,
) -> list[MetadataOutput]:
    """Run ``spec``'s reduce function for each ``(entity id, keys, child ids)`` group over
    the children found in ``children`` (by id); groups without any are skipped. The outputs
    come back in the order of the groups."""
    entities: list[Entity] = []
    for entity_id, keys, child_ids in groups:
        present = [children[c] for c in child_ids if c in children]
        if not present:
            continue
        ok = [c.output for c in present if c.error is None and c.output is not None]
        ref = EntityRef(
            level=spec.level,
            entity_id=entity_id,
            run_id=run_id,
            keys=keys,
            child_count=len(ok),
            failed_children=len(present) - len(ok),
        )
        entities.append((ref, ok))

    outputs: list[MetadataOutput] = []
    lock = threading.Lock()
    # One timestamp for the call's entities: the writer encodes them as one block.
    computed_at = utc_now()

    def call(item: Entity) -> Any:
        return spec.fn(item[0], item[1])

    def on_result(result: ItemResult[Entity]) -> None:
        output = new_output(
            level=spec.level,
            entity_id=result.item[0].entity_id,
            run_id=run_id,
            judge=judge,
            judge_version=judge_version,
            output=result.output,
            error=result.error,
            computed_at=computed_at,
            error_at=result.where,
            datapoint_id=result.item[0].keys.get("datapoint_id"),
            step_number=result.item[0].keys.get("step_number"),
            phase=result.item[0].keys.get("phase"),
        )
        with lock:
            outputs.append(output)

    with crash_guard.guarding(f"the {spec.level.value} reduce of judge {judge!r} on {run_id!r}"):
        pool.run(call, entities, spec.schema, on_result)
    order = {ref.entity_id: i for i, (ref, _) in enumerate(entities)}
    outputs.sort(key=lambda o: order[o.entity_id])
    return outputs
