"""Which traces were being mapped when a process died, and the poison-pill rule.

A persisted map keeps a small journal per process under ``<MANTA_DATA_DIR>/crash_journal``:
a memory-mapped file with one slot per running map call holding the id of the trace being
mapped (copied into the mapped page before the call, cleared after: no system call per
trace). The file outlives a process that dies in any way (a native crash, ``os._exit``,
SIGKILL, the OOM killer); a clean end (success, an exception, Ctrl-C) removes it.

The next map of the same scope (store, database, project, judge, judge version, run, shards)
reads the journals of dead processes and counts, per trace, the deaths it was in flight for.
A native crash handled by :mod:`manta_lib.pipeline.crash_guard` names the one trace whose map
call crashed, so only that trace is counted; a silent death counts every trace in flight.
Those suspects are then mapped one at a time before anything else, so a second death names
one trace for sure; a trace counted twice is not mapped again: it is recorded as that trace's
error (:data:`POISON_DEATHS`) and the run completes the rest.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import mmap
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from manta_lib.models import EntityLevel
from manta_lib.pipeline.planner import StreamedTraces
from manta_lib.pipeline.pool import IsolatedPool, ItemResult
from manta_lib.pipeline.resume import completed_traces
from manta_lib.settings import MantaSettings
from manta_lib.store.metadata import utc_now

if TYPE_CHECKING:
    from manta_lib.context import TraceContext
    from manta_lib.pipeline.job import MapJob
    from manta_lib.service import MantaService
    from manta_lib.store.metadata import MetadataWriter

log = logging.getLogger(__name__)

#: Deaths in flight after which a trace is recorded as failed instead of mapped again.
POISON_DEATHS = 2
#: Bytes per slot: a trace id of up to SLOT_BYTES - 1 bytes (UTF-8) and a NUL.
SLOT_BYTES = 256
_HEADER_BYTES = 1024  # byte 0: 1 when a call ran without a slot; then the header JSON
_DIR = "crash_journal"
SILENT_DEATH = (
    "the process ended while this trace was being mapped, without an error (os._exit, "
    "SIGKILL, the out-of-memory killer, ...)"
)

T = TypeVar("T")


class HasTraceId(Protocol):
    @property
    def trace_id(self) -> str: ...


Item = TypeVar("Item", bound=HasTraceId)


@dataclass(frozen=True)
class JournalKey:
    """The scope a journal belongs to: a later map of the same scope reads it."""

    database: str
    project_id: str
    judge: str
    judge_version: str
    run_id: str
    shards: tuple[int, ...] | None
    shard_count: int

    def digest(self) -> str:
        text = json.dumps([*self.__dict__.values()], default=list)
        return hashlib.sha256(text.encode()).hexdigest()[:24]


@dataclass
class Suspect:
    """A trace that was in flight when a process died: how often, and the last cause."""

    trace_id: str
    deaths: int
    cause: str

    @property
    def poisoned(self) -> bool:
        return self.deaths >= POISON_DEATHS

    def error(self) -> str:
        """The error recorded for a poisoned trace."""
        return (
            f"ProcessCrash: the process died {self.deaths} times while this trace was being "
            f"mapped (last: {self.cause}); it is recorded as this trace's error so the rest of "
            f"the run completes. retry_errors=True maps it again (a changed map function is a "
            f"new judge version, which maps every trace)"
        )


class Watched(Generic[Item, T]):
    """A map function that marks the trace it maps in a journal slot while it runs.

    :mod:`manta_lib.pipeline.crash_guard` finds this call's frame on a crashing thread to
    name the trace (``item``) and the journal (``self.journal``).
    """

    def __init__(self, fn: Callable[[Item], T], journal: CrashJournal | None, label: str) -> None:
        self.fn = fn
        self.journal = journal
        self.label = label
        self._mm = journal.mm if journal is not None else None
        self._free = journal.free if journal is not None else []

    def __call__(self, item: Item) -> T:
        mm = self._mm
        if mm is None:
            return self.fn(item)
        free = self._free
        try:
            offset = free.pop()  # atomic: no lock
        except IndexError:
            mm[0] = 1  # more calls than slots: some in-flight trace is not recorded
            return self.fn(item)
        data = item.trace_id.encode()
        if len(data) < SLOT_BYTES:
            mm[offset : offset + len(data) + 1] = data + b"\0"
        else:
            mm[0] = 1
        try:
            return self.fn(item)
        finally:
            mm[offset] = 0
            free.append(offset)


class CrashJournal:
    """This process's journal of one scope, and the suspects found in dead processes' ones."""

    def __init__(self, directory: Path, key: JournalKey, capacity: int) -> None:
        self.directory = directory
        self.key = key
        self.prefix = key.digest()
        self.path = directory / f"{self.prefix}.{os.getpid()}.{id(self):x}.inflight"
        size = _HEADER_BYTES + capacity * SLOT_BYTES
        header = json.dumps(
            {"pid": os.getpid(), "started": utc_now().isoformat(), "key": key.__dict__},
            default=list,
        ).encode()[: _HEADER_BYTES - 2]
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.ftruncate(fd, size)
            self.mm = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        self.mm[1 : 1 + len(header)] = header
        self.free = [_HEADER_BYTES + i * SLOT_BYTES for i in range(capacity)]
        self.suspects: dict[str, Suspect] = {}

    @classmethod
    def open(cls, settings: MantaSettings, key: JournalKey, capacity: int) -> CrashJournal | None:
        """Start this process's journal for ``key`` after counting the deaths recorded by
        dead processes; None (and a warning) when the data directory cannot hold it."""
        directory = settings.data_dir / _DIR
        try:
            directory.mkdir(parents=True, exist_ok=True)
            journal = cls(directory, key, capacity)
            journal.suspects = journal._collect_deaths()
        except OSError as exc:
            log.warning(
                "no crash journal in %s (%s): a map that ends the process will not be named "
                "on the next run",
                directory,
                exc,
            )
            return None
        return journal

    def watch(self, fn: Callable[[Item], T], label: str) -> Watched[Item, T]:
        return Watched(fn, self, label)

    def record_crash(self, trace_id: str | None, cause: str) -> None:
        """Say which trace's map call crashed the process (called on the crashing thread)."""
        self._crash_path().write_text(json.dumps({"trace_id": trace_id, "cause": cause}))

    def settle(self, trace_ids: Iterable[str]) -> None:
        """Forget the deaths of ``trace_ids`` (they now have a stored result)."""
        settled = set(trace_ids)
        if not settled:
            return
        with self._locked():
            deaths = self._read_deaths()
            for trace_id in settled:
                deaths.pop(trace_id, None)
                self.suspects.pop(trace_id, None)
            self._write_deaths(deaths)

    def close(self) -> None:
        """End of a map that did not kill the process: remove this process's journal (the
        mapping stays valid for a timed-out call still running on an abandoned thread)."""
        for path in (self.path, self._crash_path()):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def _crash_path(self) -> Path:
        return self.path.with_suffix(".crash")

    def _collect_deaths(self) -> dict[str, Suspect]:
        """Fold the journals of dead processes of this scope into the deaths file."""
        with self._locked():
            deaths = self._read_deaths()
            found = False
            for path in self.directory.glob(f"{self.prefix}.*.inflight"):
                pid = _pid_of(path)
                if pid is None or pid == os.getpid() or _alive(pid):
                    continue
                found = True
                in_flight, incomplete = _read_slots(path)
                crash = _read_crash(path.with_suffix(".crash"))
                if crash is not None and crash.get("trace_id"):
                    counted = {str(crash["trace_id"]): str(crash.get("cause") or "a crash")}
                else:
                    cause = str(crash["cause"]) if crash else SILENT_DEATH
                    counted = dict.fromkeys(in_flight, cause)
                if incomplete:
                    log.warning(
                        "process %d died with more traces in flight than its journal holds: "
                        "only %d of them are counted",
                        pid,
                        len(in_flight),
                    )
                for trace_id, cause in counted.items():
                    entry = deaths.setdefault(trace_id, {"deaths": 0, "cause": cause})
                    entry["deaths"] = int(entry["deaths"]) + 1
                    entry["cause"] = cause
                for done in (path, path.with_suffix(".crash")):
                    with contextlib.suppress(FileNotFoundError):
                        done.unlink()
            if found:
                self._write_deaths(deaths)
        return {
            tid: Suspect(tid, int(entry["deaths"]), str(entry["cause"]))
            for tid, entry in deaths.items()
        }

    def _deaths_path(self) -> Path:
        return self.directory / f"{self.prefix}.deaths.json"

    def _read_deaths(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads(self._deaths_path().read_text())
        except FileNotFoundError:
            return {}
        except ValueError:
            log.warning("ignoring the unreadable crash journal %s", self._deaths_path())
            return {}
        traces = data.get("traces") if isinstance(data, dict) else None
        return traces if isinstance(traces, dict) else {}

    def _write_deaths(self, deaths: dict[str, dict[str, Any]]) -> None:
        path = self._deaths_path()
        if not deaths:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            return
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps({"key": self.key.__dict__, "traces": deaths}, default=list))
        os.replace(temporary, path)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """One process at a time updates the deaths file of a scope."""
        fd = os.open(self.directory / f"{self.prefix}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


def _pid_of(path: Path) -> int | None:
    parts = path.name.split(".")
    return int(parts[1]) if len(parts) == 4 and parts[1].isdigit() else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_slots(path: Path) -> tuple[list[str], bool]:
    """The trace ids in the slots of a journal, and whether some in-flight one is missing."""
    data = path.read_bytes()
    ids = []
    for start in range(_HEADER_BYTES, len(data), SLOT_BYTES):
        raw = data[start : start + SLOT_BYTES].split(b"\0", 1)[0]
        if raw:
            ids.append(raw.decode(errors="replace"))
    return ids, bool(data[:1] == b"\x01")


def _read_crash(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None
    return data if isinstance(data, dict) else None


@contextlib.contextmanager
def journaled(
    job: MapJob, pool: IsolatedPool, fn: Callable[[TraceContext], Any], label: str
) -> Iterator[Watched[TraceContext, Any]]:
    """``fn`` watched, with this process's journal of the job's scope when the job persists
    (removed when the block ends: only a process that dies leaves its journal behind)."""
    journal = open_journal(job, pool) if job.outputs.writes else None
    try:
        yield Watched(fn, journal, label)
    finally:
        if journal is not None:
            journal.close()


def open_journal(job: MapJob, pool: IsolatedPool) -> CrashJournal | None:
    """This process's journal for a persisted map job, with the suspects of its scope."""
    scope = job.scope
    key = JournalKey(
        database=f"{job.settings.clickhouse_dsn}#{job.settings.database}",
        project_id=job.pipeline.project_id,
        judge=job.pipeline.judge,
        judge_version=job.judge_version,
        run_id=scope.run_id,
        shards=tuple(scope.shards) if scope.shards is not None else None,
        shard_count=scope.shard_count,
    )
    # Running calls: the workers, the timed-out calls left running, one spare.
    return CrashJournal.open(job.settings, key, pool.max_workers + pool.abandoned_limit + 1)


def map_suspects(
    job: MapJob,
    fn: Watched[TraceContext, Any],
    service: MantaService,
    on_result: Callable[[ItemResult[TraceContext]], None],
    hand_on: Callable[[], None],
    writer: MetadataWriter | None,
) -> set[str]:
    """Map the job's suspects (traces in flight when a process died) one at a time, each
    written before the next starts; a poisoned one gets its error without being mapped.
    Returns the suspects' ids (the rest of the job skips them)."""
    journal = fn.journal
    if journal is None or not journal.suspects:
        return set()
    run_id = job.scope.run_id
    within = None if isinstance(job.traces, StreamedTraces) else set(job.traces.ids)
    ids = sorted(t for t in journal.suspects if within is None or t in within)
    if not ids:
        return set()
    check = job.store
    assert check is not None

    def stored() -> set[str]:
        retry = job.options.retry_errors
        return completed_traces(check, job.result_key, ids, retry_errors=retry)

    done = stored()
    journal.settle(done)
    suspects = {t: journal.suspects[t] for t in ids if t not in done}
    if not suspects:
        return set()
    log.warning(
        "%d trace(s) of %s were being mapped when an earlier process died (%s); they are "
        "mapped one at a time first: %s",
        len(suspects),
        job.scope.describe(),
        next(iter(suspects.values())).cause,
        ", ".join(list(suspects)[:5]) + (" ..." if len(suspects) > 5 else ""),
    )
    spec = job.pipeline.level(EntityLevel.TRACE)
    alone = IsolatedPool(1, timeout_s=job.options.timeout_s, chunked=not spec.uses_llm)
    contexts = service.load_contexts(
        service.get_traces(run_id, trace_ids=list(suspects), order_by="trace_id")
    )
    for context in contexts:
        if job.tally.stop.is_set():
            break
        suspect = suspects[context.trace_id]
        if suspect.poisoned:
            log.error(
                "trace %s of %s ended the process %d times (last: %s): recorded as its error "
                "and not mapped again (retry_errors=True maps it again)",
                suspect.trace_id,
                run_id,
                suspect.deaths,
                suspect.cause,
            )
            on_result(ItemResult(context, None, suspect.error(), 0.0))
        else:
            alone.run(fn, [context], spec.schema, on_result, stop=job.tally.stop, tick=hand_on)
        hand_on()
        if writer is not None:
            writer.flush()
    journal.settle(stored())
    return set(suspects)
