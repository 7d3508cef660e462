"""Writing tables for people and tools: a rich table on a terminal, CSV, JSON or Parquet."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from rich import box
from rich.console import Console
from rich.table import Table

from manta_lib.errors import QueryError

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

Format = Literal["table", "csv", "json", "parquet"]
FORMATS: tuple[str, ...] = ("table", "csv", "json", "parquet")
_MAX_CELL = 60


def resolve_format(fmt: str | None, output: Path | None) -> Format:
    """``fmt``, or the default: a table on a terminal, CSV when piped or written to a file
    (Parquet for a ``.parquet`` file, JSON for ``.json``)."""
    if fmt is None:
        suffix = output.suffix.lower() if output is not None else ""
        if suffix in (".parquet", ".json", ".csv"):
            return suffix[1:]  # type: ignore[return-value]
        return "table" if output is None and sys.stdout.isatty() else "csv"
    if fmt not in FORMATS:
        raise QueryError(f"--format {fmt!r} is not valid (expected one of: {', '.join(FORMATS)})")
    if fmt == "parquet" and output is None:
        raise QueryError("--format parquet writes a file: add --output FILE.parquet")
    return fmt  # type: ignore[return-value]


def human_number(value: float) -> str:
    """A float rounded for people: 4 significant digits (``0.08571``), thousands separated
    and one decimal from 10,000 on (``237,538.4``) instead of an exponent; exact values go
    to csv/json/parquet."""
    if math.isnan(value) or math.isinf(value):
        return str(value)
    if abs(value) >= 10_000:
        return f"{value:,.1f}" if abs(value) < 1e15 else f"{value:.4g}"
    return f"{value:.4g}"


def shorten_middle(text: str, width: int) -> str:
    """``text`` cut to ``width`` characters in the middle (``run_grpo…_math_v1``), so both the
    start and the end of a long id stay readable."""
    if len(text) <= width:
        return text
    if width <= 1:
        return "…"[:width]
    tail = (width - 1) // 2
    return text[: width - 1 - tail] + "…" + (text[-tail:] if tail else "")


def cell(value: Any) -> str:
    """One value as short text for a terminal table."""
    import pandas as pd

    if value is None or value is pd.NA:
        return "-"
    if isinstance(value, float):
        return "-" if math.isnan(value) else human_number(value)
    if isinstance(value, list | dict):
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    else:
        text = str(value)
    return text if len(text) <= _MAX_CELL else text[: _MAX_CELL - 1] + "…"


def _plain(value: Any) -> Any:
    """Nested values as JSON text (for CSV)."""
    if isinstance(value, list | dict):
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return value


def write_frame(
    frame: pd.DataFrame,
    fmt: Format,
    output: Path | None,
    *,
    console: Console,
    title: str = "",
    caption: str = "",
    arrow: pa.Table | None = None,
    highlight_errors: bool = True,
) -> None:
    """Write ``frame`` as ``fmt`` to ``output`` (stdout when None).

    Parquet writes ``arrow`` when given (nested columns keep their Arrow types).
    """
    if fmt == "table":
        _print_table(frame, console, title, caption, highlight_errors)
        if output is not None:
            raise QueryError("--format table prints to the terminal; use csv, json or parquet")
        return
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        assert output is not None
        table = arrow if arrow is not None else pa.Table.from_pandas(frame, preserve_index=False)
        pq.write_table(table, output)
        return
    if fmt == "csv":
        plain = frame.copy()
        for name in plain.columns:
            if plain[name].dtype == object:
                plain[name] = plain[name].map(_plain)
        text = plain.to_csv(index=False)
    else:
        text = frame.to_json(orient="records", date_format="iso", force_ascii=False, indent=None)
        text += "\n"
    if output is None:
        sys.stdout.write(text)
    else:
        output.write_text(text)


_MIN_TEXT_WIDTH = 8  # a text column is not shortened below this (ids stay recognisable)
_COLUMN_PADDING = 2  # one space each side of a cell
_HOISTED = ("project_id", "run_id", "judge_version")


def fit_widths(widths: Sequence[int], floors: Sequence[int], budget: int) -> list[int] | None:
    """Column widths summing to at most ``budget``, none below its floor: the widest column
    that can still give way is narrowed first; None when even the floors do not fit."""
    fitted = list(widths)
    excess = sum(fitted) - budget
    while excess > 0:
        candidates = [i for i, w in enumerate(fitted) if w > floors[i]]
        if not candidates:
            return None
        widest = max(candidates, key=fitted.__getitem__)
        second = max((fitted[i] for i in candidates if i != widest), default=0)
        step = min(excess, fitted[widest] - max(second, floors[widest])) or 1
        fitted[widest] -= step
        excess -= step
    return fitted


def _shorten_end(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(width - 1, 0)] + "…"


def _print_table(
    frame: pd.DataFrame, console: Console, title: str, caption: str, highlight: bool
) -> None:
    """A table that fits the terminal: long text cells (ids) are shortened in the middle and
    long headers of number columns at the end (numbers are never cut); when even that is too
    wide, each row is printed as ``column  value`` lines."""
    columns: Sequence[str] = [str(name) for name in frame.columns]
    numeric = [
        frame[name].dtype.kind in "iuf" or str(frame[name].dtype) in ("Int64", "Float64")
        for name in frame.columns
    ]
    rows = [[cell(value) for value in row] for row in frame.itertuples(index=False)]
    status_index = columns.index("status") if "status" in columns else None
    styles = [
        "red" if highlight and status_index is not None and row[status_index] == "error" else None
        for row in rows
    ]
    budget = console.width - _COLUMN_PADDING * len(columns)
    if len(rows) > 1 and _natural_width(columns, rows) > budget:
        # The run (or project, judge version) of a table where every row has the same one
        # moves above the table: the room goes to the columns that differ.
        constant = [
            i
            for i in range(len(columns))
            if columns[i] in _HOISTED and len({row[i] for row in rows}) == 1
        ]
        if constant:
            shared = " · ".join(f"{columns[i]} {rows[0][i]}" for i in constant)
            title = f"{title} · {shared}" if title else shared
            keep = [i for i in range(len(columns)) if i not in constant]
            columns = [columns[i] for i in keep]
            numeric = [numeric[i] for i in keep]
            rows = [[row[i] for i in keep] for row in rows]
    values = [max((len(row[i]) for row in rows), default=1) for i in range(len(columns))]
    widths = [max(len(name), values[i]) for i, name in enumerate(columns)]
    floors = [
        max(values[i], 4) if numeric[i] else min(widths[i], _MIN_TEXT_WIDTH)
        for i in range(len(columns))
    ]
    fitted = fit_widths(widths, floors, console.width - _COLUMN_PADDING * len(columns))
    if fitted is None:
        _print_vertical(columns, rows, styles, console, title, caption)
        return
    table = Table(
        title=title or None,
        caption=caption or None,
        box=box.SIMPLE_HEAD,
        show_edge=False,
        padding=(0, 1),
        collapse_padding=True,
    )
    for name, is_number, width in zip(columns, numeric, fitted, strict=True):
        table.add_column(
            _shorten_end(name, width) if is_number else shorten_middle(name, width),
            justify="right" if is_number else "left",
            no_wrap=True,
        )
    for row, style in zip(rows, styles, strict=True):
        table.add_row(
            *(shorten_middle(text, width) for text, width in zip(row, fitted, strict=True)),
            style=style,
        )
    console.print(table)


def _natural_width(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> int:
    return sum(max([len(name), *(len(row[i]) for row in rows)]) for i, name in enumerate(columns))


def _print_vertical(
    columns: Sequence[str],
    rows: Sequence[Sequence[str]],
    styles: Sequence[str | None],
    console: Console,
    title: str,
    caption: str,
) -> None:
    """One block per row, one ``column  value`` line per field (too many columns for a row)."""
    if title:
        console.print(title, style="bold", highlight=False)
    label = max(len(name) for name in columns)
    for number, (row, style) in enumerate(zip(rows, styles, strict=True), start=1):
        console.print(f"── row {number} ──", style="dim", highlight=False)
        for name, text in zip(columns, row, strict=True):
            console.print(f"{name:<{label}}  {text}", style=style, highlight=False, soft_wrap=True)
    if caption:
        console.print(caption, style="dim", highlight=False)
