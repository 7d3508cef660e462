"""The calibration page: a judge against human labels, checked against counts made here from
the same verdicts and labels (the statistics themselves are checked against scikit-learn in the
annotation tests)."""

from __future__ import annotations

import random
import re
from collections import Counter
from datetime import UTC, datetime
from html import unescape
from typing import Literal

import pytest
from pydantic import BaseModel

from manta_lib.annotations import Annotations
from manta_lib.models import EntityLevel
from manta_lib.store import Store
from manta_lib.store.metadata import MetadataWriter
from tests.lib.explorer.conftest import ANNOTATE_RUN, AnnotateData

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

JUDGE = "failure_llm"
CATEGORIES = ("passed", "looping", "wrong_answer", "tool_misuse")


class JudgeVerdict(BaseModel):
    category: Literal["passed", "looping", "wrong_answer", "tool_misuse"]


@pytest.fixture(scope="module")
def calibrated(annotate_data: AnnotateData) -> dict[str, tuple[str, str, int, str]]:
    """A judge's verdict on every trace of the run and labels on two queues (two annotators
    on the overlap one): trace id → (judge's category, current label, step, phase)."""
    rng = random.Random(3)
    with Store.open(annotate_data.settings, ensure_schema=False) as store:
        rows = store.rows(
            "SELECT project_id, trace_id, datapoint_id, step_number, toString(phase) "
            "FROM {db}.traces FINAL WHERE run_id = {r:String}",
            {"r": ANNOTATE_RUN},
        )
        verdicts = {t: rng.choice(CATEGORIES) for _, t, _, _, _ in rows}
        where = {t: (s, p) for _, t, _, s, p in rows}
        writer = MetadataWriter(store, project_id=rows[0][0], judge=JUDGE)
        writer.add_results(
            [
                (t, JudgeVerdict(category=verdicts[t]), None, None, d, s, p)
                for _, t, d, s, p in rows
            ],
            level=EntityLevel.TRACE,
            run_id=ANNOTATE_RUN,
            judge_version="v1",
            computed_at=datetime.now(UTC),
        )
        writer.flush()
        notes = Annotations(store)
        current: dict[str, str] = {}  # the latest label of each trace is its current one
        for queue_id, annotator in (
            (annotate_data.queue_id, "ana"),
            (annotate_data.overlap_queue_id, "ana"),
            (annotate_data.overlap_queue_id, "bo"),
        ):
            while (item := notes.next_item(queue_id, annotator)) is not None:
                assert item.trace_id is not None
                judged = verdicts[item.trace_id]
                label = judged if rng.random() < 0.6 else rng.choice(CATEGORIES)
                notes.save_label(queue_id, item.position, annotator, {"category": label})
                current[item.trace_id] = label
    return {t: (verdicts[t], label, *where[t]) for t, label in current.items()}


def section(html: str, start: str, end: str = "</table>") -> str:
    return html.split(start, 1)[1].split(end, 1)[0]


def test_the_calibration_page_shows_the_confusion_and_links_every_disagreement(
    annotate_data: AnnotateData, calibrated: dict[str, tuple[str, str, int, str]]
) -> None:
    with annotate_data.client(annotate=False) as client:  # a read-only page
        page = client.get(f"/calibration?judge={JUDGE}&against=failure_human&run={ANNOTATE_RUN}")
    assert page.status_code == 200, page.text
    html = page.text
    assert f"{len(calibrated)} traces have both" in html
    # the confusion matrix: rows the label, columns the judge
    table = section(html, 'class="data compact confusion"')
    labels = re.findall(r'<th class="num">([^<]+)</th>', section(table, "<thead>", "</thead>"))
    shown = Counter[tuple[str, str]]()
    for row in re.findall(r"<tr><th>([^<]+)</th>(.*?)</tr>", section(table, "<tbody>", "</tbody>")):
        counts = re.findall(r'<td class="num[^"]*">([\d,]+)</td>', row[1])
        for judged, count in zip(labels, counts, strict=True):
            if int(count):
                shown[(row[0], judged)] = int(count)
    assert shown == Counter((label, judged) for judged, label, _, _ in calibrated.values())
    agreeing = sum(judged == label for judged, label, _, _ in calibrated.values())
    accuracy = section(html, '<dd class="accuracy">', "</dd>")
    assert accuracy.startswith(f"{agreeing / len(calibrated) * 100:.1f}%")
    # one row per step and phase of the labelled traces
    by_step = section(html, 'class="data compact by-step"')
    assert by_step.count("<tr>") - 1 == len({(p, s) for _, _, s, p in calibrated.values()})
    # every disagreeing trace is linked to its page
    disagreeing = section(html, 'class="data compact disagreeing"')
    linked = set(re.findall(r'<a href="/traces/([^"]+)">', disagreeing))
    assert linked == {t for t, (judged, label, _, _) in calibrated.items() if judged != label}
    # the two annotators' overlap
    assert 'id="inter-annotator"' in html


def test_the_calibration_page_without_a_choice_shows_the_form_and_names_an_unknown_judge(
    annotate_data: AnnotateData, calibrated: dict[str, tuple[str, str, int, str]]
) -> None:
    with annotate_data.client(annotate=False) as client:
        form = client.get(f"/calibration?run={ANNOTATE_RUN}")
        assert form.status_code == 200 and 'id="calibration-form"' in form.text
        assert f'<option value="{JUDGE}">' in form.text
        missing = client.get(
            f"/calibration?judge=failure_lm&against=failure_human&run={ANNOTATE_RUN}"
        )
    assert missing.status_code == 404
    assert JUDGE in unescape(missing.text)
