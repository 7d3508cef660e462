"""Hold the store only while requests are in flight (embedded chDB), or all along (a server).

The embedded chDB store can be opened by one process at a time, and ``make ui`` runs Dagster
next to the explorer: a Dagster run must be able to open the store between two page views.
So the first request in flight opens a connection, concurrent requests share it (a
:class:`~manta_lib.store.Store` is thread-safe), and the last one to finish closes it. When
another process holds the store at that moment, the request waits a few seconds for it
before answering 503. With a ClickHouse server there is no such lock and the connection is
kept for the life of the app.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from manta_lib.errors import StoreUnavailableError
from manta_lib.settings import MantaSettings
from manta_lib.store import Store

log = logging.getLogger(__name__)

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
        with self._lock:
            if self._store is None:
                self._store = self._open()
            self._users += 1
            store = self._store
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

    def _open(self) -> Store:
        deadline = time.monotonic() + self.lock_wait_s
        delay = 0.05
        while True:
            try:
                # The schema is ensured once per process; later opens skip the DDL round trips.
                store = Store.open(self.settings, ensure_schema=not self._schema_checked)
            except StoreUnavailableError as exc:
                if "in use by another process" not in str(exc) or time.monotonic() > deadline:
                    raise
                log.debug("embedded store busy, retrying in %.2f s", delay)
                time.sleep(delay)
                delay = min(delay * 2, 0.5)
                continue
            self._schema_checked = True
            return store
