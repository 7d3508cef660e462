"""The collector's spool: every accepted request, on disk before its 2xx.

An append-only log in numbered segment files under one directory. A request body is appended
(one ``os.write`` of a small header and the body) and made durable with ``fsync`` before the
collector answers; concurrent requests share one ``fsync`` (group commit: a request whose
record an earlier ``fsync`` already covered does not wait for another). The collector rotates
to a new segment now and then and deletes a closed segment once every trace with spans in it
is written to the store. On start the segments left by a previous process (killed, or stopped
while the store was unavailable) are read back first: every acknowledged span is written,
and :mod:`manta_lib.importers.otel_join` makes the replay of an already written trace a no-op.

A record: ``MANTA1`` magic, the body's kind (1 protobuf, 2 JSON), its length and CRC-32, then
the body. A record cut short by a crash (its request was never acknowledged) ends the replay
of that segment.
"""

from __future__ import annotations

import fcntl
import logging
import os
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

from manta_lib.errors import ConfigError

log = logging.getLogger(__name__)

__all__ = ["Spool"]

_MAGIC = b"MANTA1"
_HEADER = struct.Struct(">6sBII")  # magic, kind, length, crc32
_SUFFIX = ".spool"


class Spool:
    """The append-only request log of one collector (one process per directory)."""

    def __init__(self, directory: Path, *, segment_bytes: int = 64 << 20) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.segment_bytes = segment_bytes
        self._lock_handle = (directory / "lock").open("a")
        try:
            fcntl.flock(self._lock_handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock_handle.close()
            raise ConfigError(
                f"another collector uses the spool {directory}: stop it, or give this one "
                "another MANTA_DATA_DIR"
            ) from None
        self.lock = threading.Lock()  # an append and its buffer insert happen under it
        self._sync_lock = threading.Lock()
        numbers = self._segments()
        self._left = numbers  # segments of an earlier process, replayed then released
        self.segment = (numbers[-1] + 1) if numbers else 1
        self._fd = self._open(self.segment)
        self._size = 0
        self._opened = time.monotonic()
        self._appended = 0  # records appended (all segments)
        self._synced = 0  # records known durable

    def _segments(self) -> list[int]:
        return sorted(int(p.stem) for p in self.directory.glob(f"*{_SUFFIX}") if p.stem.isdigit())

    def _path(self, number: int) -> Path:
        return self.directory / f"{number:012d}{_SUFFIX}"

    def _open(self, number: int) -> int:
        fd = os.open(self._path(number), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        dir_fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # the new file's name is durable too
        finally:
            os.close(dir_fd)
        return fd

    def replay(self) -> Iterator[tuple[int, int, bytes]]:
        """``(segment, kind, body)`` of every record an earlier process left."""
        for number in self._left:
            data = self._path(number).read_bytes()
            offset = 0
            while offset < len(data):
                header = data[offset : offset + _HEADER.size]
                if len(header) < _HEADER.size:
                    break
                magic, kind, length, crc = _HEADER.unpack(header)
                body = data[offset + _HEADER.size : offset + _HEADER.size + length]
                if magic != _MAGIC or len(body) < length or zlib.crc32(body) != crc:
                    break
                yield number, kind, body
                offset += _HEADER.size + length
            if offset < len(data):
                log.warning(
                    "spool %s: %d bytes after the last whole record ignored (a request cut "
                    "short by a crash, never acknowledged)",
                    self._path(number),
                    len(data) - offset,
                )

    def append(self, kind: int, body: bytes) -> int:
        """Append one record (call with :attr:`lock` held); returns its number for :meth:`sync`."""
        record = _HEADER.pack(_MAGIC, kind, len(body), zlib.crc32(body)) + body
        view = memoryview(record)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        self._size += len(record)
        self._appended += 1
        return self._appended

    def sync(self, number: int) -> None:
        """Return once record ``number`` is on disk (one fsync may cover many records)."""
        if self._synced >= number:
            return
        with self._sync_lock:
            if self._synced >= number:
                return
            target = self._appended
            os.fsync(self._fd)
            self._synced = target

    def rotate_if_due(self, max_age: float) -> None:
        """Start a new segment when the current one is big or older than ``max_age`` seconds."""
        if not self._size:
            return
        if self._size < self.segment_bytes and time.monotonic() - self._opened < max_age:
            return
        with self.lock, self._sync_lock:
            os.fsync(self._fd)
            os.close(self._fd)
            self._synced = self._appended
            self.segment += 1
            self._fd = self._open(self.segment)
            self._size = 0
            self._opened = time.monotonic()

    def release(self, oldest_needed: int | None) -> None:
        """Delete the closed segments before ``oldest_needed`` (all closed ones with None)."""
        current = self.segment
        limit = current if oldest_needed is None else min(oldest_needed, current)
        for number in self._segments():
            if number < limit:
                self._path(number).unlink(missing_ok=True)
        self._left = [n for n in self._left if n >= limit]

    def close(self) -> None:
        os.close(self._fd)
        if not self._size:
            self._path(self.segment).unlink(missing_ok=True)
        self._lock_handle.close()
