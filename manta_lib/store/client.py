"""The one place that opens ClickHouse: clickhouse-connect over HTTP or embedded chDB.

Connection failures are translated into :class:`StoreUnavailableError` messages that name the
setting to change. All queries bind values as parameters; only validated identifiers (the
database name and our own table names) are formatted into SQL.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import clickhouse_connect
import httpx
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError
from clickhouse_connect.driver.query import QueryContext

from manta_lib.errors import StoreUnavailableError
from manta_lib.settings import MantaSettings, load_settings
from manta_lib.store.schema import ensure_schema as ensure_tables

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger(__name__)
_announced: set[tuple[str, str]] = set()
_open_embedded: dict[str, int] = {}  # embedded store path -> clients open in this process
_registry_lock = threading.Lock()
_LOCK_POLL_S = 0.2


def connect(settings: MantaSettings) -> Client:
    """Open a clickhouse-connect client for ``settings`` or raise a clear error.

    The embedded store is locked by the process that opens it: when another process holds it,
    this waits up to ``MANTA_LOCK_TIMEOUT_S`` (saying so once), then fails with one message.
    """
    dsn = settings.clickhouse_dsn
    if settings.embedded:
        return _connect_embedded(settings)
    _ping(settings)
    try:
        client = clickhouse_connect.get_client(
            dsn=dsn,
            username=settings.clickhouse_user,
            password=settings.clickhouse_password.get_secret_value(),
            connect_timeout=settings.connect_timeout_s,
            send_receive_timeout=settings.query_timeout_s,
            autogenerate_session_id=False,
        )
    except ClickHouseError as exc:
        raise StoreUnavailableError(explain_http_error(str(exc), settings)) from None
    return client


def _connect_embedded(settings: MantaSettings) -> Client:
    path = settings.chdb_path
    _prepare_directory(path, settings)
    deadline = time.monotonic() + settings.lock_timeout_s
    announced_wait = False
    while True:
        with _registry_lock:
            held_here = _open_embedded.get(str(path), 0) > 0
        holder = None if held_here else lock_holder(path)
        if holder is None:
            try:
                client = clickhouse_connect.get_client(
                    dsn=settings.clickhouse_dsn, chdb_options=chdb_startup_options(settings)
                )
            except ClickHouseError as exc:
                message = str(exc)
                # Another process took the lock between our check and chDB's own.
                if _is_lock_error(message) and time.monotonic() < deadline:
                    time.sleep(_LOCK_POLL_S)
                    continue
                raise StoreUnavailableError(explain_chdb_error(message, settings)) from None
            with _registry_lock:
                _open_embedded[str(path)] = _open_embedded.get(str(path), 0) + 1
            return client
        if time.monotonic() >= deadline:
            raise StoreUnavailableError(_in_use_message(path, holder, settings))
        if not announced_wait:
            announced_wait = True
            log.warning(
                "the embedded ClickHouse store at %s is in use by %s; waiting up to %g s for it "
                "(MANTA_LOCK_TIMEOUT_S)",
                path,
                holder,
                settings.lock_timeout_s,
            )
        time.sleep(_LOCK_POLL_S)


#: The embedded engine's caches bounded by ``MANTA_CHDB_CACHE_MB`` (server settings, fixed
#: when the engine starts in this process).
_CHDB_CACHES = (
    "mark_cache_size",
    "index_mark_cache_size",
    "primary_index_cache_size",
    "query_condition_cache_size",
)


def chdb_startup_options(settings: MantaSettings) -> dict[str, str]:
    """The embedded engine's start-up settings: its caches and memory limit, in bytes."""
    cache = str(int(settings.chdb_cache_mb * 2**20))
    options = dict.fromkeys(_CHDB_CACHES, cache)
    # Off in ClickHouse by default; without it every search decompresses the whole n-gram
    # index again (about 3x a cached search's time at 5M spans).
    options["index_uncompressed_cache_size"] = str(int(settings.chdb_index_cache_mb * 2**20))
    if settings.chdb_max_memory_mb is not None:
        options["max_server_memory_usage"] = str(int(settings.chdb_max_memory_mb * 2**20))
    return options


