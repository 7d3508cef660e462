"""Validation of query arguments at the boundary: one :class:`QueryError` per bad value.

Every public query method checks its arguments with these functions before any SQL is built,
so that a wrong type or an out-of-range value fails with a message naming the argument, the
value and what is accepted, instead of a driver traceback or a silently wrong result (a
``step`` that overflows a 64-bit column, a single trace id iterated character by character).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from manta_lib.errors import QueryError

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
UINT64_MAX = 2**64 - 1


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def strings(name: str, value: Any) -> list[str]:
    """One string or a list/tuple/set of strings, as a list. ``None`` is not accepted here."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, Sequence | set | frozenset) and not isinstance(value, bytes):
        values = list(value)
        for item in values:
            if not isinstance(item, str):
                raise QueryError(
                    f"{name} must be a string or a list of strings, got an element {_show(item)} "
                    f"of type {type(item).__name__}"
                )
        return values
    raise QueryError(
        f"{name} must be a string or a list of strings, got {_show(value)} "
        f"of type {type(value).__name__}"
    )


def optional_strings(name: str, value: Any) -> list[str] | None:
    """Like :func:`strings`, ``None`` meaning "no filter"."""
    return None if value is None else strings(name, value)


def string(name: str, value: Any) -> str:
    """Exactly one string."""
    if not isinstance(value, str):
        raise QueryError(
            f"{name} must be a string, got {_show(value)} of type {type(value).__name__}"
        )
    return value


def integer(name: str, value: Any, *, low: int = INT64_MIN, high: int = INT64_MAX) -> int:
    """An ``int`` (not a bool, not a float) within ``[low, high]``."""
    if not _is_int(value):
        raise QueryError(
            f"{name} must be a whole number, got {_show(value)} of type {type(value).__name__}"
        )
    if not low <= value <= high:
        raise QueryError(f"{name}={value} is out of range: it must be between {low} and {high}")
    return int(value)


def count(name: str, value: Any, *, minimum: int = 0) -> int:
    """A non-negative ``int`` (``limit``, ``offset``); values above the 64-bit range are capped,
    as no table holds that many rows, so the result is the same."""
    if not _is_int(value):
        raise QueryError(
            f"{name} must be a whole number, got {_show(value)} of type {type(value).__name__}"
        )
    if value < minimum:
        raise QueryError(f"{name} must be at least {minimum}, got {value}")
    return min(int(value), INT64_MAX)


def step(value: Any) -> int | tuple[int, int]:
    """One step number or an inclusive ``(first, last)`` range of two step numbers."""
    if isinstance(value, tuple | list):
        if len(value) != 2:
            raise QueryError(
                f"step range must be (first, last), two whole numbers, got {_show(value)}"
            )
        first = integer("step range first", value[0])
        last = integer("step range last", value[1])
        if first > last:
            raise QueryError(
                f"step range {first}..{last} is empty: the first step must not exceed the last"
            )
        return first, last
    if not _is_int(value):
        raise QueryError(
            f"step must be a whole number or a (first, last) range, got {_show(value)} "
            f"of type {type(value).__name__}"
        )
    return integer("step", value)


def score(name: str, value: Any) -> float:
    """A finite real number (int or float, not a bool, not NaN or infinite)."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise QueryError(
            f"{name} must be a number, got {_show(value)} of type {type(value).__name__}"
        )
    number = float(value)
    if not math.isfinite(number):
        raise QueryError(f"{name} must be a finite number, got {value!r}")
    return number


def boolean(name: str, value: Any) -> bool:
    """``True`` or ``False`` exactly."""
    if not isinstance(value, bool):
        raise QueryError(f"{name} must be True or False, got {_show(value)}")
    return value


MetaValue = str | int | float | bool | None


def meta(value: Any) -> dict[str, MetaValue]:
    """A ``{key: value}`` filter on top-level meta keys; values are JSON scalars."""
    if not isinstance(value, Mapping):
        raise QueryError(
            f"meta must be a dict of top-level meta key to value, got {_show(value)} "
            f"of type {type(value).__name__}"
        )
    checked: dict[str, MetaValue] = {}
    for key, item in value.items():
        if not isinstance(key, str):
            raise QueryError(f"meta filter keys must be strings, got {_show(key)}")
        if isinstance(item, float) and not math.isfinite(item):
            raise QueryError(f"meta filter {key!r}={item!r}: a meta value is never NaN or infinite")
        if _is_int(item) and not INT64_MIN <= item <= UINT64_MAX:
            raise QueryError(
                f"meta filter {key!r}={item}: whole numbers are stored as 64-bit integers, "
                f"between {INT64_MIN} and {UINT64_MAX}"
            )
        if item is not None and not isinstance(item, str | int | float | bool):
            raise QueryError(
                f"meta filter {key!r}={_show(item)} is not supported: meta filters match a "
                f"string, number, boolean or None (a key present with a null value)"
            )
        checked[key] = item
    return checked


def shards(value: Any, shard_count: Any) -> tuple[list[int], int]:
    """Hash shards ``0 <= shard < shard_count`` and the (positive) shard count."""
    total = integer("shard_count", shard_count, low=1, high=2**32 - 1)
    if isinstance(value, str) or not isinstance(value, Sequence | set | frozenset):
        raise QueryError(f"shards must be a list of shard numbers, got {_show(value)}")
    return [integer("shard", s, low=0, high=total - 1) for s in value], total
