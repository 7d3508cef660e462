"""Dagster resources: ClickHouse (the library's store) and Kestrel (the judge registry).

Both read the same environment as the library (``CLICKHOUSE_URL``, ``MANTA_DATA_DIR``,
``MANTA_DATABASE``, ``KESTREL_API_URL`` …); a field set on the resource overrides its variable.
Nothing connects when a resource is built: the store is opened inside an op or a sensor tick
(:meth:`ClickHouseResource.open`) and closed at its end, which the embedded chDB store needs
(one process at a time).
"""

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import dagster as dg
from pydantic import Field

from manta_lib import MantaSettings, load_settings
from manta_lib.pipeline import PipelineDefinition, register_judge
from manta_lib.store import Store


class ClickHouseResource(dg.ConfigurableResource):  # type: ignore[type-arg]  # bare, as Dagster documents
    """Manta's ClickHouse store: embedded chDB under ``MANTA_DATA_DIR`` unless a URL is set.

    Example::

        @dg.asset
        def trace_count(clickhouse: ClickHouseResource) -> int:
            with clickhouse.open() as store:
                return store.rows("SELECT count() FROM {db}.traces")[0][0]
    """

    url: str | None = Field(
        default=None,
        description="http(s)://host:8123 or chdb:///abs/path; default: CLICKHOUSE_URL, else "
        "the embedded store under MANTA_DATA_DIR.",
    )
    database: str | None = Field(default=None, description="Default: MANTA_DATABASE or manta.")
    data_dir: str | None = Field(
        default=None,
        description="Default: MANTA_DATA_DIR, else the per-user data directory "
        "(~/.local/share/manta on Linux).",
    )

    def settings(self) -> MantaSettings:
        """The library settings: the environment, overridden by the fields that are set."""
        overrides: dict[str, Any] = {}
        if self.url:
            overrides["clickhouse_url"] = self.url
        if self.database:
            overrides["database"] = self.database
        if self.data_dir:
            overrides["data_dir"] = self.data_dir
        return load_settings(**overrides)

    @property
    def embedded(self) -> bool:
        """True for the in-process chDB engine (one process may open it at a time)."""
        return self.settings().embedded

    @contextmanager
    def open(self) -> Iterator[Store]:
        """Open the store (schema ensured) and close it on exit; raises StoreUnavailableError."""
        store = Store.open(self.settings())
        try:
            yield store
        finally:
            store.close()


class KestrelResource(dg.ConfigurableResource):  # type: ignore[type-arg]  # bare, as Dagster documents
    """The Kestrel judge registry; without a URL, judges go to the local ``judges`` table."""

    api_url: str | None = Field(default=None, description="Default: KESTREL_API_URL.")
    api_key: str | None = Field(default=None, description="Default: KESTREL_API_KEY.")

    def register(self, pipeline: PipelineDefinition, store: Store) -> str:
        """Register ``pipeline``'s judge and columns; returns ``"kestrel"`` or ``"local"``."""
        settings = store.settings
        updates: dict[str, Any] = {}
        if self.api_url:
            updates["kestrel_api_url"] = self.api_url
        if self.api_key:
            updates["kestrel_api_key"] = self.api_key
        if updates:
            settings = load_settings(**{**_explicit(settings), **updates})
        return register_judge(pipeline, store, settings)


def _explicit(settings: MantaSettings) -> dict[str, Any]:
    """The fields of ``settings`` that differ from the environment (to keep on a rebuild)."""
    return {
        "clickhouse_url": settings.clickhouse_url,
        "database": settings.database,
        "data_dir": settings.data_dir,
    }
