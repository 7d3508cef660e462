"""Helpers over results frames (``results_frame`` tables) shared by the comparisons and the
calibration: which columns are keys and which values, a column's kind, the ok rows."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from manta_lib.results.table import BOOKKEEPING_COLUMNS, KEY_COLUMNS

if TYPE_CHECKING:
    import pandas as pd

# Every level but the trace is matched per phase too: run A's eval step 4 against run B's.
KEYS_BY_LEVEL = {
    "trace": ("trace_id",),
    "datapoint": ("datapoint_id", "step_number", "phase"),
    "datapoint_across_steps": ("datapoint_id", "phase"),
    "step": ("step_number", "phase"),
    "run": ("phase",),
}


def value_columns(frame: pd.DataFrame, keys: Sequence[str]) -> list[str]:
    skip = set(BOOKKEEPING_COLUMNS) | set(KEY_COLUMNS)
    return [c for c in frame.columns if c not in skip and c not in keys]


def column_kind(series: pd.Series) -> str:
    dtype = str(series.dtype)
    if dtype in ("Int64", "Float64") or series.dtype.kind in "iuf":
        return "number"
    if dtype == "boolean" or series.dtype.kind == "b":
        return "boolean"
    sample = series.dropna()
    if len(sample) and all(isinstance(v, str) for v in sample):
        return "string"
    return "json"


def entity_keys(level: str, frame: pd.DataFrame) -> tuple[str, ...]:
    return tuple(k for k in KEYS_BY_LEVEL.get(level, ()) if k in frame.columns)


def ok_rows(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[frame["status"] == "ok"].reset_index(drop=True)


def hashable(value: Any) -> Any:
    if isinstance(value, list | dict):
        return json.dumps(value, sort_keys=True)
    return bool(value) if type(value).__name__ in ("bool_", "bool") else value
