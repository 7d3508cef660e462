"""Every stored result covering one trace (its own, its datapoint's, its step's, its run's)."""

from __future__ import annotations

from manta_lib.context import TraceContext
from manta_lib.results.entity import StoredResult
from manta_lib.results.entity import trace_results as stored_results
from manta_lib.service import MantaService


def trace_results(svc: MantaService, context: TraceContext) -> list[StoredResult]:
    """Stored results covering ``context``, trace level first, then by judge."""
    return stored_results(svc.store, context)
