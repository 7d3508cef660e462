"""What flows between pipeline levels: entity references, outcomes and the public result type."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import BaseModel

from manta_lib.models import EntityLevel, fast_construct


def step_id(step_number: int, phase: str) -> str:
    """The entity id of one step of one phase: ``"train/12"``, ``"eval/12"``."""
    return f"{phase}/{step_number}"


def run_entity_id(run_id: str, phase: str) -> str:
    """The entity id of the run level of one phase: ``"eval/run_a"``."""
    return f"{phase}/{run_id}"


@dataclass(frozen=True)
class EntityRef:
    """The entity a reduce function is computing, handed to ``reduce_fn(entity, children)``.

    Attributes:
        level: the level being computed (DATAPOINT, STEP, DATAPOINT_ACROSS_STEPS or RUN).
        entity_id: ``"{datapoint_id}@{step_number}"`` for a datapoint at one step,
            ``"{phase}/{step_number}"`` for a step, the datapoint id (across steps), or
            ``"{phase}/{run_id}"`` for the run level (one entity per phase).
        run_id: the run the entity belongs to.
        keys: the entity's group keys, always with its ``phase``:
            ``{"datapoint_id": "dp_1", "step_number": 3, "phase": "train"}``,
            ``{"step_number": 3, "phase": "eval"}``,
            ``{"datapoint_id": "dp_1", "steps": [3, 4], "phase": "train"}`` or
            ``{"run_id": "run_a", "phase": "train"}``.
        child_count: how many children succeeded (the length of ``children``).
        failed_children: how many children failed and are therefore not in ``children``.
    """

    level: EntityLevel
    entity_id: str
    run_id: str
    keys: dict[str, Any] = field(default_factory=dict)
    child_count: int = 0
    failed_children: int = 0

    @property
    def total_children(self) -> int:
        return self.child_count + self.failed_children


class MetadataOutput(BaseModel):
    """One computed entity: its validated output, or the error that prevented it.

    ``pipeline.run()`` returns ``dict[EntityLevel, list[MetadataOutput]]``.
    """

    model_config = {"arbitrary_types_allowed": True}

    entity_level: EntityLevel
    entity_id: str
    run_id: str
    judge: str
    judge_version: str
    output: BaseModel | None = None
    error: str | None = None
    computed_at: datetime
    #: Where the error was raised: the innermost frames of the user's code,
    #: ``file:line in function``, innermost first (None without an error or a traceback).
    error_at: str | None = None
    #: The datapoint the entity belongs to (trace, datapoint and datapoint-across-steps
    #: levels; None above them).
    datapoint_id: str | None = None
    #: The step the entity belongs to (trace, datapoint and step levels; None otherwise).
    step_number: int | None = None
    #: The phase (train / eval / prod) of the traces the entity covers (every level: a step
    #: or run value is per phase; None for outputs of an older store without it).
    phase: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def __str__(self) -> str:
        body = self.output.model_dump_json() if self.output is not None else f"ERROR {self.error}"
        return f"{self.entity_level.value} {self.entity_id}: {body}"


def new_output(
    *,
    level: EntityLevel,
    entity_id: str,
    run_id: str,
    judge: str,
    judge_version: str,
    output: BaseModel | None,
    error: str | None,
    computed_at: datetime,
    error_at: str | None = None,
    datapoint_id: str | None = None,
    step_number: int | None = None,
    phase: str | None = None,
) -> MetadataOutput:
    """A :class:`MetadataOutput` from values already of the field types (validated outputs).

    The one place outcomes are built: the map, the reduces, a worker's report and rows read
    back from ``entity_metadata`` all come through here (skipping pydantic's validation, which
    these values have already passed).
    """
    return fast_construct(
        MetadataOutput,
        {
            "entity_level": level,
            "entity_id": entity_id,
            "run_id": run_id,
            "judge": judge,
            "judge_version": judge_version,
            "output": output,
            "error": error,
            "computed_at": computed_at,
            "error_at": error_at,
            "datapoint_id": datapoint_id,
            "step_number": step_number,
            "phase": phase,
        },
    )
