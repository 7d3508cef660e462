"""ClickHouse access: the client, the DDL and the typed rows live under this package only."""

from manta_lib.store.client import Store, open_store
from manta_lib.store.metadata import (
    MetadataWriter,
    StoredEntity,
    load_entities,
    load_status,
    outputs_from_stored,
)
from manta_lib.store.result_key import ResultKey
from manta_lib.store.schema import SCHEMA_VERSION, ensure_schema

__all__ = [
    "SCHEMA_VERSION",
    "MetadataWriter",
    "ResultKey",
    "Store",
    "StoredEntity",
    "ensure_schema",
    "load_entities",
    "load_status",
    "open_store",
    "outputs_from_stored",
]
