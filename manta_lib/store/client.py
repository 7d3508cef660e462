"""The one place that opens ClickHouse: clickhouse-connect over HTTP or embedded chDB.

Connection failures are translated into :class:`StoreUnavailableError` messages that name the
setting to change. All queries bind values as parameters; only validated identifiers (the
database name and our own table names) are formatted into SQL.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, cast

import clickhouse_connect
import httpx
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError

from manta_lib.errors import StoreUnavailableError
from manta_lib.settings import MantaSettings, load_settings
from manta_lib.store.schema import ensure_schema as ensure_tables

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger(__name__)
_announced_embedded: set[str] = set()


def connect(settings: MantaSettings) -> Client:
    """Open a clickhouse-connect client for ``settings`` or raise a clear error."""
    dsn = settings.clickhouse_dsn
    if settings.embedded:
        settings.chdb_path.parent.mkdir(parents=True, exist_ok=True)
        if dsn not in _announced_embedded:
            _announced_embedded.add(dsn)
            log.info(
                "CLICKHOUSE_URL is unset: using the embedded chDB engine at %s", settings.chdb_path
            )
        try:
            return clickhouse_connect.get_client(dsn=dsn)
        except ClickHouseError as exc:
            raise StoreUnavailableError(explain_chdb_error(str(exc), settings)) from None
    _ping(settings)
    try:
        client = clickhouse_connect.get_client(
            dsn=dsn,
            username=settings.clickhouse_user,
            password=settings.clickhouse_password.get_secret_value(),
            connect_timeout=settings.connect_timeout_s,
            send_receive_timeout=300,
            autogenerate_session_id=False,
        )
    except ClickHouseError as exc:
        raise StoreUnavailableError(explain_http_error(str(exc), settings)) from None
    return client


def _ping(settings: MantaSettings) -> None:
    """Fail fast (``connect_timeout_s``) when the server is down or does not answer."""
    url = (settings.clickhouse_url or "").rstrip("/") + "/ping"
    try:
        response = httpx.get(url, timeout=settings.connect_timeout_s)
    except httpx.HTTPError as exc:
        raise StoreUnavailableError(explain_http_error(str(exc) or repr(exc), settings)) from None
    if response.status_code != 200:
        raise StoreUnavailableError(
            f"CLICKHOUSE_URL={settings.clickhouse_url} answered HTTP {response.status_code} "
            f"to /ping: it does not look like a ClickHouse HTTP endpoint (default port 8123). "
            f"Fix CLICKHOUSE_URL."
        )


def explain_chdb_error(message: str, settings: MantaSettings) -> str:
    """Turn a chDB open failure into an actionable message."""
    path = settings.chdb_path
    if "already initialized with path" in message:
        return (
            f"this process already has another embedded ClickHouse store open, so it cannot open "
            f"{path}; chDB allows one store path per process. Close the other store first, or "
            f"point CLICKHOUSE_URL / MANTA_DATA_DIR at the same store."
        )
    if "EmbeddedServer" in message or "Cannot lock file" in message or "lock" in message.lower():
        return (
            f"the embedded ClickHouse store at {path} is in use by another process (chDB lets "
            f"one process open a store at a time). Stop the other process (a running "
            f"`dagster dev`, notebook or pipeline) and retry, use a different MANTA_DATA_DIR, or "
            f"set CLICKHOUSE_URL=http://host:8123 to share a ClickHouse server."
        )
    return f"cannot open the embedded ClickHouse store at {path}: {message.strip()}"


def explain_http_error(message: str, settings: MantaSettings) -> str:
    """Turn an HTTP connection failure into an actionable message."""
    url = settings.clickhouse_url
    lowered = message.lower()
    if "authentication" in lowered or "code: 516" in lowered or "password" in lowered:
        return (
            f"ClickHouse at CLICKHOUSE_URL={url} rejected user {settings.clickhouse_user!r}: "
            f"wrong CLICKHOUSE_USER or CLICKHOUSE_PASSWORD. Set them to valid credentials."
        )
    if "timed out" in lowered or "timeout" in lowered:
        reason = f"no answer within {settings.connect_timeout_s:g} s"
    elif "refused" in lowered:
        reason = "connection refused"
    elif "name or service not known" in lowered or "resolve" in lowered:
        reason = "unknown host name"
    else:
        reason = message.strip().splitlines()[0] if message.strip() else "unknown error"
    return (
        f"cannot reach ClickHouse at CLICKHOUSE_URL={url} ({reason}). Start the server or fix "
        f"CLICKHOUSE_URL, or unset it to use the embedded chDB store."
    )


class Store:
    """A ClickHouse connection bound to Manta's database.

    Thread-safe: each call holds a lock, so a prefetching reader and a writer can share it.
    Use as a context manager so the embedded store is released as soon as possible.
    """

    def __init__(self, client: Client, settings: MantaSettings) -> None:
        self.client = client
        self.settings = settings
        self.database = settings.database
        self._lock = threading.RLock()

    @classmethod
    def open(cls, settings: MantaSettings | None = None, *, ensure_schema: bool = True) -> Store:
        """Connect and (by default) create the database and tables if missing."""
        settings = settings or load_settings()
        store = cls(connect(settings), settings)
        if ensure_schema:
            try:
                ensure_tables(store)
            except BaseException:
                store.close()
                raise
        return store

    def sibling(self) -> Store:
        """Another connection to the same store (schema already ensured), for a second thread.

        Two connections let a prefetching reader and a writer run queries without waiting for
        each other's lock.
        """
        return Store(connect(self.settings), self.settings)

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the connection (for chDB: the lock on the store directory)."""
        with self._lock:
            try:
                self.client.close()
            except Exception:  # noqa: BLE001 - closing is best effort
                log.debug("error while closing the ClickHouse client", exc_info=True)

    def sql(self, template: str) -> str:
        """Substitute the (validated) database name for ``{db}`` in ``template``."""
        return template.replace("{db}", self.database)

    def command(self, template: str, parameters: dict[str, Any] | None = None) -> Any:
        with self._lock:
            return self.client.command(self.sql(template), parameters=parameters)

    def rows(
        self, template: str, parameters: dict[str, Any] | None = None
    ) -> list[tuple[Any, ...]]:
        """Run a query and return its rows as tuples."""
        with self._lock:
            result = self.client.query(self.sql(template), parameters=parameters)
            # result_rows is already a list of tuples; avoid copying large span results.
            return cast(list[tuple[Any, ...]], result.result_rows)

    def columns(
        self, template: str, parameters: dict[str, Any] | None = None
    ) -> tuple[Sequence[str], list[Sequence[Any]]]:
        """Run a query and return ``(column_names, columns)`` (column-oriented, fastest)."""
        with self._lock:
            result = self.client.query(self.sql(template), parameters=parameters)
            return result.column_names, list(result.result_columns)

    @contextmanager
    def stream(
        self, template: str, parameters: dict[str, Any] | None = None
    ) -> Iterator[Iterator[Sequence[tuple[Any, ...]]]]:
        """Stream row blocks; the lock is held until the stream is closed."""
        with (
            self._lock,
            self.client.query_row_block_stream(self.sql(template), parameters=parameters) as blocks,
        ):
            yield blocks

    @contextmanager
    def stream_columns(
        self, template: str, parameters: dict[str, Any] | None = None
    ) -> Iterator[Iterator[Sequence[Sequence[Any]]]]:
        """Stream column blocks (one sequence per selected column: no tuple per row); the
        lock is held until the stream is closed."""
        with (
            self._lock,
            self.client.query_column_block_stream(
                self.sql(template), parameters=parameters
            ) as blocks,
        ):
            yield blocks

    def insert_columns(self, table: str, data: Mapping[str, Sequence[Any]]) -> None:
        """Column-oriented insert (cheaper than row-oriented: no per-row tuples)."""
        if not data or not len(next(iter(data.values()))):
            return
        with self._lock:
            self.client.insert(
                f"{self.database}.{table}",
                list(data.values()),
                column_names=list(data.keys()),
                column_oriented=True,
            )

    def insert_arrow(self, table: str, data: pa.Table) -> None:
        """Insert an Arrow table (``FORMAT Arrow``): the columns are converted in C, not per
        value in Python, which pays off for wide batches such as entity_metadata's."""
        if not data.num_rows:
            return
        with self._lock:
            self.client.insert_arrow(f"{self.database}.{table}", data)


@contextmanager
def open_store(settings: MantaSettings | None = None) -> Iterator[Store]:
    """Open a :class:`Store`, yield it, close it: the usual way to touch ClickHouse."""
    store = Store.open(settings)
    try:
        yield store
    finally:
        store.close()
