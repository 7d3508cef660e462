"""Reading JSON Lines sources for the importer: files, pipes and stdin, byte-order marks,
and the decode of one line with the checks that keep hostile input a per-line error.

A line is decoded with :func:`json.loads`; values that would break later stages are found by
one walk over the decoded value, done only when a cheap scan of the raw bytes says the line
might hold one: nesting deeper than :data:`MAX_DEPTH`, lone UTF-16 surrogates (``"\\ud800"``,
or the bytes ``ED A0 80`` that :func:`json.loads` lets through), and non-finite numbers
(``NaN``, ``Infinity``, or ``1e309``, which overflows to infinity).
"""

from __future__ import annotations

import codecs
import io
import json
import math
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from manta_lib.errors import ValidationError

STDIN = "-"
MAX_DEPTH = 64  # nesting levels of objects and lists in one line
_MAX_PROBLEMS = 5  # per line, from the walk
_CHUNK_CHARS = 1 << 16

# Bytes that may decode to a lone surrogate: an escape \uD800-\uDFFF, or UTF-8-like bytes
# ED A0..BF (json.loads decodes bytes with "surrogatepass").
_SURROGATE_HINT = re.compile(rb"\\u[dD][89abcdefABCDEF]|\xed[\xa0-\xbf]")
# Tokens that may decode to a non-finite float.
_NONFINITE_HINT = re.compile(rb"NaN|Infinity|[eE][+-]?\d{3}|\d{300}")
_SURROGATE = re.compile("[\ud800-\udfff]")


