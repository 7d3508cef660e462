"""Calibration of a judge against human labels, checked against scikit-learn."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime
from typing import Literal

import numpy as np
import pytest
from pydantic import BaseModel
from typer.testing import CliRunner

from manta_lib import MantaService
from manta_lib.annotations import Annotations, AnnotationTask
from manta_lib.models import EntityLevel
from manta_lib.store import Store
from manta_lib.store.metadata import MetadataWriter

# Seeded stores or seconds per test: make test runs them, make check leaves them out.
pytestmark = pytest.mark.slow

CATEGORIES = ("passed", "looping", "wrong_tool", "other")


class Verdict(BaseModel):
    category: Literal["passed", "looping", "wrong_tool", "other"]
    flagged: bool


class Label(BaseModel):
    category: Literal["passed", "looping", "wrong_tool", "other"]
    flagged: bool
    note: str = ""


def _store_judge(store: Store, run_id: str, rng: random.Random) -> dict[str, Verdict]:
    """A judge's trace results written as any pipeline writes them."""
    rows = store.rows(
        "SELECT project_id, trace_id, datapoint_id, step_number, toString(phase) "
        "FROM {db}.traces FINAL WHERE run_id = {r:String}",
        {"r": run_id},
    )
    verdicts = {
        t: Verdict(category=rng.choice(CATEGORIES), flagged=rng.random() < 0.4)
        for _, t, _, _, _ in rows
    }
    writer = MetadataWriter(store, project_id=rows[0][0], judge="heuristic")
    writer.add_results(
        [(t, verdicts[t], None, None, d, s, p) for _, t, d, s, p in rows],
        level=EntityLevel.TRACE,
        run_id=run_id,
        judge_version="v1",
        computed_at=datetime.now(UTC),
    )
    writer.flush()
    return verdicts


@pytest.fixture
def labelled(store: Store, demo_run: str) -> tuple[str, dict[str, Verdict]]:
    """A judge on every trace and two annotators labelling a 40-item queue (25% overlap),
    agreeing with the judge most of the time."""
    rng = random.Random(5)
    verdicts = _store_judge(store, demo_run, rng)
    ann = Annotations(store)
    task = AnnotationTask("heuristic_human", Label)
    queue = ann.create_queue(task, demo_run, sample=40, stratify="step", seed=9, overlap=0.25)
    for annotator in ("ana", "bo"):
        while (item := ann.next_item(queue.queue_id, annotator)) is not None:
            assert item.trace_id is not None
            judged = verdicts[item.trace_id]
            category = judged.category if rng.random() < 0.7 else rng.choice(CATEGORIES)
            flagged = judged.flagged if rng.random() < 0.8 else not judged.flagged
            ann.save_label(
                queue.queue_id, item.position, annotator,
                {"category": category, "flagged": flagged},
            )  # fmt: skip
    return demo_run, verdicts


