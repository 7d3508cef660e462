"""Calibration: a judge's categorical and boolean columns measured against a reference (human
labels, usually), overall, per step and per phase, with bootstrap intervals.

For each column both sides have (or each given pair), over the entities both succeeded on and
both gave a value for:

- the confusion matrix (rows: the reference's value, columns: the judge's);
- accuracy and Cohen's kappa, each with a percentile bootstrap interval (entities resampled
  with replacement; a resample where a figure is undefined, e.g. kappa with one label, is left
  out of its interval);
- per category, the judge's precision (of the entities it put in the category, the share the
  reference put there too) and recall (of the reference's, the share the judge found), with
  intervals; for a boolean column recall of ``True`` is the TPR and recall of ``False`` the TNR;
- the same accuracy and kappa per step (and phase) and per phase;
- the disagreeing entities with both values.

Inter-annotator agreement is computed the same way on the entities two annotators labelled
(the queues' overlap share): the first two annotators of each entity (in order of labelling).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from manta_lib.errors import QueryError
from manta_lib.results import catalog, frames

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

#: A column with more distinct values than this is free text, not a category: it gets no
#: confusion matrix (its size is the square of the number of values).
MAX_CATEGORIES = 200


@dataclass(frozen=True)
class Estimate:
    """A figure and its bootstrap interval (None where undefined)."""

    value: float | None
    low: float | None = None
    high: float | None = None


@dataclass(frozen=True)
class CategoryScore:
    """The judge on one category: ``support`` entities the reference put there, ``predicted``
    the judge put there."""

    label: str
    support: int
    predicted: int
    precision: Estimate
    recall: Estimate


@dataclass(frozen=True)
class SliceAgreement:
    """Accuracy and kappa over one step (``step_number`` set) or one phase."""

    phase: str
    step_number: int | None
    n: int
    accuracy: Estimate
    kappa: Estimate
    disagreeing: int


@dataclass(frozen=True)
class Disagreement:
    """One entity where the judge and the reference differ."""

    entity_id: str
    run_id: str
    step_number: int | None
    phase: str
    judge_value: Any
    reference_value: Any


@dataclass(frozen=True)
class ColumnCalibration:
    """One column of the judge against the reference (see module docs)."""

    column: str
    kind: str
    n: int
    labels: list[str]
    #: ``confusion[i][j]``: entities the reference labelled ``labels[i]`` and the judge
    #: ``labels[j]``.
    confusion: list[list[int]]
    accuracy: Estimate
    kappa: Estimate
    per_category: list[CategoryScore]
    by_step: list[SliceAgreement]
    by_phase: list[SliceAgreement]
    disagreeing: list[Disagreement]
    #: Boolean columns: recall of True (TPR) and of False (TNR); None otherwise.
    tpr: Estimate | None = None
    tnr: Estimate | None = None


@dataclass(frozen=True)
class AnnotatorAgreement:
    """Two annotators on the same entities (the overlap share), one column."""

    column: str
    n: int
    accuracy: Estimate
    kappa: Estimate
    disagreeing: list[str]


@dataclass
class Calibration:
    """The whole calibration report of ``judge`` against ``reference`` on one run."""

    judge: str
    reference: str
    run_id: str
    level: str
    common: int
    only_judge: int
    only_reference: int
    columns: list[ColumnCalibration]
    inter_annotator: list[AnnotatorAgreement] = field(default_factory=list)
    #: Columns left out, with why (more distinct values than :data:`MAX_CATEGORIES`).
    skipped: dict[str, str] = field(default_factory=dict)
    resamples: int = 1000
    confidence: float = 0.95


def calibrate(
    judged: pd.DataFrame,
    reference_frame: pd.DataFrame,
    *,
    judge: str,
    reference: str,
    run_id: str,
    level: str = "trace",
    columns: Sequence[tuple[str, str]] | None = None,
    annotator_labels: Sequence[tuple[str, str, dict[str, Any]]] = (),
    resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Calibration:
    """``judge`` against ``reference`` over their results frames (``svc.results`` shape: ``run_id``,
    the level's keys, ``status`` and the value columns), e.g. the outputs of a judge's trial
    run on the labelled traces only, which stores nothing."""
    frame_a, frame_b = frames.ok_rows(judged), frames.ok_rows(reference_frame)
    keys = ("run_id", *frames.entity_keys(level, frame_a))
    if columns is None:
        columns = [
            (c, c)
            for c in frames.value_columns(frame_a, keys)
            if c in frame_b.columns and frames.column_kind(frame_a[c]) in ("string", "boolean")
        ]
    for pair, frame, name in ((0, frame_a, judge), (1, frame_b, reference)):
        for names in columns:
            if names[pair] not in frame.columns:
                known = frames.value_columns(frame, keys)
                raise QueryError(
                    f"column {names[pair]!r} is not in {name}"
                    f"{catalog.closest(names[pair], known, 'columns')}"
                )
    context = [c for c in ("step_number", "phase") if c in frame_b.columns and c not in keys]
    left = frame_a[[*keys, *{a for a, _ in columns}]].rename(
        columns={a: f"{a}__judge" for a, _ in columns}
    )
    right = frame_b[[*keys, *context, *{b for _, b in columns}]].rename(
        columns={b: f"{b}__reference" for _, b in columns}
    )
    joined = left.merge(right, on=list(keys))
    ids = _entity_ids(joined, keys)
    report = Calibration(
        judge, reference, run_id, level, len(joined), len(frame_a) - len(joined),
        len(frame_b) - len(joined), [], resamples=resamples, confidence=confidence,
    )  # fmt: skip
    for name_a, name_b in columns:
        values = set(joined[f"{name_a}__judge"].dropna().map(_label)) | set(
            joined[f"{name_b}__reference"].dropna().map(_label)
        )
        if len(values) > MAX_CATEGORIES:  # free text, not a category: no confusion matrix
            report.skipped[name_a if name_a == name_b else f"{name_a} / {name_b}"] = (
                f"{len(values)} distinct values (more than {MAX_CATEGORIES}: free text, not a "
                f"category)"
            )
            continue
        report.columns.append(
            _column(joined, ids, name_a, name_b, frames.column_kind(frame_b[name_b]), resamples,
                    confidence, seed)
        )  # fmt: skip
    if annotator_labels:
        report.inter_annotator = annotator_agreement(
            annotator_labels, [b for _, b in columns], resamples=resamples,
            confidence=confidence, seed=seed,
        )  # fmt: skip
    return report


def _entity_ids(joined: pd.DataFrame, keys: Sequence[str]) -> list[str]:
    parts = [joined[k].astype(str).tolist() for k in keys[1:]] or [joined["run_id"].tolist()]
    return ["@".join(values) for values in zip(*parts, strict=True)]


def _column(
    joined: pd.DataFrame,
    ids: list[str],
    name_a: str,
    name_b: str,
    kind: str,
    resamples: int,
    confidence: float,
    seed: int,
) -> ColumnCalibration:
    import numpy as np

    a_series, b_series = joined[f"{name_a}__judge"], joined[f"{name_b}__reference"]
    both = (a_series.notna() & b_series.notna()).tolist()
    judged = [_label(v) for v, keep in zip(a_series.tolist(), both, strict=True) if keep]
    truth = [_label(v) for v, keep in zip(b_series.tolist(), both, strict=True) if keep]
    kept = [i for i, keep in enumerate(both) if keep]
    labels = sorted(set(judged) | set(truth))
    index = {label: i for i, label in enumerate(labels)}
    ref = np.array([index[v] for v in truth], dtype=np.int64)
    hyp = np.array([index[v] for v in judged], dtype=np.int64)
    rng = np.random.default_rng(seed)
    stats = _bootstrap(ref, hyp, len(labels), resamples, rng)
    matrix = _confusion(ref, hyp, len(labels))
    point = _figures(matrix[None, :, :])
    per_category = [
        CategoryScore(
            label,
            int(matrix[i].sum()),
            int(matrix[:, i].sum()),
            _estimate(point["precision"][0, i], stats["precision"][:, i], confidence),
            _estimate(point["recall"][0, i], stats["recall"][:, i], confidence),
        )
        for i, label in enumerate(labels)
    ]
    by_recall = {c.label: c.recall for c in per_category}
    import pandas as pd

    steps: list[int | None] = [
        None
        if "step_number" not in joined or pd.isna(joined["step_number"].iloc[i])
        else int(joined["step_number"].iloc[i])
        for i in kept
    ]
    phases = [str(joined["phase"].iloc[i]) if "phase" in joined else "" for i in kept]
    slices_step: dict[tuple[str, int | None], list[int]] = {}
    slices_phase: dict[tuple[str, int | None], list[int]] = {}
    for row, (step, phase) in enumerate(zip(steps, phases, strict=True)):
        slices_step.setdefault((phase, step), []).append(row)
        slices_phase.setdefault((phase, None), []).append(row)
    return ColumnCalibration(
        column=name_a if name_a == name_b else f"{name_a} / {name_b}",
        kind="boolean" if kind == "boolean" else "category",
        n=len(truth),
        labels=labels,
        confusion=matrix.tolist(),
        accuracy=_estimate(point["accuracy"][0], stats["accuracy"], confidence),
        kappa=_estimate(point["kappa"][0], stats["kappa"], confidence),
        per_category=per_category,
        by_step=[
            _slice(key, rows, ref, hyp, len(labels), resamples, confidence, seed)
            for key, rows in sorted(slices_step.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0))
        ],
        by_phase=[
            _slice(key, rows, ref, hyp, len(labels), resamples, confidence, seed)
            for key, rows in sorted(slices_phase.items())
        ],
        disagreeing=[
            Disagreement(
                ids[i], str(joined["run_id"].iloc[i]), steps[r], phases[r], judged[r], truth[r]
            )
            for r, i in enumerate(kept)
            if judged[r] != truth[r]
        ],
        tpr=by_recall.get("True") if kind == "boolean" else None,
        tnr=by_recall.get("False") if kind == "boolean" else None,
    )


def _slice(
    key: tuple[str, int | None],
    rows: list[int],
    ref: np.ndarray,
    hyp: np.ndarray,
    size: int,
    resamples: int,
    confidence: float,
    seed: int,
) -> SliceAgreement:
    import numpy as np

    part_ref, part_hyp = ref[rows], hyp[rows]
    stats = _bootstrap(part_ref, part_hyp, size, resamples, np.random.default_rng(seed))
    point = _figures(_confusion(part_ref, part_hyp, size)[None, :, :])
    return SliceAgreement(
        key[0], key[1], len(rows),
        _estimate(point["accuracy"][0], stats["accuracy"], confidence),
        _estimate(point["kappa"][0], stats["kappa"], confidence),
        int((part_ref != part_hyp).sum()),
    )  # fmt: skip


def annotator_agreement(
    labels: Sequence[tuple[str, str, dict[str, Any]]],
    columns: Sequence[str],
    *,
    resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> list[AnnotatorAgreement]:
    """Agreement of the first two annotators of each entity labelled twice or more."""
    import numpy as np

    firsts: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for entity, annotator, values in labels:
        seen = firsts.setdefault(entity, [])
        if len(seen) < 2 and annotator not in {who for who, _ in seen}:
            seen.append((annotator, values))
    pairs = {e: v for e, v in firsts.items() if len(v) == 2}
    result = []
    for column in columns:
        rows = [
            (entity, _label(one[column]), _label(two[column]))
            for entity, ((_, one), (_, two)) in sorted(pairs.items())
            if one.get(column) is not None and two.get(column) is not None
        ]
        if not rows:
            continue
        names = sorted({x for _, a, b in rows for x in (a, b)})
        if len(names) > MAX_CATEGORIES:
            continue
        index = {name: i for i, name in enumerate(names)}
        first = np.array([index[a] for _, a, _ in rows], dtype=np.int64)
        second = np.array([index[b] for _, _, b in rows], dtype=np.int64)
        stats = _bootstrap(first, second, len(names), resamples, np.random.default_rng(seed))
        point = _figures(_confusion(first, second, len(names))[None, :, :])
        result.append(
            AnnotatorAgreement(
                column,
                len(rows),
                _estimate(point["accuracy"][0], stats["accuracy"], confidence),
                _estimate(point["kappa"][0], stats["kappa"], confidence),
                [entity for entity, a, b in rows if a != b],
            )  # fmt: skip
        )
    return result


# ------------------------------------------------------------------------- arithmetic


def _confusion(ref: np.ndarray, hyp: np.ndarray, size: int) -> np.ndarray:
    import numpy as np

    return np.bincount(ref * size + hyp, minlength=size * size).reshape(size, size)


def _figures(matrices: np.ndarray) -> dict[str, np.ndarray]:
    """Accuracy, kappa, per-category precision and recall of a stack of confusion matrices
    (NaN where undefined)."""
    import numpy as np

    totals = matrices.sum(axis=(1, 2)).astype(float)
    diagonal = np.diagonal(matrices, axis1=1, axis2=2).astype(float)
    rows = matrices.sum(axis=2).astype(float)  # reference counts
    cols = matrices.sum(axis=1).astype(float)  # judge counts
    with np.errstate(divide="ignore", invalid="ignore"):
        observed = diagonal.sum(axis=1) / totals
        expected = (rows * cols).sum(axis=1) / (totals * totals)
        kappa = np.where(expected < 1, (observed - expected) / (1 - expected), np.nan)
        precision = np.where(cols > 0, diagonal / cols, np.nan)
        recall = np.where(rows > 0, diagonal / rows, np.nan)
    return {"accuracy": observed, "kappa": kappa, "precision": precision, "recall": recall}


def _bootstrap(
    ref: np.ndarray, hyp: np.ndarray, size: int, resamples: int, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """The figures of ``resamples`` resamples of the entities, in chunks (bounded memory)."""
    import numpy as np

    n = len(ref)
    if not n or resamples < 1:
        empty = np.full((0,), np.nan)
        return {"accuracy": empty, "kappa": empty, "precision": np.full((0, size), np.nan),
                "recall": np.full((0, size), np.nan)}  # fmt: skip
    codes = ref * size + hyp
    chunk = max(1, min(resamples, 2_000_000 // max(n, 1)))
    parts: list[dict[str, np.ndarray]] = []
    for start in range(0, resamples, chunk):
        count = min(chunk, resamples - start)
        drawn = codes[rng.integers(0, n, size=(count, n))]
        offsets = (np.arange(count) * size * size)[:, None]
        flat = np.bincount((drawn + offsets).ravel(), minlength=count * size * size)
        parts.append(_figures(flat.reshape(count, size, size)))
    return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}


def _estimate(value: Any, samples: np.ndarray, confidence: float) -> Estimate:
    import numpy as np

    point = None if value is None or math.isnan(float(value)) else float(value)
    defined = samples[~np.isnan(samples)]
    if point is None or not defined.size:
        return Estimate(point)
    tail = (1 - confidence) / 2
    return Estimate(point, float(np.quantile(defined, tail)), float(np.quantile(defined, 1 - tail)))


def _label(value: Any) -> str:
    plain = frames.hashable(value)
    return str(plain)
