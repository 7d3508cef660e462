"""Manta: analyse AI-agent rollouts (traces) stored in ClickHouse.

Public API; ``from manta import ...`` re-exports exactly this.
"""

from manta_lib.errors import (
    ConfigError,
    KestrelError,
    MantaError,
    PersistenceError,
    PipelineDefinitionError,
    QueryError,
    StoreUnavailableError,
    ValidationError,
)
from manta_lib.models import EntityLevel, Phase, SpanKind, SpanRecord, TraceRecord
from manta_lib.settings import MantaSettings, load_settings
from manta_lib.store import Store, open_store

__all__ = [
    "ConfigError",
    "EntityLevel",
    "KestrelError",
    "MantaError",
    "MantaSettings",
    "PersistenceError",
    "Phase",
    "PipelineDefinitionError",
    "QueryError",
    "SpanKind",
    "SpanRecord",
    "Store",
    "StoreUnavailableError",
    "TraceRecord",
    "ValidationError",
    "load_settings",
    "open_store",
]