def test_calibration_matches_scikit_learn(
    store: Store, labelled: tuple[str, dict[str, Verdict]]
) -> None:
    # imported here: scikit-learn takes seconds to import, in every worker collecting the file
    from sklearn.metrics import cohen_kappa_score, confusion_matrix, precision_recall_fscore_support

    run_id, _ = labelled
    with MantaService(store) as svc:
        result = svc.compare_judges("heuristic", "heuristic_human", run_id, resamples=500)
        human = svc.results("heuristic_human", run_id)
        judge = svc.results("heuristic", run_id)
    report = result.calibration
    assert report is not None
    merged = human.merge(judge, on="trace_id", suffixes=("_h", "_j"))
    assert report.common == len(merged) == 40
    by_name = {c.column: c for c in report.columns}
    assert set(by_name) == {"category", "flagged"}  # the shared categorical/boolean columns

    category = by_name["category"]
    truth, guess = merged["category_h"].tolist(), merged["category_j"].tolist()
    assert category.kappa.value == pytest.approx(cohen_kappa_score(truth, guess))
    assert category.accuracy.value == pytest.approx(np.mean(np.array(truth) == np.array(guess)))
    assert category.confusion == confusion_matrix(truth, guess, labels=category.labels).tolist()
    precision, recall, _, support = precision_recall_fscore_support(
        truth, guess, labels=category.labels, zero_division=np.nan
    )
    for i, score in enumerate(category.per_category):
        assert score.support == support[i]
        assert score.precision.value == pytest.approx(precision[i], nan_ok=True)
        assert score.recall.value == pytest.approx(recall[i], nan_ok=True)
    assert {d.entity_id for d in category.disagreeing} == set(
        merged.loc[merged["category_h"] != merged["category_j"], "trace_id"]
    )
    # Per step: the same figures over each step's entities.
    for part in category.by_step:
        rows = merged[
            (merged["step_number_h"] == part.step_number) & (merged["phase_h"] == part.phase)
        ]
        assert part.n == len(rows)
        assert part.accuracy.value == pytest.approx(
            float((rows["category_h"] == rows["category_j"]).mean())
        )
        if rows["category_h"].nunique() > 1 or rows["category_j"].nunique() > 1:
            assert part.kappa.value == pytest.approx(
                cohen_kappa_score(rows["category_h"], rows["category_j"])
            )
    assert sum(p.n for p in category.by_step) == 40
    # The interval: an independent percentile bootstrap of the accuracy lands close by.
    same = (np.array(truth) == np.array(guess)).astype(float)
    draws = np.random.default_rng(123).choice(same, size=(4000, len(same))).mean(axis=1)
    assert category.accuracy.low == pytest.approx(np.quantile(draws, 0.025), abs=0.04)
    assert category.accuracy.high == pytest.approx(np.quantile(draws, 0.975), abs=0.04)
    assert category.accuracy.low <= category.accuracy.value <= category.accuracy.high

    flagged = by_name["flagged"]
    truth_b = merged["flagged_h"].astype(bool).tolist()
    guess_b = merged["flagged_j"].astype(bool).tolist()
    tn, fp, fn, tp = confusion_matrix(truth_b, guess_b, labels=[False, True]).ravel()
    assert flagged.kind == "boolean"
    assert flagged.tpr is not None and flagged.tpr.value == pytest.approx(tp / (tp + fn))
    assert flagged.tnr is not None and flagged.tnr.value == pytest.approx(tn / (tn + fp))

    # Inter-annotator agreement on the overlap share (10 items labelled by both).
    ann = Annotations(store)
    labels = ann.annotator_labels("heuristic_human", run_id)
    pairs: dict[str, dict[str, str]] = {}
    for label in labels:
        pairs.setdefault(label.entity_id, {})[label.annotator] = label.values["category"]
    both = {e: v for e, v in pairs.items() if len(v) == 2}
    assert len(both) == 10
    [iaa] = [a for a in report.inter_annotator if a.column == "category"]
    assert iaa.n == 10
    assert iaa.kappa.value == pytest.approx(
        cohen_kappa_score([v["ana"] for v in both.values()], [v["bo"] for v in both.values()])
    )


def test_manta_compare_against_human_labels(
    store: Store, labelled: tuple[str, dict[str, Verdict]]
) -> None:
    from manta_lib.cli import _register_commands, app

    run_id, _ = labelled
    _register_commands()
    runner = CliRunner()
    out = runner.invoke(
        app, ["compare", "heuristic", "--run", run_id, "--against", "heuristic_human", "-f", "json"]
    )
    assert out.exit_code == 0, out.output
    summary = json.loads(out.output)
    with MantaService(store) as svc:
        report = svc.compare_judges("heuristic", "heuristic_human", run_id).calibration
    assert report is not None
    [category] = [c for c in summary["calibration"]["columns"] if c["column"] == "category"]
    expected = next(c for c in report.columns if c.column == "category")
    assert category["kappa"]["value"] == pytest.approx(expected.kappa.value)
    assert category["confusion"] == expected.confusion
    text = runner.invoke(app, ["compare", "heuristic", "--run", run_id, "--against",
                               "heuristic_human", "-f", "table"])  # fmt: skip
    assert text.exit_code == 0, text.output
    assert "kappa" in text.output and "per step" in text.output
    assert "inter-annotator" in text.output


def test_free_text_gets_no_confusion_matrix() -> None:
    import pandas as pd

    from manta_lib.results.calibration import MAX_CATEGORIES, calibrate

    n = MAX_CATEGORIES + 50
    base = {"run_id": "r", "trace_id": [f"t{i}" for i in range(n)], "status": "ok",
            "step_number": [i % 3 for i in range(n)], "phase": "train"}  # fmt: skip
    judged = pd.DataFrame({**base, "why": [f"reason {i}" for i in range(n)],
                           "ok": [i % 2 == 0 for i in range(n)]})  # fmt: skip
    labels = pd.DataFrame({**base, "why": [f"because {i}" for i in range(n)],
                           "ok": [i % 4 == 0 for i in range(n)]})  # fmt: skip
    report = calibrate(judged, labels, judge="a", reference="b", run_id="r", resamples=50)
    assert [c.column for c in report.columns] == ["ok"]
    assert "why" in report.skipped and "free text" in report.skipped["why"]
    [ok] = report.columns
    assert ok.accuracy.value == pytest.approx(
        sum((i % 2 == 0) == (i % 4 == 0) for i in range(n)) / n
    )
