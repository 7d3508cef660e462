"""The batch worker entry point of the driver's executors (Modal containers, local processes).

:func:`run_batch` takes and returns plain JSON-able dicts so that any executor can ship it:
the pipeline travels as a ``"module:attribute"`` reference, the worker imports it, checks that
its judge version is the one the driver planned with, reads its traces from ClickHouse, maps
them with :class:`~manta_lib.pipeline.worker.BatchWorker` (the same worker local mode uses),
writes ``entity_metadata`` and marks the batch ``committed`` in ``progress`` before returning.

Example (what a Modal container or a pool process runs)::

    report = run_batch({
        "pipeline": "my_project.judges:pipeline", "run_id": "run_xxx",
        "batch_id": "b000000-1a2b3c4d5e", "trace_ids": ["t1", "t2"],
        "judge_version": "0123456789ab", "attempt": 1,
    })
"""

from __future__ import annotations

import importlib
import logging
import sys
import time
from datetime import datetime
from typing import Any

from manta_lib.entities import MetadataOutput
from manta_lib.errors import PipelineDefinitionError, StoreUnavailableError
from manta_lib.models import EntityLevel
from manta_lib.pipeline.computation import MapReduceComputation
from manta_lib.pipeline.planner import TraceBatch
from manta_lib.pipeline.worker import BatchWorker
from manta_lib.settings import MantaSettings, load_settings
from manta_lib.store.client import Store
from manta_lib.store.metadata import MetadataWriter, load_status

log = logging.getLogger(__name__)

#: How long a worker waits for an embedded (chDB) store held by another local process.
STORE_OPEN_WAIT_S = 60.0


def pipeline_ref(pipeline: MapReduceComputation) -> str:
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


def resolve_pipeline(ref: str) -> MapReduceComputation:
    """Import the pipeline named by :func:`pipeline_ref`."""
    module_name, _, attribute = ref.partition(":")
    module = importlib.import_module(module_name)
    pipeline = getattr(module, attribute, None)
    if not isinstance(pipeline, MapReduceComputation):
        raise PipelineDefinitionError(
            f"{ref} is not a MapReduceComputation in the worker (got {type(pipeline).__name__}); "
            f"the worker's copy of {module_name} differs from the driver's"
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


def open_store(settings: MantaSettings, wait_s: float = STORE_OPEN_WAIT_S) -> Store:
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


def run_batch(payload: dict[str, Any]) -> dict[str, Any]:
    """Map one batch and write it; return a JSON-able report (see the module docstring).

    Payload keys: ``pipeline``, ``run_id``, ``batch_id``, ``trace_ids``, ``judge_version``,
    ``attempt``, and optionally ``persist`` (default True), ``retry_errors`` (True),
    ``max_workers`` (threads inside the batch, default 4), ``timeout_s`` (per trace).
    With ``persist`` False nothing is written and the outputs come back in the report.
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
    batch = TraceBatch(payload["batch_id"], payload["run_id"], tuple(payload["trace_ids"]))
    persist = payload.get("persist", True)
    attempt = int(payload.get("attempt", 1))
    settings = load_settings()
    started = time.perf_counter()
    with open_store(settings) as store:
        skip: set[str] = set()
        writer = None
        if persist:
            status = load_status(
                store,
                project_id=pipeline.project_id,
                run_id=batch.run_id,
                judge=pipeline.judge,
                level=EntityLevel.TRACE,
                judge_version=expected,
                entity_ids=batch.trace_ids,
            )
            retry_errors = payload.get("retry_errors", True)
            skip = {tid for tid, ok in status.items() if ok or not retry_errors}
            writer = MetadataWriter(
                store,
                project_id=pipeline.project_id,
                judge=pipeline.judge,
                flush_seconds=settings.flush_seconds,
            )
        worker = BatchWorker(
            pipeline,
            store,
            judge_version=expected,
            writer=writer,
            max_workers=int(payload.get("max_workers", 4)),
            timeout_s=payload.get("timeout_s"),
        )
        try:
            report = worker.process(batch, skip, attempt)
        finally:
            worker.close()
    log.debug(
        "batch %s: %d traces mapped, %d skipped", batch.batch_id, report.trace_count, len(skip)
    )
    result: dict[str, Any] = {
        "batch_id": batch.batch_id,
        "attempt": attempt,
        "mapped": report.trace_count,
        "skipped": len(skip),
        "errors": report.error_count,
        "load_s": round(report.load_s, 4),
        "map_s": round(report.map_s, 4),
        "persist_s": round(report.persist_s, 4),
        "wall_s": round(time.perf_counter() - started, 4),
        "first_error": _first_error(report.outputs),
    }
    if not persist:
        result["outputs"] = [_encode(o) for o in report.outputs]
    return result


def _first_error(outputs: list[MetadataOutput]) -> str | None:
    """The failure with the smallest trace id (deterministic whatever finished first)."""
    failed = [o for o in outputs if o.error is not None]
    if not failed:
        return None
    first = min(failed, key=lambda o: o.entity_id)
    return f"{first.entity_id}: {first.error}"


def _encode(outcome: MetadataOutput) -> dict[str, Any]:
    return {
        "entity_id": outcome.entity_id,
        "output": outcome.output.model_dump(mode="json") if outcome.output is not None else None,
        "error": outcome.error,
        "computed_at": outcome.computed_at.isoformat(),
    }


def decode_outputs(
    pipeline: MapReduceComputation,
    run_id: str,
    judge_version: str,
    encoded: list[dict[str, Any]],
) -> list[MetadataOutput]:
    """Rebuild the TRACE outputs a worker returned (``persist`` False)."""
    schema = pipeline.level(EntityLevel.TRACE).schema
    return [
        MetadataOutput(
            entity_level=EntityLevel.TRACE,
            entity_id=item["entity_id"],
            run_id=run_id,
            judge=pipeline.judge,
            judge_version=judge_version,
            output=schema.model_validate(item["output"]) if item["output"] is not None else None,
            error=item["error"],
            computed_at=datetime.fromisoformat(item["computed_at"]),
        )
        for item in encoded
    ]
