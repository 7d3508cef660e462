"""A judge whose stored values carry the hostile trace's text (importable: stable version)."""

from __future__ import annotations

from pydantic import BaseModel

from manta_lib.context import TraceContext
from manta_lib.models import EntityLevel
from manta_lib.pipeline import MapReduceComputation


class FirstError(BaseModel):
    first_error: str | None
    tool_errors: int


def first_error(trace: TraceContext) -> FirstError:
    errors = trace.tools(errors_only=True)
    return FirstError(
        first_error=errors[0].result[:80] if errors else None, tool_errors=len(errors)
    )


echo_errors = MapReduceComputation("Echo errors", project_id="prj_test").add_level(
    EntityLevel.TRACE, first_error, FirstError
)
