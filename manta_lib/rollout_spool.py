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
with the reason. When the store cannot be opened (another process holds the embedded store)
and ``MANTA_COLLECTOR_URL`` is set, the shipper posts the shards to that ``manta collect``'s
``/v1/rollouts`` (:func:`post_once`) instead; otherwise they stay and are sent by the next
shipper.
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
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from manta_lib.store import Store

log = logging.getLogger(__name__)

SHARD_SUFFIX = ".jsonl"
PART_SUFFIX = ".jsonl.part"
REJECTED = "rejected.jsonl"
_POLL_SECONDS = 0.5
_LOCK_WAIT_WITH_COLLECTOR = 1.0


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


def complete_lines(fd: int) -> list[bytes]:
    """The non-blank complete lines of a shard (a line cut by a crash is left out)."""
    with os.fdopen(os.dup(fd), "rb") as handle:
        data = handle.read()
    end = data.rfind(b"\n")
    return [line for line in data[: end + 1].splitlines() if line.strip()]


def parse_lines(lines: list[bytes]) -> tuple[list[Any], dict[int, list[str]]]:
    """The records of spool lines, and the reasons of lines that are not JSON (by record
    index; the record is then the line's text)."""
    records: list[Any] = []
    bad: dict[int, list[str]] = {}
    for line in lines:
        try:
            records.append(json.loads(line))
        except ValueError as exc:
            bad[len(records)] = [f"invalid JSON ({exc})"]
            records.append(line.decode(errors="replace"))
    return records, bad


def ship_once(spool: Path, store: Store | None = None, *, lock_timeout: float | None = None) -> int:
    """Import every complete shard into the store and delete it; the number of rollouts sent.

    ``store``: an open store to write to (kept open); else the store of the settings is opened
    when a shard needs it (waiting at most ``lock_timeout`` seconds for an embedded store
    another process holds, ``MANTA_LOCK_TIMEOUT_S`` by default) and closed at the end.
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
    opened: Store | None = None
    try:
        for path in ready:
            with claimed(path) as fd:
                if fd is None:
                    continue
                records, bad = parse_lines(complete_lines(fd))
                traces, refused = spool_traces(records)
                refused.update(bad)
                if traces:
                    if store is None:
                        overrides = {} if lock_timeout is None else {"lock_timeout_s": lock_timeout}
                        store = opened = Store.open(load_settings(**overrides))
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
        if opened is not None:
            opened.close()
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


ROLLOUTS_PATH = "/v1/rollouts"
_CHUNK_BYTES = 4 << 20  # lines per request (the collector refuses bodies past its limit)


class CollectorRefusedError(Exception):
    """The collector answered a shard with a status that retrying will not change (a wrong
    token, no rollout endpoint, a body it cannot read): the shards stay."""


class _Transient(Exception):
    """A ``5xx`` or ``429``: worth retrying."""


def rollouts_url(base: str) -> str:
    """The collector's rollout endpoint for ``MANTA_COLLECTOR_URL`` (its base address)."""
    base = base.rstrip("/")
    return base if base.endswith(ROLLOUTS_PATH) else base + ROLLOUTS_PATH


def post_once(spool: Path, url: str, token: str | None = None) -> int:
    """Send every complete shard to a ``manta collect`` rollout endpoint; the number of
    rollouts it accepted.

    A shard is deleted once each of its lines got a ``2xx``; the lines the collector refused
    go to ``rejected.jsonl`` with its reasons. Connection errors, ``5xx`` and ``429`` are
    retried a few times (a bounded wait), then raised with the shard kept; other statuses
    raise :class:`CollectorRefusedError` (shards kept).
    """
    import httpx

    ready = shards(spool)
    if not ready:
        return 0
    headers = {"content-type": "application/x-ndjson", "content-encoding": "gzip"}
    if token:
        headers["authorization"] = f"Bearer {token}"
    sent = 0
    with httpx.Client(headers=headers, timeout=httpx.Timeout(60.0, connect=5.0)) as client:
        for path in ready:
            with claimed(path) as fd:
                if fd is None:
                    continue
                lines = complete_lines(fd)
                records, refused = parse_lines(lines)
                good = [n for n in range(len(lines)) if n not in refused]
                for chunk in _chunks(good, lines):
                    accepted, reasons = _post_chunk(client, url, chunk, lines)
                    sent += accepted
                    refused.update(reasons)
                if refused:
                    _reject(spool, records, refused)
                path.unlink()
    return sent


