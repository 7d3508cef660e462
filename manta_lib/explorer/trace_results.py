"""Every stored result of one trace (and of the datapoint and step it belongs to)."""

from __future__ import annotations

from typing import Any

from manta_lib.context import TraceContext
from manta_lib.service import MantaService


def trace_results(svc: MantaService, context: TraceContext) -> list[Any]:
    """Stored results that cover ``context`` (empty until the results API is available)."""
    return []
