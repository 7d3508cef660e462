"""What flows between pipeline levels: entity references, outcomes and the public result type."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import BaseModel

from manta_lib.models import EntityLevel, fast_construct


@dataclass(frozen=True)
class EntityRef:
    """The entity a reduce function is computing, handed to ``reduce_fn(entity, children)``.

    Attributes:
        level: the level being computed (DATAPOINT, STEP, DATAPOINT_ACROSS_STEPS or RUN).
        entity_id: ``"{datapoint_id}@{step_number}"`` for a datapoint at one step, the step
            number as text, the datapoint id (across steps), or the run id.
        run_id: the run the entity belongs to.
        keys: the entity's group keys: ``{"datapoint_id": "dp_1", "step_number": 3}``,
            ``{"step_number": 3}``, ``{"datapoint_id": "dp_1", "steps": [3, 4]}`` or
            ``{"run_id": "run_a"}``.
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
        },
    )
