"""Compare stored results: two runs under one judge, two versions (or two judges) on one run,
and a judge against the traces' own grader.

- **Runs** (:func:`compare_runs`): the entities both runs have (same keys: datapoint_id at the
  datapoint level, step_number at the step level, and the phase at every level above the
  trace) joined side by side with deltas, and per column and phase a distribution comparison
  over the succeeded entities of that phase in each run (train and eval are never pooled):
  numeric columns get mean / p50 / p95 of each run, their deltas and a bootstrap confidence
  interval of the mean delta; categorical (text, boolean) columns the share of each value in
  each run and the total variation distance between the two distributions.
- **Agreement** (:func:`compare_versions`, :func:`compare_judges`, :func:`compare_with_grader`):
  the entities both sides succeeded on; categorical/boolean columns: accuracy (share of equal
  values) and Cohen's kappa; numeric columns: Pearson correlation and mean absolute difference;
  plus the ids of the disagreeing entities.

Percentiles interpolate linearly between closest ranks (numpy's default).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from manta_lib.errors import QueryError
from manta_lib.results import catalog, frames
from manta_lib.results.table import (
    ResultsQuery,
    results_frame,
)
from manta_lib.store import Store
from manta_lib.store import results_queries as q
from manta_lib.store.judge_versions import version_records

if TYPE_CHECKING:
    import pandas as pd

    from manta_lib.results.calibration import Calibration


@dataclass(frozen=True)
class NumericShift:
    """One numeric column in two runs: distribution figures and the mean delta's CI."""

    column: str
    n_a: int
    n_b: int
    mean_a: float | None
    mean_b: float | None
    delta_mean: float | None
    ci_low: float | None
    ci_high: float | None
    p50_a: float | None
    p50_b: float | None
    p95_a: float | None
    p95_b: float | None
    #: The phase whose entities these figures cover (train and eval are compared apart).
    phase: str = ""

    @property
    def delta_p50(self) -> float | None:
        return _sub(self.p50_b, self.p50_a)

    @property
    def delta_p95(self) -> float | None:
        return _sub(self.p95_b, self.p95_a)


@dataclass(frozen=True)
class CategoricalShift:
    """One categorical column in two runs: the share of each value and the total variation."""

    column: str
    n_a: int
    n_b: int
    shares_a: dict[Any, float]
    shares_b: dict[Any, float]
    total_variation: float | None
    #: The phase whose entities these figures cover (train and eval are compared apart).
    phase: str = ""


@dataclass
class RunComparison:
    """Two runs under one judge. ``joined``: common entities with ``<col>_a``, ``<col>_b`` and
    ``<col>_delta`` (numeric) columns. ``b`` minus ``a`` throughout. ``note`` says when the
    runs have no common entities (the distribution figures still compare them)."""

    judge: str
    level: str
    run_a: str
    run_b: str
    keys: tuple[str, ...]
    joined: pd.DataFrame
    only_a: int
    only_b: int
    numeric: list[NumericShift] = field(default_factory=list)
    categorical: list[CategoricalShift] = field(default_factory=list)
    note: str = ""


@dataclass(frozen=True)
class ColumnAgreement:
    """Agreement of one column between two sides on their common entities.

    Categorical/boolean: ``accuracy`` and ``kappa``; numeric: ``correlation`` and ``mad``
    (mean absolute difference). ``kappa``/``correlation`` are None where undefined (one side
    constant). ``disagreeing``: entity ids whose values differ (numeric: differ at all).
    ``mean_a``/``mean_b``: each side's mean over the same ``n`` entities (numbers, and booleans
    as the share of true), None for other kinds: agreement says nothing of which side is higher.
    """

    column: str
    kind: str
    n: int
    mean_a: float | None = None
    mean_b: float | None = None
    accuracy: float | None = None
    kappa: float | None = None
    correlation: float | None = None
    mad: float | None = None
    disagreeing: tuple[str, ...] = ()


@dataclass
class Agreement:
    """Two result sets over the same entities (two versions, two judges, judge vs grader)."""

    label_a: str
    label_b: str
    level: str
    common: int
    only_a: int
    only_b: int
    columns: list[ColumnAgreement]
    joined: pd.DataFrame
    #: Two judges (``compare_judges``): the calibration report of a against b as reference
    #: (``manta_lib.results.calibration.Calibration``); None for the other comparisons.
    calibration: Calibration | None = None


# ------------------------------------------------------------------------- statistics


def mean(values: Sequence[float]) -> float | None:
    return math.fsum(values) / len(values) if values else None


