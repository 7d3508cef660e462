"""ClickHouse access: the client, the DDL and the typed rows live under this package only."""

from manta_lib.store.client import Store, open_store
from manta_lib.store.schema import SCHEMA_VERSION, ensure_schema

__all__ = ["SCHEMA_VERSION", "Store", "ensure_schema", "open_store"]
