"""Hold the store only while requests are in flight (embedded chDB), or all along (a server).

The embedded chDB store can be opened by one process at a time, and ``make ui`` runs Dagster
next to the explorer: a Dagster run must be able to open the store between two page views.
So the first request in flight opens a connection, concurrent requests share it (a
:class:`~manta_lib.store.Store` is thread-safe), and the last one to finish closes it. When
another process holds the store at that moment, the request waits at most ``LOCK_WAIT_S``
(5 s) in all, then answers 503 naming the holder (pid and command line). With a ClickHouse
server there is no such lock and the connection is kept for the life of the app.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from manta_lib.errors import StoreUnavailableError
from manta_lib.settings import MantaSettings
from manta_lib.store import Store
from manta_lib.store.client import lock_holder

LOCK_WAIT_S = 5.0


class StoreLease:
    """A reference-counted store: opened by the first user, closed by the last.

    ``keep_open`` (default: only for a ClickHouse server) keeps the connection between
    requests instead.
    """

    def __init__(
        self,
        settings: MantaSettings,
        *,
        keep_open: bool | None = None,
        lock_wait_s: float = LOCK_WAIT_S,
    ) -> None:
        self.settings = settings
        self.keep_open = (not settings.embedded) if keep_open is None else keep_open
        self.lock_wait_s = lock_wait_s
        self._lock = threading.Lock()
        self._users = 0
        self._store: Store | None = None
        self._schema_checked = False

    @property
    def is_open(self) -> bool:
        return self._store is not None

    @contextmanager
    def acquire(self) -> Iterator[Store]:
        """The shared store; when another process holds the embedded one, waits at most
        ``lock_wait_s`` in all (behind concurrent requests too), then raises
        :class:`StoreUnavailableError` naming the holder."""
        deadline = time.monotonic() + self.lock_wait_s
        if not self._lock.acquire(timeout=self.lock_wait_s):
            raise StoreUnavailableError(self._busy_message())
        try:
            if self._store is None:
                self._store = self._open(deadline)
            self._users += 1
            store = self._store
        finally:
            self._lock.release()
        try:
            yield store
        finally:
            with self._lock:
                self._users -= 1
                if self._users == 0 and self._store is not None and not self.keep_open:
                    self._store.close()
                    self._store = None

    def close(self) -> None:
        """Close a kept connection (the app's shutdown)."""
        with self._lock:
            if self._store is not None and self._users == 0:
                self._store.close()
                self._store = None

    def _open(self, deadline: float) -> Store:
        # Store.open waits for a held embedded store itself (saying so once, in the server
        # log): bound that wait by what is left of this request's.
        settings = self.settings.model_copy(
            update={"lock_timeout_s": max(0.0, deadline - time.monotonic())}
        )
        try:
            # The schema is ensured once per process; later opens skip the DDL round trips.
            store = Store.open(settings, ensure_schema=not self._schema_checked)
        except StoreUnavailableError as exc:
            if "in use by another process" not in str(exc):
                raise
            raise StoreUnavailableError(self._busy_message()) from None
        self._schema_checked = True
        return store

    def _busy_message(self) -> str:
        if not self.settings.embedded:
            return f"the store did not open within {self.lock_wait_s:g} s; this page retries"
        holder = lock_holder(self.settings.chdb_path)
        return (
            f"the embedded store at {self.settings.chdb_path} did not become free within "
            f"{self.lock_wait_s:g} s (one process may open it at a time)"
            + (f": it is in use by another process ({holder})" if holder else "")
            + "; this page retries by itself"
        )
