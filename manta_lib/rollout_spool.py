"""The rollout spool: append-only JSON Lines shards that :class:`~manta_lib.RolloutLogger`
writes and a shipper process moves into the store.

A shard is ``<spool>/<time>-<pid>-<random>.jsonl``, one rollout per line in the OpenAI-messages
import format (``trace_id``, ``run_id``, ``step``, ``datapoint_id``, ``phase``, ``reward``,
``messages``, ``metadata``) plus an optional ``grader`` (``{"name", "criteria": {name:
value}}``, which becomes a ``grader`` span after the messages). The writer appends to
``<name>.jsonl.part`` holding an exclusive ``flock`` on it, and renames it to ``<name>.jsonl``
when it moves to a new shard; the lock goes with the writer's process, so a ``.part`` shard
that can be locked belongs to a writer that died and is shipped like a finished one. Shipping
imports a shard's complete lines (a killed writer's last line may be cut: it is skipped), then
deletes it; trace ids are fixed when a rollout is logged, so a shard shipped twice (a shipper
killed between the insert and the delete) is stored once.

``python -m manta_lib.rollout_shipper SPOOL`` is the shipper: it ships shards as they are
completed until its standard input closes (the logger closed, or its process died), then ships
what is left and exits. Records the importer refuses are appended to ``<spool>/rejected.jsonl``
with the reason; when the store cannot be opened (another process holds the embedded store),
shards stay and are sent by the next shipper.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SHARD_SUFFIX = ".jsonl"
PART_SUFFIX = ".jsonl.part"
REJECTED = "rejected.jsonl"
_POLL_SECONDS = 0.5


def shards(spool: Path) -> list[Path]:
    """The shard files of a spool, oldest first."""
    if not spool.is_dir():
        return []
    return sorted(
        p
        for p in spool.iterdir()
        if p.name.endswith((SHARD_SUFFIX, PART_SUFFIX)) and p.name != REJECTED
    )


@contextlib.contextmanager
def claimed(path: Path) -> Iterator[int | None]:
    """An open descriptor of a shard no writer holds (locked for this caller), else ``None``."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        yield None
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield None
            return
        if not path.exists():  # shipped and deleted by another shipper meanwhile
            yield None
            return
        yield fd
    finally:
        os.close(fd)


def complete_records(fd: int) -> tuple[list[Any], dict[int, list[str]]]:
    """The records of a shard's complete lines (a line cut by a crash is left out), and the
    reasons of lines that are not JSON (by record index; the record is the line's text)."""
    with os.fdopen(os.dup(fd), "rb") as handle:
        data = handle.read()
    end = data.rfind(b"\n")
    records: list[Any] = []
    bad: dict[int, list[str]] = {}
    for line in data[: end + 1].splitlines():
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except ValueError as exc:
            bad[len(records)] = [f"invalid JSON ({exc})"]
            records.append(line.decode(errors="replace"))
    return records, bad


def ship_once(spool: Path) -> int:
    """Import every complete shard into the store and delete it; the number of rollouts sent.

    Raises :class:`~manta_lib.errors.StoreUnavailableError` when the store cannot be opened
    (the shards stay).
    """
    from manta_lib.importers import import_records
    from manta_lib.settings import load_settings
    from manta_lib.store import Store

    ready = shards(spool)
    if not ready:
        return 0
    sent = 0
    store: Store | None = None
    try:
        for path in ready:
            with claimed(path) as fd:
                if fd is None:
                    continue
                records, bad = complete_records(fd)
                traces, refused = spool_traces(records)
                refused.update(bad)
                if traces:
                    if store is None:
                        store = Store.open(load_settings())
                    report = import_records(
                        [trace for _, trace in traces], store=store, format="manta"
                    )
                    sent += report.traces_loaded + report.traces_already_present
                    for error in report.errors:
                        index = traces[error.line - 1][0]
                        refused.setdefault(index, []).append(f"{error.field}: {error.reason}")
                if refused:
                    _reject(spool, records, refused)
                path.unlink()
    finally:
        if store is not None:
            store.close()
    return sent


def spool_traces(
    records: list[Any],
) -> tuple[list[tuple[int, dict[str, Any]]], dict[int, list[str]]]:
    """Spool records as trace objects ``(record index, trace)``, and the reasons of those that
    cannot be mapped (by record index)."""
    from manta_lib.importers.base import Hierarchy, Problems, canonical_json
    from manta_lib.importers.openai import rollout_trace

    hierarchy = Hierarchy()
    traces: list[tuple[int, dict[str, Any]]] = []
    refused: dict[int, list[str]] = {}
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            refused[index] = [f"expected a JSON object, got {type(record).__name__}"]
            continue
        grader = record.pop("grader", None)
        try:
            trace = rollout_trace(record, hierarchy, canonical_json(record).encode())
        except Problems as exc:
            refused[index] = [f"{field}: {reason}" for field, reason in exc.problems]
            continue
        finally:
            if grader is not None:
                record["grader"] = grader
        if isinstance(grader, dict):
            trace["spans"].append(_grader_span(trace, grader))
        traces.append((index, trace))
    return traces, refused


def _grader_span(trace: dict[str, Any], grader: dict[str, Any]) -> dict[str, Any]:
    criteria = []
    for name, value in (grader.get("criteria") or {}).items():
        if isinstance(value, bool):
            criteria.append({"name": name, "score": float(value), "passed": value})
        else:
            criteria.append({"name": name, "score": value, "passed": None})
    return {
        "span_id": f"{trace['trace_id']}:grader",
        "seq": len(trace["spans"]),
        "kind": "grader",
        "name": str(grader.get("name") or "reward"),
        "attributes": {"score": trace["score"], "criteria": criteria},
    }


def _reject(spool: Path, records: list[Any], reasons: dict[int, list[str]]) -> None:
    with (spool / REJECTED).open("a") as handle:
        for index, why in sorted(reasons.items()):
            handle.write(json.dumps({"reasons": why, "record": records[index]}) + "\n")
    log.error(
        "%d rollouts refused by the store's checks; kept with the reasons in %s",
        len(reasons),
        spool / REJECTED,
    )


def ship(spool: Path, stop: threading.Event) -> None:
    """Ship completed shards every half second until ``stop`` is set, then once more."""
    warned = False
    while True:
        stopping = stop.wait(_POLL_SECONDS)
        try:
            ship_once(spool)
            warned = False
        except Exception as exc:  # the store is busy or down: the spool keeps the rollouts
            if not warned:
                log.warning("rollouts stay in %s until the store can be written: %s", spool, exc)
                warned = True
            if stopping:
                return
        if stopping:
            return


def main(argv: list[str]) -> int:
    """The shipper process: ship until standard input closes."""
    logging.basicConfig(level=logging.WARNING, format="manta rollout shipper: %(message)s")
    spool = Path(argv[0])
    stop = threading.Event()

    def wait_for_eof() -> None:
        while sys.stdin.buffer.read(4096):
            pass
        stop.set()

    threading.Thread(target=wait_for_eof, daemon=True).start()
    ship(spool, stop)
    return 0
