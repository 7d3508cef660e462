"""Queues: reproducible stratified samples, hand-out with overlap, labels, skips and undo."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Literal

import pytest
from pydantic import BaseModel

from manta_lib import MantaService
from manta_lib.annotations import Annotations, AnnotationTask
from manta_lib.errors import AnnotationError
from manta_lib.models import EntityLevel
from manta_lib.store import Store

# Seeded stores or seconds per test: make test runs them, make check leaves them out.
pytestmark = pytest.mark.slow


def _steps(store: Store, run_id: str) -> dict[int, int]:
    rows = store.rows(
        "SELECT step_number, count() FROM {db}.traces FINAL WHERE run_id = {r:String} "
        "GROUP BY step_number",
        {"r": run_id},
    )
    return {int(s): int(n) for s, n in rows}


def test_a_queue_is_a_reproducible_stratified_sample(
    ann: Annotations, task: AnnotationTask, demo_run: str, store: Store
) -> None:
    queue = ann.create_queue(task, demo_run, sample=20, stratify="step", seed=7, overlap=0.2)
    items = ann.items(queue.queue_id)
    assert len(items) == 20 and len({i.entity_id for i in items}) == 20
    assert sum(i.copies == 2 for i in items) == 4  # round(0.2 * 20)
    # Proportional allocation: each step's count is within one of its share.
    steps = _steps(store, demo_run)
    total = sum(steps.values())
    per_step = Counter(i.step_number for i in items)
    for step, n in steps.items():
        assert abs(per_step.get(step, 0) - 20 * n / total) < 1
    # Each item is a trace of that step.
    traces = dict(
        store.rows(
            "SELECT trace_id, step_number FROM {db}.traces FINAL WHERE run_id = {r:String}",
            {"r": demo_run},
        )
    )
    assert all(traces[i.trace_id] == i.step_number for i in items)
    # Same definition: same queue; another seed: another sample.
    again = ann.create_queue(task, demo_run, sample=20, stratify="step", seed=7, overlap=0.2)
    assert again.queue_id == queue.queue_id and ann.items(again.queue_id) == items
    other = ann.create_queue(task, demo_run, sample=20, stratify="step", seed=8, overlap=0.2)
    assert [i.entity_id for i in ann.items(other.queue_id)] != [i.entity_id for i in items]
    # Rebuilt from the store by a fresh object: same task, same fields.
    rebuilt = Annotations(store).task(queue.queue_id)
    assert rebuilt.version == task.version and rebuilt.fields() == task.fields()


def test_where_selects_the_traces_by_stored_results(
    ann: Annotations, task: AnnotationTask, demo_run: str, store: Store
) -> None:
    first = ann.create_queue(task, demo_run, sample=5, seed=1)
    for item in ann.items(first.queue_id):
        ann.save_label(first.queue_id, item.position, "ana", {"category": "looping"})
    looping = ann.create_queue(
        task, demo_run, sample=50, where="failure_modes_human.category == 'looping'", seed=2
    )
    assert {i.entity_id for i in ann.items(looping.queue_id)} == {
        i.entity_id for i in ann.items(first.queue_id)
    }


def test_hand_out_overlap_skip_undo_and_progress(
    ann: Annotations, task: AnnotationTask, demo_run: str
) -> None:
    queue = ann.create_queue(task, demo_run, sample=6, seed=3, overlap=0.34)  # 2 overlap items
    qid = queue.queue_id
    a = ann.next_item(qid, "ana")
    assert a is not None and a.position == 0 and a.copies == 2
    assert ann.next_item(qid, "ana") == a  # asking again: the same unfinished item
    b = ann.next_item(qid, "bo")
    assert b is not None and b.position == 0  # the overlap share goes to two annotators
    c = ann.next_item(qid, "cy")
    assert c is not None and c.position == 1  # never to a third
    ann.save_label(qid, a.position, "ana", {"category": "looping", "note": "same call 5x"})
    ann.save_label(qid, b.position, "bo", {"category": "wrong_tool"})
    ann.skip(qid, c.position, "cy")
    d = ann.next_item(qid, "cy")
    assert d is not None and d.position == 2  # a skip is never handed back to its skipper
    ann.save_label(qid, d.position, "cy", {"category": "other", "severity": 2})
    e = ann.next_item(qid, "ana")
    assert e is not None and e.position == 1  # the skipped item goes to someone else
    progress = ann.progress(qid)
    assert (progress.total, progress.labelled, progress.skipped) == (6, 2, 1)
    assert progress.per_annotator == {"ana": 1, "bo": 1, "cy": 1}
    assert progress.double_labelled == 1

    # Undo: cy's last label is reverted and cy gets that item back.
    undone = ann.undo(qid, "cy")
    assert undone is not None and undone.position == 2
    assert ann.next_item(qid, "cy") == undone
    assert ann.progress(qid).per_annotator == {"ana": 1, "bo": 1}
    # A revision keeps the history; the current label is the revision.
    ann.save_label(qid, a.position, "ana", {"category": "wrong_tool"})
    [label] = [x for x in ann.labels(qid) if x.annotator == "ana"]
    assert label.values["category"] == "wrong_tool"
    assert [h["category"] for h in label.history] == ["looping"]
    shown = ann.labels_for(demo_run, a.entity_id)
    assert sorted(x.annotator for x in shown) == ["ana", "bo"]


def test_an_invalid_label_is_refused_and_nothing_is_stored(
    ann: Annotations, task: AnnotationTask, demo_run: str, store: Store
) -> None:
    queue = ann.create_queue(task, demo_run, sample=3, seed=3)
    before = store.rows("SELECT count() FROM {db}.annotation_events")[0][0]
    with pytest.raises(AnnotationError, match=r"category='fine'.*passed, looping"):
        ann.save_label(queue.queue_id, 0, "ana", {"category": "fine"})
    with pytest.raises(AnnotationError, match=r"no field\(s\) colour"):
        ann.save_label(queue.queue_id, 0, "ana", {"category": "passed", "colour": "red"})
    with pytest.raises(AnnotationError, match="annotator"):
        ann.save_label(queue.queue_id, 0, " ", {"category": "passed"})
    with pytest.raises(AnnotationError, match="no item at position 3"):
        ann.save_label(queue.queue_id, 3, "ana", {"category": "passed"})
    with pytest.raises(AnnotationError, match="no annotation queue"):
        ann.next_item("nope", "ana")
    assert store.rows("SELECT count() FROM {db}.annotation_events")[0][0] == before
    assert store.rows("SELECT count() FROM {db}.entity_metadata")[0][0] == 0


def test_labels_are_results(
    ann: Annotations, task: AnnotationTask, demo_run: str, store: Store
) -> None:
    queue = ann.create_queue(task, demo_run, sample=4, seed=5, overlap=0.25)
    items = ann.items(queue.queue_id)
    ann.save_label(queue.queue_id, 0, "ana", {"category": "looping"})
    ann.save_label(queue.queue_id, 0, "bo", {"category": "passed", "confident": False})
    ann.save_label(queue.queue_id, 1, "ana", {"category": "wrong_tool", "severity": 3})
    ann.save_label(queue.queue_id, 2, "ana", {"category": "other"})
    ann.undo(queue.queue_id, "ana")  # item 2 has no label left: not a result any more
    with MantaService(store) as svc:
        frame = svc.results("failure_modes_human", demo_run).set_index("trace_id")
        assert sorted(frame.index) == sorted([items[0].entity_id, items[1].entity_id])
        assert frame.loc[items[0].entity_id, "category"] == "passed"  # the latest label
        assert frame.loc[items[0].entity_id, "annotator"] == "bo"
        assert frame.loc[items[1].entity_id, "severity"] == 3
        assert set(frame["judge_version"]) == {task.version}
        looping = svc.get_traces(demo_run, results="failure_modes_human.category == 'wrong_tool'")
        assert [t.trace_id for t in looping] == [items[1].entity_id]


def test_two_clients_never_share_a_non_overlap_item_and_lose_no_label(
    task: AnnotationTask, demo_run: str, store: Store
) -> None:
    queue = Annotations(store).create_queue(task, demo_run, sample=30, seed=11, overlap=0.2)
    handed: dict[str, list[int]] = {"ana": [], "bo": []}
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def annotate(name: str) -> None:
        client = Annotations(store)  # each client its own object, as two requests would
        try:
            start.wait()
            while (item := client.next_item(queue.queue_id, name)) is not None:
                handed[name].append(item.position)
                client.save_label(queue.queue_id, item.position, name, {"category": "other"})
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=annotate, args=(n,)) for n in handed]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    items = {i.position: i for i in Annotations(store).items(queue.queue_id)}
    both = set(handed["ana"]) & set(handed["bo"])
    assert all(items[p].copies == 2 for p in both)  # only overlap items go to both
    overlap = {p for p, i in items.items() if i.copies == 2}
    assert both == overlap  # and each of them does
    assert set(handed["ana"]) | set(handed["bo"]) == set(items)
    progress = Annotations(store).progress(queue.queue_id)
    assert progress.labelled == 30
    assert sum(progress.per_annotator.values()) == 30 + len(overlap)  # no label lost


class GroupLabel(BaseModel):
    diverse: bool
    verdict: Literal["useful", "degenerate"]


def test_a_datapoint_task_labels_groups_stored_at_the_datapoint_level(
    ann: Annotations, demo_run: str, store: Store
) -> None:
    task = AnnotationTask("groups_human", GroupLabel, level=EntityLevel.DATAPOINT)
    queue = ann.create_queue(task, demo_run, sample=5, stratify="phase", seed=2)
    groups = set(
        store.rows(
            "SELECT datapoint_id, step_number, toString(phase) FROM {db}.traces FINAL "
            "WHERE run_id = {r:String} GROUP BY ALL",
            {"r": demo_run},
        )
    )
    items = ann.items(queue.queue_id)
    assert len(items) == 5 and all(i.trace_id is None for i in items)
    assert all((i.datapoint_id, i.step_number, i.phase) in groups for i in items)
    assert all(i.entity_id == f"{i.datapoint_id}@{i.step_number}" for i in items)
    item = ann.next_item(queue.queue_id, "ana")
    assert item is not None
    ann.save_label(
        queue.queue_id, item.position, "ana", {"diverse": False, "verdict": "degenerate"}
    )
    with MantaService(store) as svc:
        frame = svc.results("groups_human", demo_run, level="datapoint")
    assert frame[["datapoint_id", "step_number", "verdict", "diverse", "annotator"]].to_dict(
        "records"
    ) == [
        {"datapoint_id": item.datapoint_id, "step_number": item.step_number,
         "verdict": "degenerate", "diverse": False, "annotator": "ana"}
    ]  # fmt: skip


def test_an_unfinished_lease_frees_the_item_after_the_lease_time(
    ann: Annotations, task: AnnotationTask, demo_run: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue = ann.create_queue(task, demo_run, sample=3, seed=4)
    first = ann.next_item(queue.queue_id, "ana")
    assert first is not None
    other = ann.next_item(queue.queue_id, "bo")
    assert other is not None and other.position != first.position  # held by ana
    monkeypatch.setattr("manta_lib.annotations.queue.LEASE_SECONDS", 0)
    late = ann.next_item(queue.queue_id, "cy")
    assert late is not None and late.position == first.position  # ana's lease ran out


def test_deleting_a_run_deletes_its_queues_and_labels(
    ann: Annotations, task: AnnotationTask, demo_run: str, store: Store
) -> None:
    from manta_lib.store.trace_writes import delete_run

    queue = ann.create_queue(task, demo_run, sample=5, seed=1)
    item = ann.next_item(queue.queue_id, "ana")
    assert item is not None
    ann.save_label(queue.queue_id, item.position, "ana", {"category": "looping"})
    other_run = str(
        store.rows(
            "SELECT run_id FROM {db}.traces WHERE run_id != {r:String} LIMIT 1", {"r": demo_run}
        )[0][0]
    )
    kept = ann.create_queue(task, other_run, sample=3, seed=1)

    def rows(table: str, queue_id: str) -> int:
        return int(
            store.rows(
                f"SELECT count() FROM {{db}}.{table} WHERE queue_id = {{q:String}}",
                {"q": queue_id},
            )[0][0]
        )

    assert rows("annotation_events", queue.queue_id) > 0
    delete_run(store, demo_run)
    for table in ("annotation_queues", "annotation_items", "annotation_events"):
        assert rows(table, queue.queue_id) == 0, table
    assert rows("annotation_items", kept.queue_id) == 3  # another run's queue stays
