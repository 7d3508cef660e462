"""Hold the store only while requests are in flight.

The embedded chDB store can be opened by one process at a time, and ``make ui`` runs Dagster
next to the explorer: a Dagster run must be able to open the store between two page views.
So the first request in flight opens a connection, concurrent requests share it (a
:class:`~manta_lib.store.Store` is thread-safe), and the last one to finish closes it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from manta_lib.settings import MantaSettings
from manta_lib.store import Store


class StoreLease:
    """A reference-counted store: opened by the first user, closed by the last."""

    def __init__(self, settings: MantaSettings) -> None:
        self.settings = settings
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
                # The schema is ensured once per process; later opens skip the DDL round trips.
                self._store = Store.open(self.settings, ensure_schema=not self._schema_checked)
                self._schema_checked = True
            self._users += 1
            store = self._store
        try:
            yield store
        finally:
            with self._lock:
                self._users -= 1
                if self._users == 0 and self._store is not None:
                    self._store.close()
                    self._store = None