def percentile(values: Sequence[float], fraction: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default method)."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * fraction
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def cohen_kappa(a: Sequence[Any], b: Sequence[Any]) -> float | None:
    """Cohen's kappa of two labelings of the same items (None when chance agreement is 1)."""
    n = len(a)
    if not n:
        return None
    observed = sum(x == y for x, y in zip(a, b, strict=True)) / n
    labels = set(a) | set(b)
    expected = sum((list(a).count(c) / n) * (list(b).count(c) / n) for c in labels)
    if expected >= 1:
        return None
    return float((observed - expected) / (1 - expected))


def pearson(a: Sequence[float], b: Sequence[float]) -> float | None:
    n = len(a)
    if n < 2:
        return None
    mean_a, mean_b = math.fsum(a) / n, math.fsum(b) / n
    cov = math.fsum((x - mean_a) * (y - mean_b) for x, y in zip(a, b, strict=True))
    var_a = math.fsum((x - mean_a) ** 2 for x in a)
    var_b = math.fsum((y - mean_b) ** 2 for y in b)
    if var_a == 0 or var_b == 0:
        return None
    return cov / math.sqrt(var_a * var_b)


def bootstrap_mean_delta(
    a: Sequence[float], b: Sequence[float], *, resamples: int, confidence: float, seed: int
) -> tuple[float | None, float | None]:
    """Percentile bootstrap CI of ``mean(b) - mean(a)`` (each run resampled independently)."""
    if not a or not b or resamples < 1:
        return None, None
    import numpy as np

    rng = np.random.default_rng(seed)
    array_a, array_b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    deltas = np.empty(resamples)
    for index in range(resamples):  # one vectorized draw per resample keeps memory flat
        deltas[index] = (
            rng.choice(array_b, array_b.size).mean() - rng.choice(array_a, array_a.size).mean()
        )
    tail = (1 - confidence) / 2
    return float(np.quantile(deltas, tail)), float(np.quantile(deltas, 1 - tail))


def _sub(b: float | None, a: float | None) -> float | None:
    return None if a is None or b is None else b - a


def _shares(values: Sequence[Any]) -> dict[Any, float]:
    counts: dict[Any, int] = {}
    for value in values:
        counts[value] = counts.get(value, 0) + 1
    return {value: count / len(values) for value, count in sorted(counts.items(), key=str)}


# ------------------------------------------------------------------------- runs


def _numbers(series: pd.Series) -> list[float]:
    return [
        float(v) for v in series.dropna().tolist() if not (isinstance(v, float) and math.isnan(v))
    ]


