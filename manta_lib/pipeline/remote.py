"""What a remote worker (a Modal container, a local worker process) runs: :func:`map_batch`.

It takes and returns plain JSON-able dicts so that any runner can ship it: the pipeline
travels as a ``"module:attribute"`` reference, the worker imports it, checks that its judge
version is the one the driver planned with, reads its traces from ClickHouse, maps them with
the :class:`~manta_lib.pipeline.mapping.ThreadMapper` local mode uses, and writes
``entity_metadata`` (each trace as it completes) before returning.

Example (what a Modal container or a pool process runs)::

    report = map_batch({
        "pipeline": "my_project.judges:pipeline", "run_id": "run_xxx",
        "trace_ids": ["t1", "t2"], "judge_version": "0123456789ab",
    })
"""

from __future__ import annotations

import importlib
import logging
import sys
import time
from datetime import datetime
from typing import Any

from manta_lib.entities import MetadataOutput, new_output
from manta_lib.errors import PipelineDefinitionError, StoreUnavailableError
from manta_lib.models import EntityLevel
from manta_lib.pipeline.definition import CPU_MAX_WORKERS, PipelineDefinition
from manta_lib.pipeline.job import MapJob, MapTally
from manta_lib.pipeline.mapping import ThreadMapper
from manta_lib.pipeline.options import Outputs, RunOptions
from manta_lib.pipeline.planner import ListedTraces, Scope
from manta_lib.pipeline.progress import BucketClock
from manta_lib.pipeline.resume import completed_traces
from manta_lib.settings import MantaSettings, load_settings
from manta_lib.store.client import Store

log = logging.getLogger(__name__)

#: How long a worker waits for an embedded (chDB) store held by another local process.
STORE_OPEN_WAIT_S = 60.0


def pipeline_ref(pipeline: PipelineDefinition) -> str:
    """``"module:attribute"`` under which workers can import ``pipeline``.

    The module is the one defining the map function; the attribute is the module-level name
    bound to this pipeline object.
    """
    fn = pipeline.level(EntityLevel.TRACE).fn
    module_name = getattr(fn, "__module__", None)
    if not module_name or module_name == "__main__" or module_name not in sys.modules:
        raise PipelineDefinitionError(
            f"{pipeline.name!r} is defined in a script or notebook ({module_name or 'unknown'}), "
            f"which remote workers cannot import. Move the pipeline and its functions into a "
            f"module (e.g. my_project/judges.py with `pipeline = MapReduceComputation(...)`), "
            f"import it from there, or run it with mode='local'"
        )
    module = sys.modules[module_name]
    names = sorted(name for name, value in vars(module).items() if value is pipeline)
    if not names:
        raise PipelineDefinitionError(
            f"{pipeline.name!r} is not a module-level attribute of {module_name}, where its map "
            f"function is defined, so remote workers cannot import it. Assign it to a name in "
            f"that module (`pipeline = MapReduceComputation(...).add_level(...)`), or run it "
            f"with mode='local'"
        )
    return f"{module_name}:{names[0]}"


def resolve_pipeline(ref: str) -> PipelineDefinition:
    """Import the pipeline named by :func:`pipeline_ref`."""
    module_name, _, attribute = ref.partition(":")
    module = importlib.import_module(module_name)
    pipeline = getattr(module, attribute, None)
    if not isinstance(pipeline, PipelineDefinition):
        raise PipelineDefinitionError(
            f"{ref} is not a MapReduceComputation in the worker (got "
            f"{type(pipeline).__name__}); the worker's copy of {module_name} differs from the "
            f"driver's"
        )
    return pipeline


def worker_environment(settings: MantaSettings) -> dict[str, str]:
    """The environment variables a worker needs to reach the same store as the driver."""
    env = {
        "CLICKHOUSE_URL": settings.clickhouse_url or settings.clickhouse_dsn,
        "CLICKHOUSE_USER": settings.clickhouse_user,
        "CLICKHOUSE_PASSWORD": settings.clickhouse_password.get_secret_value(),
        "MANTA_DATABASE": settings.database,
        "MANTA_CONNECT_TIMEOUT_S": f"{settings.connect_timeout_s:g}",
        "MANTA_FLUSH_SECONDS": f"{settings.flush_seconds:g}",
    }
    if settings.kestrel_api_url:
        env["KESTREL_API_URL"] = settings.kestrel_api_url
    if settings.kestrel_api_key is not None:
        env["KESTREL_API_KEY"] = settings.kestrel_api_key.get_secret_value()
    return env


