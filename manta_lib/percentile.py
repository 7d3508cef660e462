"""Percentiles, computed exactly as numpy's default (``linear``) method, without numpy."""

from __future__ import annotations

import math
from collections.abc import Sequence


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Percentile ``q`` (0..1) of ascending ``sorted_values``, numpy's default ``linear`` method.

    The rank is ``(n - 1) * q``; the result interpolates linearly between the two closest
    ranks, with numpy's formula so that the result is bit-identical to ``numpy.quantile``.

    >>> percentile([1.0, 2.0], 0.5)
    1.5
    >>> percentile([3.0, 5.0, 9.0], 0.5)
    5.0
    """
    n = len(sorted_values)
    if n == 0:
        raise ValueError("percentile of an empty sequence")
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"q={q!r} must be between 0 and 1")
    rank = (n - 1) * q
    low = math.floor(rank)
    high = min(low + 1, n - 1)
    t = rank - low
    a, b = sorted_values[low], sorted_values[high]
    diff = b - a
    # numpy's _lerp: interpolate from the nearer end to stay monotonic and exact at t=1.
    return b - diff * (1.0 - t) if t >= 0.5 else a + diff * t
