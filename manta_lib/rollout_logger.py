"""``RolloutLogger``: log rollouts from any training loop without slowing it down.

Example::

    from manta import RolloutLogger

    with RolloutLogger(run_id="grpo_v3", project_id="math") as log:
        for step in range(steps):
            for rollout in batch:
                log.rollout(step=step, datapoint=rollout.problem_id, messages=rollout.messages,
                            score=rollout.reward, meta={"temperature": 0.7})

``rollout()`` only queues the rollout (a copy of the message list, not of the messages: do
not change a logged message afterwards). A writer thread appends the queue to the spool
every ``flush_interval`` seconds (JSON Lines shards, ``fsync`` after each batch) and starts a
new shard every ``shard_seconds``; a shipper process (``python -m manta_lib.rollout_shipper``)
imports finished shards into the store and deletes them. So a trainer killed at any moment
loses only what it logged in the last ``flush_interval`` seconds; the shards it left are
shipped by its shipper, which outlives it, or by the next logger that starts on the same
spool. When another process holds the embedded store (``manta collect``, the explorer), the
shipper sends the shards to the ``manta collect`` at ``collector_url`` (or
``MANTA_COLLECTOR_URL``), which stores them; without one, or when the store cannot be
written at all (the server is down), the shards wait in the spool. Nothing here raises into
the training loop: a rollout that cannot be serialized is counted in
:attr:`RolloutLogger.dropped` and logged.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import fcntl
import itertools
import json
import logging
import os
import subprocess
import sys
import threading
import time
import uuid
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlparse

from manta_lib.errors import ValidationError
from manta_lib.rollout_spool import PART_SUFFIX, SHARD_SUFFIX

log = logging.getLogger(__name__)

__all__ = ["RolloutLogger"]

_Queued = tuple[str, Any, Any, list[Any], Any, Any, Any, Any, str]


class RolloutLogger:
    """Log rollouts to the store through a crash-safe spool; a context manager.

    ``run_id`` and ``project_id`` go on every rollout; ``phase`` is the default phase
    (``train``). ``spool_dir`` defaults to ``$MANTA_DATA_DIR/rollout_spool``. ``ship=False``
    only writes the spool (import it later with ``manta import --format openai``).
    ``close_timeout`` bounds how long leaving the ``with`` block waits for the shipper to
    store the last rollouts (it goes on in the background after that). ``collector_url``
    (default ``MANTA_COLLECTOR_URL``) and ``collector_token`` (``MANTA_COLLECTOR_TOKEN``): the
    ``manta collect`` the shipper sends to while another process holds the store.
    """

    def __init__(
        self,
        run_id: str,
        project_id: str = "",
        *,
        phase: str = "train",
        spool_dir: str | Path | None = None,
        ship: bool = True,
        flush_interval: float = 0.2,
        shard_seconds: float = 1.0,
        close_timeout: float = 60.0,
        collector_url: str | None = None,
        collector_token: str | None = None,
    ) -> None:
        if not isinstance(run_id, str) or not run_id:
            raise ValidationError(
                f"RolloutLogger: run_id must be a non-empty string, got {run_id!r}"
            )
        if not 0 < flush_interval <= 1:
            raise ValidationError(
                f"RolloutLogger: flush_interval must be in (0, 1] seconds, got {flush_interval!r}"
            )
        self.run_id = run_id
        self.project_id = project_id
        self.phase = phase
        if spool_dir is None:
            from manta_lib.settings import load_settings

            spool_dir = load_settings().data_dir / "rollout_spool"
        self.spool_dir = Path(spool_dir)
        self.ship = ship
        self.flush_interval = flush_interval
        self.shard_seconds = shard_seconds
        self.close_timeout = close_timeout
        self._shipper_env: dict[str, str] = {}
        if collector_url is not None:
            parsed = urlparse(collector_url)
            if parsed.scheme not in ("http", "https") or not parsed.hostname:
                raise ValidationError(
                    f"RolloutLogger: collector_url must be the http(s):// address `manta "
                    f"collect` serves (e.g. http://127.0.0.1:4318), got {collector_url!r}"
                )
            self._shipper_env["MANTA_COLLECTOR_URL"] = collector_url
        if collector_token is not None:
            self._shipper_env["MANTA_COLLECTOR_TOKEN"] = collector_token
        self.dropped = 0
        """Rollouts that could not be serialized (each logged as an error)."""
        self._prefix = f"rl_{uuid.uuid4().hex[:12]}_"
        self._counter = itertools.count()
        self._queue: collections.deque[_Queued] = collections.deque()
        self._written = 0
        self._written_cond = threading.Condition()
        self._wake = threading.Event()
        self._closing = False
        self._thread: threading.Thread | None = None
        self._shipper: subprocess.Popen[bytes] | None = None
        self._shard: IO[bytes] | None = None
        self._shard_path: Path | None = None
        self._shard_opened = 0.0

    # ---- the training loop's side --------------------------------------------------------

    def rollout(
        self,
        *,
        step: int,
        messages: Sequence[Any],
        datapoint: str = "",
        score: float | None = None,
        meta: dict[str, Any] | None = None,
        phase: str | None = None,
        trace_id: str | None = None,
        criteria: dict[str, Any] | None = None,
        grader: str = "reward",
    ) -> str:
        """Queue one rollout (OpenAI-style ``messages``); returns its trace id. Never blocks.

        ``criteria`` (name -> number, boolean or null, e.g. one reward per reward function)
        add a ``grader`` span named ``grader`` holding ``score`` and one criterion each.
        """
        tid = trace_id or f"{self._prefix}{next(self._counter)}"
        self._queue.append(
            (tid, step, datapoint, list(messages), score, meta, phase, criteria, grader)
        )
        return tid

    @property
    def logged(self) -> int:
        """Rollouts passed to :meth:`rollout` so far."""
        return len(self._queue) + self._written + self.dropped

    @property
    def shipper_pid(self) -> int | None:
        """The process id of the shipper (``None`` with ``ship=False`` or before start)."""
        return self._shipper.pid if self._shipper is not None else None

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every rollout logged so far is on disk (fsynced); False on timeout."""
        target = self.logged
        self._wake.set()
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._written_cond:
            while self._written + self.dropped < target:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._written_cond.wait(left if left is not None else 0.5)
        return True

    # ---- lifecycle ----------------------------------------------------------------------

    def start(self) -> RolloutLogger:
        """Start the writer thread and the shipper (``with`` does this)."""
        if self._thread is not None:
            return self
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        if self.ship:
            self._shipper = subprocess.Popen(
                [sys.executable, "-m", "manta_lib.rollout_shipper", str(self.spool_dir)],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                env={**os.environ, **self._shipper_env},  # a token stays out of the argv
                start_new_session=True,  # Ctrl-C on the trainer leaves it to drain the spool
            )
        self._thread = threading.Thread(target=self._run, name="manta-rollout-writer", daemon=True)
        self._thread.start()
        atexit.register(self.close)
        logger = weakref.ref(self)

        def in_forked_child() -> None:
            alive = logger()
            if alive is not None:
                alive._forget_after_fork()

        os.register_at_fork(after_in_child=in_forked_child)
        return self

    def _forget_after_fork(self) -> None:
        """In a forked child (a data loader worker): let go of the parent's shard and shipper
        pipe, whose copies would keep the shard locked and the shipper waiting after the
        parent is gone; the child's logger stays inert."""
        for handle in (self._shard, self._shipper.stdin if self._shipper else None):
            if handle is not None:
                # /dev/null in place of the inherited descriptor: the copy is let go, and the
                # file object still owns a descriptor to close (or flush into) later
                with contextlib.suppress(OSError):
                    null = os.open(os.devnull, os.O_RDWR)
                    os.dup2(null, handle.fileno())
                    os.close(null)
        self._closing = True
        atexit.unregister(self.close)

    def close(self) -> None:
        """Write what is queued, finish the shard, let the shipper store it (bounded wait).

        The logger can be started again afterwards."""
        if self._thread is None or self._closing:
            return
        self._closing = True
        self._wake.set()
        self._thread.join()
        atexit.unregister(self.close)
        shipper = self._shipper
        if shipper is not None and shipper.stdin is not None:
            shipper.stdin.close()  # the shipper's signal: ship what is left, then exit
            try:
                shipper.wait(self.close_timeout)
            except subprocess.TimeoutExpired:
                log.warning(
                    "the rollout shipper is still storing rollouts after %.0f s; it goes on in "
                    "the background (pid %d)",
                    self.close_timeout,
                    shipper.pid,
                )
        # closed: a later start() (a trainer's second train()) starts afresh
        self._thread = None
        self._shipper = None
        self._closing = False

    def __enter__(self) -> RolloutLogger:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- the writer thread ----------------------------------------------------------------

    def _run(self) -> None:
        while True:
            self._wake.wait(self.flush_interval)
            self._wake.clear()
            closing = self._closing
            try:
                self._write_queued()
                if self._shard is not None and (
                    closing or time.monotonic() - self._shard_opened >= self.shard_seconds
                ):
                    self._finish_shard()
            except Exception:  # a full disk must not take the training loop down
                log.exception("rollouts could not be written to the spool %s", self.spool_dir)
            if closing and not self._queue:
                return

    def _write_queued(self) -> None:
        queue = self._queue
        if not queue:
            return
        lines: list[str] = []
        dropped = 0
        encode = _ENCODER.encode
        while queue:
            tid, step, datapoint, messages, score, meta, phase, criteria, grader = queue.popleft()
            record = {
                "trace_id": tid,
                "run_id": self.run_id,
                "step": step,
                "datapoint_id": datapoint,
                "phase": phase or self.phase,
                "reward": score,
                "messages": messages,
                "metadata": meta or {},
            }
            if self.project_id:
                record["project_id"] = self.project_id
            if criteria is not None:
                record["grader"] = {"name": grader, "criteria": criteria}
            try:
                lines.append(encode(record))
            except (TypeError, ValueError) as exc:
                dropped += 1
                log.error("rollout %s (step %r) not logged: %s", tid, step, exc)
        if lines:
            handle = self._shard or self._open_shard()
            handle.write(("\n".join(lines) + "\n").encode())
            handle.flush()
            os.fsync(handle.fileno())
        with self._written_cond:
            self._written += len(lines)
            self.dropped += dropped
            self._written_cond.notify_all()

    def _open_shard(self) -> IO[bytes]:
        name = f"{time.time_ns():020d}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        staging = self.spool_dir / f"{name}.new"
        handle = staging.open("xb")
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        # only a locked shard gets a name the shipper looks at
        self._shard_path = self.spool_dir / f"{name}{PART_SUFFIX}"
        os.rename(staging, self._shard_path)
        self._shard = handle
        self._shard_opened = time.monotonic()
        return handle

    def _finish_shard(self) -> None:
        handle, path = self._shard, self._shard_path
        assert handle is not None and path is not None
        handle.flush()
        os.fsync(handle.fileno())
        os.rename(path, path.with_name(path.name[: -len(PART_SUFFIX)] + SHARD_SUFFIX))
        handle.close()
        self._shard = None
        self._shard_path = None


def _plain(value: Any) -> Any:
    """JSON for what training code holds: numpy and torch scalars/arrays, pydantic models."""
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON-serializable")


# one encoder: json.dumps with options builds a new one per call
_ENCODER = json.JSONEncoder(ensure_ascii=False, default=_plain)