def open_store_waiting(settings: MantaSettings, wait_s: float = STORE_OPEN_WAIT_S) -> Store:
    """Open the store; for chDB, wait while another local process holds its lock."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return Store.open(settings, ensure_schema=False)
        except StoreUnavailableError as exc:
            locked = settings.embedded and "in use by another process" in str(exc)
            if not locked or time.monotonic() >= deadline:
                raise
            time.sleep(0.1)


def map_batch(payload: dict[str, Any]) -> dict[str, Any]:
    """Map one batch of traces and write it; return a JSON-able report.

    Payload keys: ``pipeline`` (``"module:attribute"``), ``run_id``, ``trace_ids`` (the traces
    to map), ``judge_version``, and optionally ``index`` and ``attempt`` (echoed), ``persist``
    (default True), ``return_outputs`` (default: not ``persist``), ``retry_errors`` (True),
    ``max_workers`` (threads inside the batch, default 4), ``timeout_s`` (per trace). Traces
    already stored for the version are skipped (the same resume record every mode reads), so
    a redelivered input writes nothing twice.
    With ``persist`` False nothing is written; with ``return_outputs`` the outputs come back
    in the report.
    """
    pipeline = resolve_pipeline(payload["pipeline"])
    expected = payload["judge_version"]
    if pipeline.judge_version != expected:
        raise PipelineDefinitionError(
            f"judge version mismatch for {payload['pipeline']}: the driver planned version "
            f"{expected} but this worker's code is version {pipeline.judge_version}. The "
            f"pipeline's module changed between planning and this batch (or the worker image "
            f"carries other code); run again so driver and workers use the same code"
        )
    run_id = payload["run_id"]
    trace_ids = list(payload["trace_ids"])
    persist = bool(payload.get("persist", True))
    return_outputs = bool(payload.get("return_outputs", not persist))
    options = RunOptions(
        persist_results=persist,
        max_workers=int(payload.get("max_workers", CPU_MAX_WORKERS)),
        batch_size=max(1, len(trace_ids)),
        timeout_s=payload.get("timeout_s"),
    )
    settings = load_settings()
    clock = BucketClock()
    with open_store_waiting(settings) as store:
        # A redelivered input (a lost container retried) skips what it already wrote.
        done = (
            completed_traces(
                store,
                pipeline.result_key(run_id, judge_version=expected),
                set(trace_ids),
                retry_errors=bool(payload.get("retry_errors", True)),
            )
            if persist
            else set()
        )
        pending = [tid for tid in trace_ids if tid not in done]
        tally = MapTally(len(pending), scope_size=len(trace_ids), max_failures=None)
        job = MapJob(
            pipeline=pipeline,
            judge_version=expected,
            scope=Scope(run_id, []),
            traces=ListedTraces(pending),
            outputs=Outputs.of(persist, return_outputs),
            options=options,
            tally=tally,
            settings=settings,
            store=store,
            clock=clock,
        )
        outputs = ThreadMapper().map(job)
    log.debug(
        "batch of %d traces: %d mapped, %d failed", len(trace_ids), tally.mapped, tally.failed
    )
    report: dict[str, Any] = {
        "index": payload.get("index", 0),
        "attempt": payload.get("attempt", 1),
        "mapped": tally.mapped,
        "skipped": len(done),
        "errors": tally.failed,
        "first_error": tally.first_error,
        "wall_s": round(sum(clock.seconds.values()), 4),
        **{f"{bucket}_s": round(seconds, 4) for bucket, seconds in clock.seconds.items()},
    }
    if return_outputs:
        report["outputs"] = [_encode(o) for o in outputs]
    return report


def _encode(outcome: MetadataOutput) -> dict[str, Any]:
    return {
        "entity_id": outcome.entity_id,
        "output": outcome.output.model_dump(mode="json") if outcome.output is not None else None,
        "error": outcome.error,
        "error_at": outcome.error_at,
        "computed_at": outcome.computed_at.isoformat(),
        "datapoint_id": outcome.datapoint_id,
        "step_number": outcome.step_number,
        "phase": outcome.phase,
    }


def decode_outputs(
    pipeline: PipelineDefinition, run_id: str, report: dict[str, Any]
) -> list[MetadataOutput]:
    """The TRACE outputs a worker returned in its report (``return_outputs``)."""
    schema = pipeline.level(EntityLevel.TRACE).schema
    return [
        new_output(
            level=EntityLevel.TRACE,
            entity_id=item["entity_id"],
            run_id=run_id,
            judge=pipeline.judge,
            judge_version=pipeline.judge_version,
            output=schema.model_validate(item["output"]) if item["output"] is not None else None,
            error=item["error"],
            computed_at=datetime.fromisoformat(item["computed_at"]),
            error_at=item.get("error_at"),
            datapoint_id=item.get("datapoint_id"),
            step_number=item.get("step_number"),
            phase=item.get("phase"),
        )
        for item in report["outputs"]
    ]
