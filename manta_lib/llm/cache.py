"""The judge response cache: answers kept in ClickHouse, looked up in memory.

A re-run after a crash, after a code change outside the prompt, or a second pipeline with the
same prompt gets its answers from here: no call, no cost. Keys hash everything that decides
the answer (model, messages, schema, sampling parameters, and the sample index when sampling
at temperature > 0). The first lookup of a judge configuration (a *namespace*) loads all its
rows in one query; new answers are buffered and written in batches (every ``flush_seconds`` or
``flush_rows``), never one insert per call.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from manta_lib.settings import MantaSettings
from manta_lib.store.client import Store
from manta_lib.store.llm_cache import (
    LLM_CACHE_COLUMNS,
    CachedRow,
    ensure_llm_cache_table,
    insert_rows,
    iter_namespace,
)

log = logging.getLogger(__name__)


def _digest(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def namespace_of(model: str, schema: dict[str, Any], params: dict[str, Any]) -> str:
    """Hash of one judge configuration: model, output schema and sampling parameters."""
    return _digest({"model": model, "schema": schema, "params": params})


def key_of(namespace: str, messages: list[dict[str, Any]], sample_index: int | None) -> str:
    """Hash of one request within a namespace (the sample index only when sampling)."""
    return _digest({"ns": namespace, "messages": messages, "sample": sample_index})


class ResponseCache:
    """Thread-safe cache of judge answers backed by the ``llm_cache`` table.

    Without ``store`` it opens its own connection (``settings``) only for each load or flush
    and releases it right after: an embedded (chDB) store admits one process at a time, and a
    notebook or worker that judged once must not keep Dagster or the CLI out of it.
    :meth:`close` flushes.
    """

    def __init__(
        self,
        settings: MantaSettings | None = None,
        *,
        store: Store | None = None,
        max_age_days: float | None = None,
        flush_seconds: float = 2.0,
        flush_rows: int = 5_000,
    ) -> None:
        self._settings = settings
        self._store = store
        self._owns_store = store is None
        self.max_age_days = max_age_days
        self.flush_seconds = flush_seconds
        self.flush_rows = flush_rows
        self.rows_written = 0
        self.inserts = 0
        self._namespaces: dict[str, dict[str, CachedRow]] = {}
        self._load_lock = threading.Lock()
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._buffer: dict[str, list[Any]] = {name: [] for name in LLM_CACHE_COLUMNS}
        self._last_flush = time.monotonic()
        self._table_ready = False
        self._exit_hook = False

    @contextmanager
    def _connection(self) -> Iterator[Store]:
        """The given store, or a connection of this call's own, closed right after."""
        if not self._exit_hook:
            # After the store's own exit hooks (they run in reverse order): a script that
            # never closes its judges still writes its last answers.
            atexit.register(self.flush)
            self._exit_hook = True
        if self._store is not None:
            store = self._store
        else:
            from manta_lib.settings import load_settings

            store = Store.open(self._settings or load_settings())
        try:
            if not self._table_ready:
                ensure_llm_cache_table(store)
                self._table_ready = True
            yield store
        finally:
            if self._owns_store:
                store.close()

    def get(self, namespace: str, key: str) -> CachedRow | None:
        """The cached answer for ``key``, loading ``namespace`` in one query the first time."""
        rows = self._namespaces.get(namespace)
        if rows is None:
            rows = self._load(namespace)
        return rows.get(key)

    def _load(self, namespace: str) -> dict[str, CachedRow]:
        with self._load_lock:
            rows = self._namespaces.get(namespace)
            if rows is not None:
                return rows
            not_before = None
            if self.max_age_days is not None:
                not_before = datetime.now(UTC) - timedelta(days=self.max_age_days)
            started = time.perf_counter()
            with self._connection() as store:
                rows = dict(iter_namespace(store, namespace, not_before))
            log.debug(
                "LLM cache: loaded %d answers of namespace %s in %.2f s",
                len(rows),
                namespace[:12],
                time.perf_counter() - started,
            )
            self._namespaces[namespace] = rows
            return rows

    def put(self, namespace: str, key: str, model: str, row: CachedRow) -> None:
        """Remember an answer now; it reaches ClickHouse with the next batched flush."""
        rows = self._namespaces.setdefault(namespace, {})
        rows[key] = row
        with self._lock:
            buf = self._buffer
            buf["namespace"].append(namespace)
            buf["key"].append(key)
            buf["model"].append(model)
            buf["response"].append(row.response)
            buf["input_tokens"].append(row.input_tokens)
            buf["output_tokens"].append(row.output_tokens)
            buf["cost_usd"].append(row.cost_usd)
            buf["latency_ms"].append(row.latency_ms)
            buf["created_at"].append(datetime.now(UTC))
            due = len(buf["key"]) >= self.flush_rows or (
                time.monotonic() - self._last_flush >= self.flush_seconds
            )
        if due:
            self.flush()

    @property
    def pending(self) -> int:
        """Answers buffered but not yet written."""
        with self._lock:
            return len(self._buffer["key"])

    def flush(self) -> None:
        """Write the buffered answers in one insert (a failure is logged: only reuse is lost)."""
        with self._flush_lock:
            with self._lock:
                self._last_flush = time.monotonic()
                batch = self._buffer
                count = len(batch["key"])
                if not count:
                    return
                self._buffer = {name: [] for name in LLM_CACHE_COLUMNS}
            try:
                with self._connection() as store:
                    insert_rows(store, batch)
            except Exception as exc:  # noqa: BLE001 - losing cache rows must not fail traces
                log.warning(
                    "could not write %d LLM answers to llm_cache (%s); they will be asked "
                    "again on the next run",
                    count,
                    exc,
                )
                return
            self.rows_written += count
            self.inserts += 1

    def close(self) -> None:
        """Flush what is buffered and forget the loaded answers."""
        self.flush()
        with self._lock:
            self._table_ready = False
            self._namespaces.clear()
