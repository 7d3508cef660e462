"""The resume record: each entity's stored ``__status__`` for the judge version.

Every mode reads it the same way, once per scope, before mapping: a trace with a stored ``ok``
status (or a stored error, unless errors are retried) is done and is not mapped again. Nothing
else is written for resuming: the outputs themselves are the record.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from manta_lib.entities import MetadataOutput
from manta_lib.models import EntityLevel
from manta_lib.pipeline.definition import PipelineDefinition
from manta_lib.store.client import Store
from manta_lib.store.metadata import load_entities, load_status, outputs_from_stored
from manta_lib.store.result_key import ResultKey

#: Above this many ids a query reads the run's rows and the ids are picked here: a long
#: array parameter makes the query text itself slow to build and parse.
ID_FILTER_LIMIT = 1000


def completed_traces(
    store: Store, key: ResultKey, trace_ids: Collection[str], *, retry_errors: bool
) -> set[str]:
    """The traces among ``trace_ids`` already stored for ``key`` (its run and judge version):
    not to redo."""
    ids = None if len(trace_ids) > ID_FILTER_LIMIT else list(trace_ids)
    status = load_status(store, key.at(EntityLevel.TRACE), ids)
    wanted = trace_ids if isinstance(trace_ids, set | frozenset) else set(trace_ids)
    return {tid for tid, ok in status.items() if tid in wanted and (ok or not retry_errors)}


def load_level(
    store: Store,
    pipeline: PipelineDefinition,
    level: EntityLevel,
    run_id: str,
    entity_ids: Sequence[str] | None = None,
    *,
    judge_version: str | None = None,
) -> list[MetadataOutput]:
    """The outputs of ``level`` stored for the pipeline's version (or ``judge_version``),
    validated into the level's schema; all of the run's, or those of ``entity_ids``."""
    key = pipeline.result_key(run_id, level, judge_version=judge_version)
    stored = load_entities(store, key, entity_ids)
    return outputs_from_stored(stored, key, pipeline.level(level).schema)