class LineProblems(Exception):
    """Raised while reading or parsing a line: the ``(field, reason)`` pairs found."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        super().__init__(problems)
        self.problems = problems


@dataclass(frozen=True)
class Source:
    """One input: a path, or standard input (``-``)."""

    path: Path | None  # None: standard input

    @property
    def name(self) -> str:
        """The name used in error locations."""
        return "<stdin>" if self.path is None else str(self.path)

    @property
    def size(self) -> int | None:
        """Size in bytes of a regular file (None for stdin, pipes and devices)."""
        if self.path is not None and self.path.is_file():
            return self.path.stat().st_size
        return None


def source_of(value: str | Path) -> Source:
    """Check one input argument: ``-`` is standard input, anything else a readable path
    (a regular file, ``/dev/stdin``, a named pipe or a ``<(...)`` substitution)."""
    if str(value) == STDIN:
        return Source(None)
    path = Path(value)
    if not path.exists():
        raise ValidationError(f"cannot import {path}: no such file")
    if path.is_dir():
        raise ValidationError(f"cannot import {path}: it is a directory, not a JSON Lines file")
    return Source(path)


@contextmanager
def _open(source: Source) -> Iterator[IO[bytes]]:
    if source.path is None:
        yield sys.stdin.buffer
        return
    with source.path.open("rb") as handle:
        yield handle


def read_lines(
    source: Source, advance: Callable[[int], Any]
) -> Iterator[tuple[int, bytes | LineProblems]]:
    """Yield ``(line_number, raw_utf8_bytes)`` for every non-blank line of ``source``.

    A UTF-8 byte-order mark is skipped; UTF-16 and UTF-32 files with a byte-order mark are
    decoded; a file that looks like UTF-16 without one is rejected at its first line (yielded
    as a :class:`LineProblems`), since its lines cannot even be split correctly.
    """
    with _open(source) as handle:
        buffered: Any = handle
        if not isinstance(handle, io.BufferedReader):
            buffered = io.BufferedReader(handle)
        head = buffered.peek(4)[:4]
        encoding = _bom_encoding(head)
        if encoding == "utf-8-sig":
            buffered.read(3)
            advance(3)
        elif encoding is not None:
            yield from _transcoded(buffered, encoding, advance)
            return
        elif _looks_like_utf16(buffered.peek(64)[:64]):
            yield (
                1,
                LineProblems(
                    [
                        (
                            "",
                            "the file looks like UTF-16 without a byte-order mark (NUL bytes "
                            "between characters); nothing of it was read. Convert it to UTF-8, "
                            "e.g. iconv -f UTF-16LE -t UTF-8",
                        )
                    ]
                ),
            )
            return
        limit = max_record_bytes()
        number = 0
        while raw := buffered.readline(limit + 1):
            number += 1
            advance(len(raw))
            if len(raw) > limit and not raw.endswith(b"\n"):
                size = len(raw)
                while (rest := buffered.readline(_CHUNK_CHARS)) and not rest.endswith(b"\n"):
                    size += len(rest)
                    advance(len(rest))
                size += len(rest)
                advance(len(rest))
                yield number, LineProblems([("", too_large("the line", f"{size:,} bytes", limit))])
            elif raw.strip():
                yield number, raw.rstrip(b"\r\n")


def max_record_bytes() -> int:
    """The most bytes an importer reads into memory for one record (a JSON line, an Inspect
    sample after inflating, a whole-file log): ``MANTA_IMPORT_MAX_RECORD_MB``."""
    from manta_lib.settings import load_settings

    return int(load_settings().import_max_record_mb * (1 << 20))


def too_large(what: str, size: str, limit: int) -> str:
    """The reason of a record over :func:`max_record_bytes`."""
    return (
        f"{what} is {size}, over the import limit of {limit / (1 << 20):g} MB per record; "
        f"raise MANTA_IMPORT_MAX_RECORD_MB if the file is trusted"
    )


def _bom_encoding(head: bytes) -> str | None:
    if head.startswith(codecs.BOM_UTF8):
        return "utf-8-sig"
    if head.startswith((codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)):
        return "utf-32"
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"
    return None


def _looks_like_utf16(head: bytes) -> bool:
    """ASCII text encoded as UTF-16 has a NUL byte next to every character."""
    return len(head) >= 4 and head.count(0) * 3 >= len(head)


def _transcoded(
    handle: IO[bytes], encoding: str, advance: Callable[[int], Any]
) -> Iterator[tuple[int, bytes | LineProblems]]:
    # Split on "\n" only: the codec's own line iteration also splits on U+2028 and U+0085,
    # which JSON allows inside strings.
    reader = codecs.getreader(encoding)(handle, "strict")
    number, pending = 0, ""
    try:
        while chunk := reader.read(_CHUNK_CHARS):
            *complete, pending = (pending + chunk).split("\n")
            for text in complete:
                number += 1
                yield from _encoded_line(number, text, advance)
    except UnicodeDecodeError as exc:
        reason = f"invalid {encoding.upper()} ({exc.reason}); the rest of the file was not read"
        yield number + 1, LineProblems([("", reason)])
        return
    if pending:
        yield from _encoded_line(number + 1, pending, advance)


def _encoded_line(
    number: int, text: str, advance: Callable[[int], Any]
) -> Iterator[tuple[int, bytes]]:
    # surrogatepass: a lone surrogate becomes a per-line error in decode_line.
    raw = text.encode("utf-8", "surrogatepass")
    advance(len(raw) + 1)
    if raw.strip():
        yield number, raw.rstrip(b"\r")


def decode_line(raw: bytes) -> Any:
    """Parse one JSON line; raise :class:`LineProblems` for anything a later stage cannot
    store (invalid JSON or UTF-8, deep nesting, lone surrogates, non-finite numbers)."""
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        message = exc.msg.removesuffix(" at")  # "Invalid control character at"
        raise LineProblems([("", f"invalid JSON ({message} at column {exc.colno})")]) from None
    except UnicodeDecodeError as exc:
        raise LineProblems([("", f"invalid UTF-8 ({exc.reason} at byte {exc.start})")]) from None
    except RecursionError:
        raise LineProblems([("", f"nested more than {MAX_DEPTH} levels deep")]) from None
    except ValueError as exc:  # e.g. an integer literal of more than 4,300 digits
        raise LineProblems([("", f"invalid JSON ({exc})")]) from None
    if (
        raw.count(b"{") + raw.count(b"[") > MAX_DEPTH
        or _SURROGATE_HINT.search(raw)
        or _NONFINITE_HINT.search(raw)
    ):
        problems = unstorable_values(value)
        if problems:
            raise LineProblems(problems)
    return value


def unstorable_values(value: Any) -> list[tuple[str, str]]:
    """``(field path, reason)`` for each nested value that cannot be stored faithfully."""
    if _clean(value, 1):
        return []
    problems: list[tuple[str, str]] = []
    stack: list[tuple[Any, str, int]] = [(value, "", 1)]
    while stack and len(problems) < _MAX_PROBLEMS:
        item, path, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > MAX_DEPTH:
                problems.append((path, f"nested more than {MAX_DEPTH} levels deep"))
                continue
            children = item.items() if isinstance(item, dict) else enumerate(item)
            for key, child in reversed(list(children)):
                if isinstance(key, str) and _SURROGATE.search(key):
                    problems.append((path, f"key {_surrogate_text(key)}"))
                    continue
                name = f"{path}[{key}]" if isinstance(item, list) else _join(path, key)
                stack.append((child, name, depth + 1))
        elif isinstance(item, str):
            if _SURROGATE.search(item):
                problems.append((path, _surrogate_text(item)))
        elif isinstance(item, float) and not math.isfinite(item):
            shown = "NaN" if math.isnan(item) else "Infinity" if item > 0 else "-Infinity"
            problems.append(
                (
                    path,
                    f"{shown} is not a finite number (a literal such as 1e309 overflows to "
                    f"Infinity); use a finite number, or null where a value may be missing",
                )
            )
    return problems


def _clean(value: Any, depth: int) -> bool:  # noqa: C901 - one flat branch per JSON type
    """True when :func:`unstorable_values` would find nothing in ``value`` (at nesting level
    ``depth``): the fast check of every record, without the field paths. Scalars are tested
    inline rather than by a call each; a type it does not know says False, and the full walk
    decides."""
    kind = type(value)
    if kind is str:
        return value.isascii() or not _SURROGATE.search(value)
    if kind is float:
        return math.isfinite(value)
    if kind is not dict and kind is not list:
        return kind is int or kind is bool or value is None or kind is datetime
    if depth > MAX_DEPTH:
        return False
    if kind is dict:
        for key in value:
            if type(key) is not str or not (key.isascii() or not _SURROGATE.search(key)):
                return False
        items = value.values()
    else:
        items = value
    for item in items:
        kind = type(item)
        if kind is str:
            if not item.isascii() and _SURROGATE.search(item):
                return False
        elif kind is int or kind is bool or item is None:
            continue
        elif kind is float:
            if not math.isfinite(item):
                return False
        elif not _clean(item, depth + 1):
            return False
    return True


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _surrogate_text(text: str) -> str:
    match = _SURROGATE.search(text)
    assert match is not None
    code = f"\\u{ord(match.group()):04x}"
    return (
        f"contains a lone UTF-16 surrogate ({code} at character {match.start()}), which is "
        f"not valid Unicode; fix the encoder that wrote the file (text must be UTF-8)"
    )