def compare_runs(
    store: Store,
    judge: str,
    run_a: str,
    run_b: str,
    *,
    level: str = "datapoint",
    columns: Sequence[str] | None = None,
    version: str | None = None,
    resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> RunComparison:
    """Compare ``run_b`` against ``run_a`` under ``judge`` at ``level`` (see module docs)."""
    level = catalog.parse_level(level).value
    frame_a = frames.ok_rows(
        results_frame(store, ResultsQuery(judge, run_a, level, version, columns=columns))
    )
    frame_b = frames.ok_rows(
        results_frame(store, ResultsQuery(judge, run_b, level, version, columns=columns))
    )
    keys = frames.entity_keys(level, frame_a)
    values = [c for c in frames.value_columns(frame_a, keys) if c in frame_b.columns]
    if keys:
        joined = frame_a[[*keys, *values]].merge(
            frame_b[[*keys, *values]], on=list(keys), suffixes=("_a", "_b")
        )
    else:
        joined = (
            frame_a[values].add_suffix("_a").join(frame_b[values].add_suffix("_b"), how="cross")
        )
    comparison = RunComparison(
        judge, level, run_a, run_b, keys, joined,
        only_a=len(frame_a) - len(joined), only_b=len(frame_b) - len(joined),
    )  # fmt: skip
    if joined.empty:
        comparison.note = (
            f"runs {run_a!r} and {run_b!r} have no common {level} entities (matched on "
            f"{', '.join(keys) or 'run'}): the joined table is empty and the figures compare the "
            f"distributions of all entities of each run"
            + (
                "; trace ids differ between runs, --level datapoint or step pairs them"
                if level == "trace"
                else ""
            )
        )
    for column in values:
        kind = frames.column_kind(frame_a[column])
        if kind == "number":
            joined[f"{column}_delta"] = joined[f"{column}_b"] - joined[f"{column}_a"]
        for phase, part_a, part_b in _by_phase(frame_a, frame_b):
            _add_shift(comparison, column, kind, part_a[column], part_b[column], phase,
                       resamples=resamples, confidence=confidence, seed=seed)  # fmt: skip
    return comparison


def _by_phase(
    frame_a: pd.DataFrame, frame_b: pd.DataFrame
) -> list[tuple[str, pd.DataFrame, pd.DataFrame]]:
    """``(phase, rows of a, rows of b)`` per phase of either run: distribution figures never
    pool train and eval values (results of an older store without phases: one group)."""
    if "phase" not in frame_a.columns or "phase" not in frame_b.columns:
        return [("", frame_a, frame_b)]
    phases = sorted(set(frame_a["phase"].dropna()) | set(frame_b["phase"].dropna()))
    return [
        (phase, frame_a[frame_a["phase"] == phase], frame_b[frame_b["phase"] == phase])
        for phase in phases
    ] or [("", frame_a, frame_b)]


def _add_shift(
    comparison: RunComparison,
    column: str,
    kind: str,
    series_a: pd.Series,
    series_b: pd.Series,
    phase: str,
    *,
    resamples: int,
    confidence: float,
    seed: int,
) -> None:
    """One column's distribution shift over one phase's entities of each run."""
    if kind == "number":
        a, b = _numbers(series_a), _numbers(series_b)
        low, high = bootstrap_mean_delta(
            a, b, resamples=resamples, confidence=confidence, seed=seed
        )
        comparison.numeric.append(
            NumericShift(
                column,
                len(a),
                len(b),
                mean(a),
                mean(b),
                _sub(mean(b), mean(a)),
                low,
                high,
                percentile(a, 0.5),
                percentile(b, 0.5),
                percentile(a, 0.95),
                percentile(b, 0.95),
                phase,
            )  # fmt: skip
        )
    elif kind in ("string", "boolean"):
        a_values, b_values = series_a.dropna().tolist(), series_b.dropna().tolist()
        shares_a, shares_b = _shares(a_values), _shares(b_values)
        labels = set(shares_a) | set(shares_b)
        tv = (
            0.5 * math.fsum(abs(shares_a.get(c, 0.0) - shares_b.get(c, 0.0)) for c in labels)
            if a_values and b_values
            else None
        )
        comparison.categorical.append(
            CategoricalShift(column, len(a_values), len(b_values), shares_a, shares_b, tv, phase)
        )


# ------------------------------------------------------------------------- agreement


def agreement(
    frame_a: pd.DataFrame,
    frame_b: pd.DataFrame,
    *,
    level: str,
    label_a: str,
    label_b: str,
    columns: Sequence[tuple[str, str]] | None = None,
) -> Agreement:
    """Agreement of ``frame_b`` with ``frame_a`` on their common succeeded entities.

    ``columns``: ``(column in a, column in b)`` pairs (default: the columns both have).
    """
    frame_a, frame_b = frames.ok_rows(frame_a), frames.ok_rows(frame_b)
    keys = ("run_id", *frames.entity_keys(level, frame_a))
    if columns is None:
        shared = [c for c in frames.value_columns(frame_a, keys) if c in frame_b.columns]
        columns = [(c, c) for c in shared]
    for name, frame, label in ((0, frame_a, label_a), (1, frame_b, label_b)):
        for pair in columns:
            if pair[name] not in frame.columns:
                known = frames.value_columns(frame, keys)
                raise QueryError(
                    f"column {pair[name]!r} is not in {label}"
                    f"{catalog.closest(pair[name], known, 'columns')}"
                )
    left = frame_a[[*keys, *{a for a, _ in columns}]].rename(
        columns={a: f"{a}_a" for a, _ in columns}
    )
    right = frame_b[[*keys, *{b for _, b in columns}]].rename(
        columns={b: f"{b}_b" for _, b in columns}
    )
    joined = left.merge(right, on=list(keys))
    if joined.empty:
        raise QueryError(
            f"{label_a} and {label_b} have no common {level} entities that succeeded on both "
            f"sides: nothing to compare (compute both on the same run and level first)"
        )
    ids = _entity_ids(joined, keys)
    results = []
    for name_a, name_b in columns:
        a_series, b_series = joined[f"{name_a}_a"], joined[f"{name_b}_b"]
        kind = frames.column_kind(frame_a[name_a])
        both = a_series.notna() & b_series.notna()
        a_values, b_values = a_series[both].tolist(), b_series[both].tolist()
        id_values = [i for i, keep in zip(ids, both.tolist(), strict=True) if keep]
        label = name_a if name_a == name_b else f"{name_a} / {name_b}"
        if kind == "number":
            fa, fb = [float(v) for v in a_values], [float(v) for v in b_values]
            differing = tuple(i for i, x, y in zip(id_values, fa, fb, strict=True) if x != y)
            mad = (
                math.fsum(abs(x - y) for x, y in zip(fa, fb, strict=True)) / len(fa) if fa else None
            )
            results.append(
                ColumnAgreement(label, kind, len(fa), mean(fa), mean(fb),
                                correlation=pearson(fa, fb), mad=mad, disagreeing=differing)
            )  # fmt: skip
        else:
            plain_a = [frames.hashable(v) for v in a_values]
            plain_b = [frames.hashable(v) for v in b_values]
            same = [x == y for x, y in zip(plain_a, plain_b, strict=True)]
            rates = kind == "boolean"
            results.append(
                ColumnAgreement(
                    label,
                    kind,
                    len(same),
                    mean([float(bool(v)) for v in plain_a]) if rates else None,
                    mean([float(bool(v)) for v in plain_b]) if rates else None,
                    accuracy=sum(same) / len(same) if same else None,
                    kappa=cohen_kappa(plain_a, plain_b) if kind in ("string", "boolean") else None,
                    disagreeing=tuple(i for i, ok in zip(id_values, same, strict=True) if not ok),
                )  # fmt: skip
            )
    return Agreement(
        label_a, label_b, level, len(joined), len(frame_a) - len(joined),
        len(frame_b) - len(joined), results, joined,
    )  # fmt: skip


def _entity_ids(joined: pd.DataFrame, keys: Sequence[str]) -> list[str]:
    parts = [joined[k].astype(str).tolist() for k in keys[1:]] or [joined["run_id"].tolist()]
    return ["@".join(values) for values in zip(*parts, strict=True)]


def compare_versions(
    store: Store,
    judge: str,
    run_id: str,
    version_a: str,
    version_b: str,
    *,
    level: str = "trace",
    columns: Sequence[str] | None = None,
) -> Agreement:
    """Agreement of ``version_b`` with ``version_a`` of ``judge`` on one run."""
    level = catalog.parse_level(level).value
    frame_a = results_frame(store, ResultsQuery(judge, run_id, level, version_a, columns=columns))
    frame_b = results_frame(store, ResultsQuery(judge, run_id, level, version_b, columns=columns))
    records = version_records(store, judge, [version_a, version_b])

    def named(version: str) -> str:
        label = records.get((judge, version), ("", ""))[0]
        return f"{judge} {version}" + (f" ({label})" if label else "")

    return agreement(
        frame_a, frame_b, level=level, label_a=named(version_a), label_b=named(version_b)
    )


def compare_judges(
    store: Store,
    judge_a: str,
    judge_b: str,
    run_id: str,
    *,
    level: str = "trace",
    columns: Sequence[tuple[str, str]] | None = None,
) -> Agreement:
    """Agreement of two judges' columns on one run (e.g. an LLM judge against a heuristic)."""
    level, frame_a, frame_b = judge_frames(store, judge_a, judge_b, run_id, level=level)
    return agreement(
        frame_a, frame_b, level=level, label_a=judge_a, label_b=judge_b, columns=columns
    )


def judge_frames(
    store: Store, judge_a: str, judge_b: str, run_id: str, *, level: str = "trace"
) -> tuple[str, pd.DataFrame, pd.DataFrame]:
    """The checked level name and both judges' results frames of ``run_id`` at that level."""
    level = catalog.parse_level(level).value
    frame_a = results_frame(store, ResultsQuery(judge_a, run_id, level))
    frame_b = results_frame(store, ResultsQuery(judge_b, run_id, level))
    return level, frame_a, frame_b


def compare_with_grader(
    store: Store, judge: str, run_id: str, column: str, *, version: str | None = None
) -> Agreement:
    """A trace-level ``column`` of ``judge`` against each trace's own grader: a boolean column
    against the grader's ``passed``, a numeric one against the trace ``score``."""
    import pandas as pd

    frame = results_frame(store, ResultsQuery(judge, run_id, "trace", version, columns=[column]))
    kind = frames.column_kind(frame[column])
    if kind not in ("boolean", "number"):
        raise QueryError(
            f"column {column!r} of judge {judge!r} is {kind}: compare a boolean column with the "
            f"grader's passed verdict, or a numeric one with the trace score"
        )
    verdicts = pd.DataFrame(
        q.grader_verdicts(store, [run_id]), columns=["run_id", "trace_id", "score", "passed"]
    )
    grader_column = "passed" if kind == "boolean" else "score"
    grader = verdicts[["run_id", "trace_id", grader_column]].assign(status="ok")
    grader[grader_column] = grader[grader_column].astype(
        "boolean" if kind == "boolean" else "Float64"
    )
    return agreement(
        frame,
        grader,
        level="trace",
        label_a=f"{judge}.{column}",
        label_b=f"grader {grader_column}",
        columns=[(column, grader_column)],
    )