def _chunks(indexes: list[int], lines: list[bytes]) -> Iterator[list[int]]:
    chunk: list[int] = []
    size = 0
    for index in indexes:
        if chunk and size + len(lines[index]) + 1 > _CHUNK_BYTES:
            yield chunk
            chunk, size = [], 0
        chunk.append(index)
        size += len(lines[index]) + 1
    if chunk:
        yield chunk


def _post_chunk(
    client: Any, url: str, chunk: list[int], lines: list[bytes]
) -> tuple[int, dict[int, list[str]]]:
    """POST the lines ``chunk`` (indexes into ``lines``); ``(accepted, reasons by index)``.
    A body over the collector's limit is sent in halves; a single line over it is refused."""
    import gzip

    body = gzip.compress(b"".join(lines[n] + b"\n" for n in chunk), compresslevel=1)
    response = _send(client, url, body)
    if response.status_code == 413:
        if len(chunk) == 1:
            return 0, {chunk[0]: [f"refused by the collector: {_message(response)}"]}
        half = len(chunk) // 2
        first = _post_chunk(client, url, chunk[:half], lines)
        second = _post_chunk(client, url, chunk[half:], lines)
        return first[0] + second[0], {**first[1], **second[1]}
    if not 200 <= response.status_code < 300:
        raise CollectorRefusedError(
            f"the collector at {url} answered {response.status_code}: {_message(response)}"
        )
    answer = response.json()
    reasons = {chunk[int(r["line"]) - 1]: list(r["reasons"]) for r in answer.get("rejections", [])}
    accepted = int(answer.get("accepted", 0))
    if accepted + len(reasons) != len(chunk):  # the shard is deleted only if all are answered
        raise CollectorRefusedError(
            f"the collector at {url} answered for {accepted + len(reasons)} of {len(chunk)} "
            "rollouts sent; is it a manta collect?"
        )
    return accepted, reasons


def _send(client: Any, url: str, body: bytes) -> Any:
    import httpx
    from tenacity import (
        Retrying,
        retry_if_exception_type,
        stop_after_attempt,
        wait_exponential,
    )

    for attempt in Retrying(
        retry=retry_if_exception_type((httpx.TransportError, _Transient)),
        stop=stop_after_attempt(4),
        wait=wait_exponential(multiplier=0.5, max=4),
        reraise=True,
    ):
        with attempt:
            response = client.post(url, content=body)
            if response.status_code == 429 or response.status_code >= 500:
                raise _Transient(
                    f"the collector at {url} answered {response.status_code}: {_message(response)}"
                )
            return response
    raise AssertionError("unreachable")  # pragma: no cover


def _message(response: Any) -> str:
    try:
        return str(response.json().get("message", response.text))
    except ValueError:
        return str(response.text[:500])


def ship(spool: Path, stop: threading.Event) -> None:
    """Ship completed shards every half second until ``stop`` is set, then once more.

    When the store cannot be opened (another process holds the embedded store) and
    ``MANTA_COLLECTOR_URL`` is set, the shards go to that ``manta collect`` instead."""
    from manta_lib.errors import StoreUnavailableError
    from manta_lib.settings import load_settings

    url: str | None = None
    token: str | None = None
    lock_timeout: float | None = None
    try:
        settings = load_settings()
        if settings.collector_url:
            url = rollouts_url(settings.collector_url)
            secret = settings.collector_token
            token = secret.get_secret_value() if secret is not None else None
            # with a collector to fall back on, a held store is not worth a long wait
            lock_timeout = min(settings.lock_timeout_s, _LOCK_WAIT_WITH_COLLECTOR)
    except Exception as exc:  # a bad setting: ship to the store only, and say why
        log.error("no collector fallback: %s", exc)
    warned = False
    while True:
        stopping = stop.wait(_POLL_SECONDS)
        try:
            try:
                ship_once(spool, lock_timeout=lock_timeout)
            except StoreUnavailableError:
                if url is None:
                    raise
                post_once(spool, url, token)
            warned = False
        except Exception as exc:  # the store is busy or down: the spool keeps the rollouts
            if not warned:
                log.warning(
                    "rollouts stay in %s until the store%s can take them: %s",
                    spool,
                    " or the collector" if url else "",
                    exc,
                )
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
