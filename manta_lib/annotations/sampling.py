"""A queue's reproducible stratified sample.

The same candidates (taken in entity-id order, whatever order the store returns them in), the
same size, strata and seed give the same items at the same positions:

1. the candidates are grouped by stratum (step and phase, phase, or one group);
2. each stratum gets a share of the sample proportional to its size (largest remainder,
   ties to the earlier stratum), and that many of its entities are drawn without replacement;
3. the drawn entities are put in a random hand-out order, and the first
   ``round(overlap * n)`` positions are the overlap share (labelled by two annotators), so
   agreement figures build up from the first items labelled.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from manta_lib.errors import AnnotationError

Stratify = Literal["none", "step", "phase"]


@dataclass(frozen=True)
class Candidate:
    """An entity a queue may sample."""

    entity_id: str
    step_number: int
    phase: str
    datapoint_id: str
    trace_id: str


def parse_stratify(value: str | None) -> Stratify:
    text = (value or "none").strip().lower()
    if text not in ("none", "step", "phase"):
        raise AnnotationError(f"--stratify {value!r} is not one of: step, phase (or leave it out)")
    return text  # type: ignore[return-value]


def stratified_sample(
    candidates: Sequence[Candidate], size: int, *, stratify: Stratify, seed: int, overlap: float
) -> list[tuple[Candidate, int]]:
    """``(candidate, copies)`` in hand-out order (see module docs)."""
    import numpy as np

    if size < 1:
        raise AnnotationError(f"--sample {size} must be at least 1")
    if not 0 <= overlap <= 1:
        raise AnnotationError(f"--overlap {overlap} must be a share between 0 and 1 (e.g. 0.2)")
    ordered = sorted(candidates, key=lambda c: (c.entity_id, c.phase))
    strata: dict[tuple[object, ...], list[Candidate]] = {}
    for candidate in ordered:
        strata.setdefault(_stratum(candidate, stratify), []).append(candidate)
    keys = sorted(strata)
    total = len(ordered)
    size = min(size, total)
    quotas = [size * len(strata[k]) / total for k in keys] if total else []
    counts = [int(q) for q in quotas]
    by_remainder = sorted(range(len(keys)), key=lambda i: (-(quotas[i] - counts[i]), i))
    for index in by_remainder[: size - sum(counts)]:
        counts[index] += 1
    rng = np.random.default_rng(seed)
    chosen: list[Candidate] = []
    for key, count in zip(keys, counts, strict=True):
        members = strata[key]
        picks: list[int] = (
            [int(i) for i in rng.choice(len(members), size=count, replace=False)] if count else []
        )
        chosen.extend(members[i] for i in sorted(picks))
    order = rng.permutation(len(chosen))
    shared = round(overlap * len(chosen))
    return [(chosen[int(i)], 2 if rank < shared else 1) for rank, i in enumerate(order)]


def _stratum(candidate: Candidate, stratify: Stratify) -> tuple[object, ...]:
    if stratify == "step":
        return (candidate.phase, candidate.step_number)
    if stratify == "phase":
        return (candidate.phase,)
    return ()
