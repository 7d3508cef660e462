"""Materialization metadata a person reads: counts, a markdown summary of values, failures.

The summary covers the outputs of the materialized partition(s): per numeric column the count,
mean and percentiles; per text or boolean column the most frequent values; and a small text
histogram of the level's main score (see :func:`main_score_column`).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel

from manta_dagster.ui_links import explorer_base
from manta_lib import MetadataOutput, percentile
from manta_lib.explorer.links import entity_url

HISTOGRAM_BINS = 10
HISTOGRAM_WIDTH = 30
TOP_CATEGORIES = 5
FIRST_FAILURES = 10
_SCORE_HINTS = ("score", "reward", "rate", "pass", "error", "cost")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def column_values(outputs: Sequence[MetadataOutput]) -> dict[str, list[Any]]:
    """``{column: [values of the successful outputs]}`` in schema order."""
    columns: dict[str, list[Any]] = {}
    for outcome in outputs:
        if outcome.output is None:
            continue
        for name, value in outcome.output.model_dump(mode="json").items():
            columns.setdefault(name, []).append(value)
    return columns


def main_score_column(schema: type[BaseModel], columns: dict[str, list[Any]]) -> str | None:
    """The numeric column the histogram shows: the first whose name looks like a score
    (score, reward, rate, pass, error, cost), else the first numeric column."""
    numeric = [
        name
        for name in schema.model_fields
        if columns.get(name) and any(_is_number(v) for v in columns[name])
    ]
    for hint in _SCORE_HINTS:
        for name in numeric:
            if hint in name:
                return name
    return numeric[0] if numeric else None


def histogram(values: Sequence[float], bins: int = HISTOGRAM_BINS) -> str:
    """A fixed-width text histogram (one line per bin) for a markdown code block."""
    if not values:
        return "(no values)"
    low, high = min(values), max(values)
    if low == high:
        return f"{low:>10.4g} | {'#' * HISTOGRAM_WIDTH} {len(values)}"
    width = (high - low) / bins
    counts = [0] * bins
    for value in values:
        counts[min(int((value - low) / width), bins - 1)] += 1
    peak = max(counts)
    lines = []
    for index, count in enumerate(counts):
        bar = "#" * (round(HISTOGRAM_WIDTH * count / peak) if count else 0)
        lines.append(f"{low + index * width:>10.4g} | {bar} {count}")
    return "\n".join(lines)


def markdown_summary(schema: type[BaseModel], outputs: Sequence[MetadataOutput]) -> str:
    """Mean/percentiles of numeric columns, top values of the others, a histogram of the score."""
    if not outputs:
        return (
            "**Empty partition: nothing to compute.** No entity of this level is in it (no "
            "trace of the run falls in this shard)."
        )
    columns = column_values(outputs)
    ok = sum(1 for o in outputs if o.error is None)
    lines = [f"**{ok:,} of {len(outputs):,} entities computed** ({schema.__name__})", ""]
    numeric_rows, category_rows = [], []
    for name in schema.model_fields:
        values = columns.get(name, [])
        numbers = sorted(float(v) for v in values if _is_number(v))
        if numbers:
            mean = sum(numbers) / len(numbers)
            numeric_rows.append(
                f"| {name} | {len(numbers):,} | {mean:.4g} | {numbers[0]:.4g} | "
                f"{percentile(numbers, 0.5):.4g} | {percentile(numbers, 0.95):.4g} | "
                f"{numbers[-1]:.4g} |"
            )
            continue
        flat: list[Any] = []
        for value in values:
            flat.extend(value if isinstance(value, list) else [value])
        hashable = [v for v in flat if isinstance(v, str | bool) or v is None]
        if hashable:
            top = Counter(str(v) for v in hashable).most_common(TOP_CATEGORIES)
            shown = ", ".join(f"`{value}` ({count:,})" for value, count in top)
            category_rows.append(f"| {name} | {shown} |")
    if numeric_rows:
        lines += [
            "| column | n | mean | min | p50 | p95 | max |",
            "|---|---:|---:|---:|---:|---:|---:|",
            *numeric_rows,
            "",
        ]
    if category_rows:
        lines += ["| column | top values |", "|---|---|", *category_rows, ""]
    score = main_score_column(schema, columns)
    if score is not None:
        values = [float(v) for v in columns[score] if _is_number(v)]
        lines += [f"Histogram of `{score}`:", "", "```", histogram(values), "```"]
    return "\n".join(lines)


def first_failures(outputs: Sequence[MetadataOutput], limit: int = FIRST_FAILURES) -> str:
    """The first failed entity ids (smallest first), each a link to its page in the explorer
    (:func:`manta_lib.explorer.links.entity_url`), with its message and where in the user's
    code it was raised, as markdown."""
    failed = sorted((o for o in outputs if o.error is not None), key=lambda o: o.entity_id)
    if not failed:
        return "No failures."
    base = explorer_base()
    lines = [
        f"- [`{o.entity_id}`]"
        f"({entity_url(o.entity_level.value, o.entity_id, o.run_id, base=base)}): "
        f"{str(o.error).splitlines()[0][:300]}"
        + (f" (at `{o.error_at[:300]}`)" if o.error_at else "")
        for o in failed[:limit]
    ]
    if len(failed) > limit:
        lines.append(f"- … and {len(failed) - limit:,} more")
    return "\n".join(lines)
