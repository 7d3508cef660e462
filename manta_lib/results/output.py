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


def cell(value: Any) -> str:
    """One value as short text for a terminal table."""
    import pandas as pd

    if value is None or value is pd.NA:
        return "-"
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.4g}"
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


def _print_table(
    frame: pd.DataFrame, console: Console, title: str, caption: str, highlight: bool
) -> None:
    table = Table(
        title=title or None,
        caption=caption or None,
        box=box.SIMPLE_HEAD,
        show_edge=False,
        padding=(0, 1),
        collapse_padding=True,
    )
    for name in frame.columns:
        numeric = frame[name].dtype.kind in "iuf" or str(frame[name].dtype) in ("Int64", "Float64")
        table.add_column(str(name), justify="right" if numeric else "left", overflow="fold")
    columns: Sequence[str] = list(frame.columns)
    status_index = columns.index("status") if "status" in columns else None
    for row in frame.itertuples(index=False):
        failed = status_index is not None and row[status_index] == "error"
        style = "red" if highlight and failed else None
        table.add_row(*(cell(value) for value in row), style=style)
    console.print(table)