def _released_embedded(path: Path) -> None:
    with _registry_lock:
        left = _open_embedded.get(str(path), 0) - 1
        if left > 0:
            _open_embedded[str(path)] = left
        else:
            _open_embedded.pop(str(path), None)


def _prepare_directory(path: Path, settings: MantaSettings) -> None:
    """Create the store directory, or say which setting points at a place that cannot hold it."""
    setting = (
        f"CLICKHOUSE_URL={settings.clickhouse_url}"
        if settings.clickhouse_url
        else f"MANTA_DATA_DIR={settings.data_dir}"
    )
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreUnavailableError(
            f"cannot create the embedded ClickHouse store directory {path} ({exc.strerror}); "
            f"fix {setting} to point at a writable directory"
        ) from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise StoreUnavailableError(
            f"the embedded ClickHouse store directory {path} is not writable by this user; "
            f"fix its permissions or {setting}"
        )


def lock_holder(path: Path) -> str | None:
    """Who holds the embedded store at ``path``, ``None`` if free: ``"process 1234: python
    notebook.py"`` (with its command line where the system shows it), else ``"process 1234"``.

    chDB keeps an exclusive ``flock`` on ``<path>/status`` while a process has the store open
    and writes that process's PID into it; probing the same lock tells whether opening would
    fail, without letting chDB print its own error line.
    """
    status = path / "status"
    try:
        fd = os.open(status, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        return None
    except OSError:
        return None  # unreadable: let chDB report what is wrong
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                return None
            try:
                first = os.pread(fd, 200, 0).decode("utf-8", "replace").splitlines()
            except OSError:
                first = []
            pid = next(
                (line.split(":", 1)[1].strip() for line in first if line.startswith("PID:")), ""
            )
            if not pid:
                return "another process"
            command = process_command_line(pid)
            return f"process {pid}: {command}" if command else f"process {pid}"
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def process_command_line(pid: str, limit: int = 160) -> str | None:
    """The command line of process ``pid`` (from ``/proc``; None where there is none),
    shortened in the middle past ``limit`` characters."""
    try:
        raw = Path(f"/proc/{int(pid)}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    # one line: an argument may hold newlines (python -c "...")
    command = " ".join(raw.replace(b"\0", b" ").decode("utf-8", "replace").split())
    if len(command) > limit:
        half = (limit - 1) // 2
        command = command[:half] + "…" + command[-half:]
    return command or None


def _is_lock_error(message: str) -> bool:
    return "Cannot lock file" in message or "EmbeddedServer: ." in message


def _in_use_message(path: Path, holder: str, settings: MantaSettings) -> str:
    return (
        f"the embedded ClickHouse store at {path} is in use by another process ({holder}) and "
        f"was not released within MANTA_LOCK_TIMEOUT_S={settings.lock_timeout_s:g} s (chDB lets "
        f"one process open a store at a time). Stop the other process (a running `dagster "
        f"dev`, notebook or pipeline holding a `with MantaService()` block) or raise "
        f"MANTA_LOCK_TIMEOUT_S, use a different MANTA_DATA_DIR, or set "
        f"CLICKHOUSE_URL=http://host:8123 to share a ClickHouse server."
    )


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
    if _is_lock_error(message):
        return _in_use_message(path, "another process", settings)
    first = message.strip().split("Stack trace")[0].strip().splitlines()
    detail = first[0] if first else "unknown error"
    return f"cannot open the embedded ClickHouse store at {path}: {detail}"


def explain_http_error(message: str, settings: MantaSettings) -> str:
    """Turn an HTTP connection failure into an actionable message."""
    url = settings.clickhouse_url
    lowered = message.lower()
    if "authentication" in lowered or "code: 516" in lowered or "password" in lowered:
        return (
            f"ClickHouse at CLICKHOUSE_URL={url} rejected user {settings.clickhouse_user!r}: "
            f"wrong CLICKHOUSE_USER or CLICKHOUSE_PASSWORD. Set them to valid credentials."
        )
    if "read timed out" in lowered or "readtimeout" in lowered:
        reason = f"no answer to a query within MANTA_QUERY_TIMEOUT_S={settings.query_timeout_s:g} s"
    elif "timed out" in lowered or "timeout" in lowered:
        reason = f"no answer within MANTA_CONNECT_TIMEOUT_S={settings.connect_timeout_s:g} s"
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
        self._closed = False

    @classmethod
    def open(cls, settings: MantaSettings | None = None, *, ensure_schema: bool = True) -> Store:
        """Connect and (by default) create the database and tables if missing."""
        settings = settings or load_settings()
        store = cls(connect(settings), settings)
        try:
            if ensure_schema:
                ensure_tables(store)
                store._announce()
        except BaseException:
            store.close()
            raise
        return store

    def describe(self) -> str:
        """Where this store is, for messages (see :func:`describe_store`)."""
        return describe_store(self.settings)

    def _announce(self) -> None:
        """Log, once per process and store, where the store is and how many traces it holds."""
        key = (self.settings.clickhouse_dsn, self.database)
        if key in _announced:
            return
        _announced.add(key)
        count = self.rows("SELECT count() FROM {db}.traces")[0][0]
        # One short line (fits an 80-column terminal); which setting chose it at DEBUG.
        log.info("Manta store: %s, %s traces", short_store(self.settings), f"{int(count):,}")
        log.debug("Manta store details: %s", self.describe())
        old_default = Path(".manta", "clickhouse").resolve()
        if (
            "MANTA_DATA_DIR" not in os.environ
            and self.settings.clickhouse_url is None
            and old_default != self.settings.chdb_path
            and old_default.is_dir()
        ):
            log.warning(
                "%s holds a store of an older Manta (whose default was ./.manta); this process "
                "uses %s. Set MANTA_DATA_DIR=%s to use the old one.",
                old_default,
                self.settings.chdb_path,
                old_default.parent,
            )

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
            if self._closed:
                return
            self._closed = True
            try:
                self.client.close()
            except Exception:  # noqa: BLE001 - closing is best effort
                log.debug("error while closing the ClickHouse client", exc_info=True)
            if self.settings.embedded:
                _released_embedded(self.settings.chdb_path)

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

    def native(
        self, template: str, parameters: dict[str, Any] | None = None
    ) -> tuple[bytes, QueryContext]:
        """Run a query and return its result undecoded (ClickHouse's Native format) with the
        context that decodes it as :meth:`rows` would (see ``store.native_rows``): bytes travel
        to another process far cheaper than Python objects."""
        sql = self.sql(template)
        with self._lock:
            context = self.client.create_query_context(query=sql, parameters=parameters)
            data = self.client.raw_query(sql, parameters=parameters, fmt="Native")
        return data, context

    def insert_arrow(self, table: str, data: pa.Table) -> None:
        """Insert an Arrow table (``FORMAT Arrow``): the columns are converted in C, not per
        value in Python, which pays off for wide batches such as entity_metadata's."""
        if not data.num_rows:
            return
        with self._lock:
            self.client.insert_arrow(f"{self.database}.{table}", data)


def describe_store(settings: MantaSettings) -> str:
    """Where the store of ``settings`` is: the embedded path or the server URL, which setting
    chose it, and the database."""
    database = settings.database
    if not settings.embedded:
        return f"ClickHouse at {settings.clickhouse_url}, database {database}"
    if settings.clickhouse_url:
        where = f"CLICKHOUSE_URL={settings.clickhouse_url}"
    else:
        where = f"MANTA_DATA_DIR={settings.data_dir}; CLICKHOUSE_URL is unset"
    return f"embedded chDB at {settings.chdb_path} ({where}), database {database}"


def short_store(settings: MantaSettings) -> str:
    """Where the store of ``settings`` is, in few words: the embedded path (``~`` for the home
    directory) or the server URL, and the database when it is not the default ``manta``."""
    if settings.embedded:
        path = settings.chdb_path
        home = Path.home()
        where = f"~/{path.relative_to(home)}" if path.is_relative_to(home) else str(path)
    else:
        where = str(settings.clickhouse_url)
    return where if settings.database == "manta" else f"{where}, database {settings.database}"


@contextmanager
def open_store(settings: MantaSettings | None = None) -> Iterator[Store]:
    """Open a :class:`Store`, yield it, close it: the usual way to touch ClickHouse."""
    store = Store.open(settings)
    try:
        yield store
    finally:
        store.close()
