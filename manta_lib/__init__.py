"""Manta: analyse AI-agent rollouts (traces) stored in ClickHouse.

Public API; ``from manta import ...`` re-exports exactly this.
"""

from manta_lib.collector.server import Collector
from manta_lib.context import Conversation, TraceContext
from manta_lib.demo import seed_demo
from manta_lib.entities import EntityRef, MetadataOutput
from manta_lib.errors import (
    ComputationAborted,
    ConfigError,
    KestrelError,
    LLMBudgetExceeded,
    LLMError,
    MantaError,
    PersistenceError,
    PipelineDefinitionError,
    QueryError,
    StoreUnavailableError,
    ValidationError,
)
from manta_lib.importers import import_files, import_records
from manta_lib.ingest.loader import (
    ImportInterrupted,
    ImportReport,
    SourceRecord,
    import_jsonl,
    load_records,
)
from manta_lib.llm import LLMJudge, ModelPrice
from manta_lib.models import EntityLevel, Phase, SpanKind, SpanRecord, TraceRecord
from manta_lib.percentile import percentile
from manta_lib.pipeline import LevelOutputs, MapReduceComputation, RunResult
from manta_lib.results import Agreement, JudgeInfo, RunComparison, parse_condition
from manta_lib.rollout_logger import RolloutLogger
from manta_lib.service import MantaService
from manta_lib.settings import MantaSettings, load_settings
from manta_lib.store import Store, open_store
from manta_lib.store.trace_writes import delete_run

__all__ = [
    "Agreement",
    "Collector",
    "ComputationAborted",
    "ConfigError",
    "Conversation",
    "EntityLevel",
    "EntityRef",
    "ImportInterrupted",
    "ImportReport",
    "JudgeInfo",
    "KestrelError",
    "LLMBudgetExceeded",
    "LLMError",
    "LLMJudge",
    "MantaError",
    "MantaService",
    "MantaSettings",
    "LevelOutputs",
    "MapReduceComputation",
    "RunResult",
    "MetadataOutput",
    "ModelPrice",
    "PersistenceError",
    "Phase",
    "PipelineDefinitionError",
    "QueryError",
    "RolloutLogger",
    "RunComparison",
    "SourceRecord",
    "SpanKind",
    "SpanRecord",
    "Store",
    "StoreUnavailableError",
    "TraceContext",
    "TraceRecord",
    "ValidationError",
    "delete_run",
    "import_files",
    "import_jsonl",
    "import_records",
    "load_records",
    "load_settings",
    "open_store",
    "parse_condition",
    "percentile",
    "seed_demo",
]
