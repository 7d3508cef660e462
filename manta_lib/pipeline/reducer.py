"""Group the outputs of one level into the entities of the next and call the reduce function.

Membership comes from the trace refs of the scope: a datapoint's children are its traces; a
step's children are the traces at that step, or (with a DATAPOINT level below) the datapoints
that have traces at that step, so a datapoint seen at several steps belongs to each of them;
the run's children are every entity of the level below.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from manta_lib.entities import EntityRef, MetadataOutput
from manta_lib.models import EntityLevel, fast_construct
from manta_lib.pipeline.computation import LevelSpec
from manta_lib.pipeline.executor import IsolatedExecutor
from manta_lib.pipeline.planner import TraceRef
from manta_lib.store.metadata import utc_now


def group_children(
    level: EntityLevel, below: EntityLevel, run_id: str, refs: Sequence[TraceRef]
) -> dict[str, tuple[dict[str, Any], list[str]]]:
    """``{entity_id: (keys, [child entity ids])}`` for ``level`` fed by ``below``."""
    groups: dict[str, tuple[dict[str, Any], list[str]]] = {}
    if level is EntityLevel.DATAPOINT:
        steps: dict[str, set[int]] = defaultdict(set)
        children: dict[str, list[str]] = defaultdict(list)
        for ref in refs:
            steps[ref.datapoint_id].add(ref.step_number)
            children[ref.datapoint_id].append(ref.trace_id)
        for dp, ids in children.items():
            groups[dp] = ({"datapoint_id": dp, "steps": sorted(steps[dp])}, ids)
    elif level is EntityLevel.STEP:
        members: dict[int, dict[str, None]] = defaultdict(dict)  # ordered set
        for ref in refs:
            child = ref.trace_id if below is EntityLevel.TRACE else ref.datapoint_id
            members[ref.step_number][child] = None
        for step in sorted(members):
            groups[str(step)] = ({"step_number": step}, list(members[step]))
    elif level is EntityLevel.RUN:
        run_children: dict[str, None] = {}  # ordered set
        for ref in refs:
            if below is EntityLevel.TRACE:
                run_children[ref.trace_id] = None
            elif below is EntityLevel.DATAPOINT:
                run_children[ref.datapoint_id] = None
            else:
                run_children[str(ref.step_number)] = None
        groups[run_id] = ({"run_id": run_id}, list(run_children))
    else:
        raise ValueError(f"{level} is not a reduce level")
    return groups


def reduce_level(
    spec: LevelSpec,
    below: EntityLevel,
    run_id: str,
    refs: Sequence[TraceRef],
    children: Sequence[MetadataOutput],
    *,
    judge: str,
    judge_version: str,
    executor: IsolatedExecutor,
) -> list[MetadataOutput]:
    """Run ``spec``'s reduce function for every entity of its level in ``refs``' scope.

    Entities whose children are not in ``children`` at all (none computed) are skipped.
    """
    by_id = {child.entity_id: child for child in children}
    entities: list[tuple[EntityRef, list[Any]]] = []
    for entity_id, (keys, child_ids) in group_children(spec.level, below, run_id, refs).items():
        present = [by_id[c] for c in child_ids if c in by_id]
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

    def call(item: tuple[EntityRef, list[Any]]) -> Any:
        return spec.fn(item[0], item[1])

    outputs: list[MetadataOutput] = []
    for group in executor.map(call, entities, spec.schema):
        computed_at = utc_now()
        outputs.extend(
            fast_construct(
                MetadataOutput,
                {
                    "entity_level": spec.level,
                    "entity_id": result.item[0].entity_id,
                    "run_id": run_id,
                    "judge": judge,
                    "judge_version": judge_version,
                    "output": result.output,
                    "error": result.error,
                    "computed_at": computed_at,
                },
            )
            for result in group
        )
    order = {ref.entity_id: i for i, (ref, _) in enumerate(entities)}
    outputs.sort(key=lambda o: order[o.entity_id])
    return outputs
