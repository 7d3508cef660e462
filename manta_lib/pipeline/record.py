"""The runs-log row of one computation, written by one context manager for every mode."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from manta_lib.entities import MetadataOutput
from manta_lib.models import EntityLevel
from manta_lib.pipeline.definition import PipelineDefinition
from manta_lib.pipeline.pool import describe_exception
from manta_lib.pipeline.progress import BucketClock
from manta_lib.runs_log import append_run, make_run_row, run_status
from manta_lib.settings import MantaSettings
from manta_lib.store.metadata import utc_now

log = logging.getLogger(__name__)


@dataclass
class ComputationRecord:
    """What the runs-log row will say: wall time per bucket and a summary to fill in."""

    clock: BucketClock = field(default_factory=BucketClock)
    summary: dict[str, Any] = field(default_factory=dict)
    #: A ``limit_*`` subset: kept out of the runs-log statistics by default.
    subset: bool = False
    #: Traces in scope and how many of them failed, once the map is done.
    traces_total: int | None = None
    traces_failed: int | None = None


@contextmanager
def record_computation(
    pipeline: PipelineDefinition, run_id: str, mode: str, settings: MantaSettings
) -> Iterator[ComputationRecord]:
    """Append the computation's runs-log row on exit: ``succeeded``, ``mostly_failed`` when most
    of its traces failed, or ``failed`` with the error (the exception propagates). Bookkeeping
    never breaks a computation.

    ``run_id`` is the run of traces analysed (the row's ``trace_run_id``); the row's own
    ``run_id`` is a fresh computation id.
    """
    created_at = utc_now()
    record = ComputationRecord()
    raised, error = True, None
    try:
        yield record
        raised = False
    except BaseException as exc:
        error = describe_exception(exc)
        raise
    finally:
        try:
            row = make_run_row(
                run_id=f"{created_at:%Y%m%d_%H%M%S}_{uuid.uuid4().hex[:8]}",
                workflow_id=f"manta__{pipeline.judge}",
                status=run_status(
                    error=raised,
                    traces_total=record.traces_total,
                    traces_failed=record.traces_failed,
                ),
                created_at=created_at,
                finished_at=utc_now(),
                wall_time_breakdown=record.clock.breakdown(),
                tenant_id=pipeline.project_id or "default",
                plan_signature=pipeline.judge_version,
                error=error,
                trace_run_id=run_id,
                mode=mode,
                summary=record.summary,
                subset=record.subset,
                traces_total=record.traces_total,
                traces_failed=record.traces_failed,
            )
            append_run(row, settings.runs_log_dir)
        except Exception:  # noqa: BLE001 - bookkeeping must never break a computation
            log.warning("could not append to the runs log", exc_info=True)


def summarize_result(result: dict[EntityLevel, list[MetadataOutput]]) -> dict[str, str]:
    """Entities per level, with the failed count: ``{"traces": "200 (3 failed)", ...}``."""
    return summarize_counts(
        {
            level: (len(outputs), sum(1 for o in outputs if o.error is not None))
            for level, outputs in result.items()
        }
    )


def summarize_counts(counts: dict[EntityLevel, tuple[int, int]]) -> dict[str, str]:
    """``{"traces": "200 (3 failed)", ...}`` from ``(entities, failed)`` per level."""
    return {
        level.value + "s": f"{total}" + (f" ({failed} failed)" if failed else "")
        for level, (total, failed) in counts.items()
    }
