"""Annotating in the explorer over real HTTP: queue pages, the item page (the trace or group
page with the label form), save → next, skip, undo, labels on trace pages, and two annotators
labelling one queue at once."""

from __future__ import annotations

import re
import threading
from collections import Counter

import httpx
import pytest

from manta_lib.annotations import Annotations
from manta_lib.explorer import create_app
from manta_lib.store import Store
from tests.lib.explorer.annotators import Annotator, position_of
from tests.lib.explorer.conftest import ANNOTATE_RUN, AnnotateData, csrf_of, serve

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

ORIGIN = {"Origin": "http://127.0.0.1"}


def test_the_queue_list_and_a_queue_page_show_progress(annotate_data: AnnotateData) -> None:
    with annotate_data.client() as client:
        listing = client.get("/annotate")
        assert listing.status_code == 200
        for queue_id in (annotate_data.queue_id, annotate_data.group_queue_id):
            assert f'href="/annotate/{queue_id}"' in listing.text
        page = client.get(f"/annotate/{annotate_data.queue_id}")
        assert page.status_code == 200
        assert "failure_human" in page.text and ANNOTATE_RUN in page.text
        with Store.open(annotate_data.settings, ensure_schema=False) as store:
            total = len(Annotations(store).items(annotate_data.queue_id))
        assert f"<dt>items</dt><dd>{total}</dd>" in page.text
        assert client.get("/annotate/no-such-queue").status_code == 404


def test_labelling_starts_by_giving_a_name(annotate_data: AnnotateData) -> None:
    with annotate_data.client() as client:
        csrf = csrf_of(client.get("/annotate").text)
        answer = client.post(
            f"/annotate/{annotate_data.queue_id}/next",
            data={"csrf_token": csrf},
            headers=ORIGIN,
            follow_redirects=False,
        )
        assert answer.status_code == 303
        assert answer.headers["location"].startswith("/annotate?next=")
        bad = client.post(
            "/annotate/name", data={"name": "<b>x</b>", "csrf_token": csrf}, headers=ORIGIN
        )
        assert bad.status_code == 400 and "annotator name" in bad.text


def test_the_item_page_is_the_trace_page_with_the_label_form(
    annotate_data: AnnotateData,
) -> None:
    with annotate_data.client() as client:
        ana = Annotator(client, "page_reader", "http://127.0.0.1")
        url = ana.take(annotate_data.queue_id)
        position = position_of(url)
        assert position is not None
        with Store.open(annotate_data.settings, ensure_schema=False) as store:
            item = Annotations(store).item(annotate_data.queue_id, position)
        page = client.get(url)
        assert page.status_code == 200
        trace = client.get(f"/traces/{item.trace_id}").text
        # the trace page's own content, with the form beside it
        assert f"<h1>{item.trace_id} " in page.text
        for section in ('aria-label="conversation"', 'aria-label="grader"', "Timeline"):
            assert section in page.text and section in trace
        assert 'id="label-form"' in page.text and 'id="label-form"' not in trace
        keys = re.findall(r'value="([^"]+)" {2}data-key="(\d)"', page.text)
        assert keys == [
            ("passed", "1"),
            ("looping", "2"),
            ("wrong_answer", "3"),
            ("tool_misuse", "4"),
        ]
        assert 'name="f.note"' in page.text and "data-note" in page.text
        assert '<script src="/static/annotate.js" defer></script>' in page.text
        assert client.get("/static/annotate.js").status_code == 200


def test_save_opens_the_next_item_and_the_label_shows_on_the_trace_page(
    annotate_data: AnnotateData,
) -> None:
    with annotate_data.client() as client:
        ana = Annotator(client, "saver", "http://127.0.0.1")
        first = ana.take(annotate_data.queue_id)
        assert ana.take(annotate_data.queue_id) == first  # the same unfinished item again
        saved = ana.post(f"{first}/label", {"f.category": "tool_misuse", "f.note": "bad args"})
        assert saved.status_code == 303
        second = saved.headers["location"]
        assert position_of(second) is not None and second != first
        with Store.open(annotate_data.settings, ensure_schema=False) as store:
            item = Annotations(store).item(annotate_data.queue_id, position_of(first) or 0)
        trace = client.get(f"/traces/{item.trace_id}").text
        labels = trace.split('aria-label="labels"', 1)[1].split("</section>", 1)[0]
        assert "saver" in labels and "tool_misuse" in labels and "bad args" in labels


def test_skip_gives_another_item_and_undo_brings_it_back(annotate_data: AnnotateData) -> None:
    with annotate_data.client() as client:
        ana = Annotator(client, "skipper", "http://127.0.0.1")
        first = ana.take(annotate_data.queue_id)
        skipped = ana.post(f"{first}/skip")
        assert skipped.status_code == 303 and skipped.headers["location"] != first
        progress = client.get(f"/annotate/{annotate_data.queue_id}").text
        assert "<dt>skipped</dt><dd>1</dd>" in progress
        undone = ana.post(f"/annotate/{annotate_data.queue_id}/undo")
        assert undone.status_code == 303 and undone.headers["location"] == first + "?undone=1"
        assert "was undone" in client.get(undone.headers["location"]).text
        progress = client.get(f"/annotate/{annotate_data.queue_id}").text
        assert "<dt>skipped</dt><dd>0</dd>" in progress
        # undo a label: it is gone from the store
        saved = ana.post(f"{first}/label", {"f.category": "passed"})
        assert saved.status_code == 303
        assert any(label.annotator == "skipper" for label in annotate_data.labels())
        ana.post(f"/annotate/{annotate_data.queue_id}/undo")
        assert not any(label.annotator == "skipper" for label in annotate_data.labels())


def test_an_item_the_queue_does_not_have_is_an_error_page(annotate_data: AnnotateData) -> None:
    before = annotate_data.labels()
    with annotate_data.client() as client:
        ana = Annotator(client, "lost", "http://127.0.0.1")
        item = f"/annotate/{annotate_data.queue_id}/items/999"
        assert client.get(item).status_code == 404
        assert ana.post(f"{item}/label", {"f.category": "passed"}).status_code == 404
        skipped = ana.post(f"{item}/skip")
        assert skipped.status_code == 400 and "999" in skipped.text
    assert annotate_data.labels() == before


def test_a_group_task_labels_on_the_group_page_until_the_queue_is_done(
    annotate_data: AnnotateData,
) -> None:
    queue_id = annotate_data.group_queue_id
    with annotate_data.client() as client:
        ana = Annotator(client, "grouper", "http://127.0.0.1")
        url = ana.take(queue_id)
        seen = []
        while position_of(url) is not None:
            page = client.get(url)
            assert page.status_code == 200
            assert "<h1>Group " in page.text and 'id="label-form"' in page.text
            seen.append(position_of(url))
            saved = ana.post(f"{url}/label", {"f.category": "looping"})
            assert saved.status_code == 303
            url = saved.headers["location"]
        assert url == f"/annotate/{queue_id}?done=1"
        assert "Nothing left for you" in client.get(url).text
        with Store.open(annotate_data.settings, ensure_schema=False) as store:
            item = Annotations(store).item(queue_id, 0)
        group = client.get(
            f"/group?run={item.run_id}&datapoint={item.datapoint_id}&step={item.step_number}"
        ).text
        shown = group.split('aria-label="labels"', 1)[1].split("</section>", 1)[0]
        assert "grouper" in shown and "looping" in shown and 'id="label-form"' not in group
    labels = annotate_data.labels(queue_id)
    assert sorted(label.position for label in labels) == sorted(seen) == [0, 1, 2]


def test_two_annotators_at_once_share_no_item_and_lose_no_label(
    annotate_data: AnnotateData,
) -> None:
    """Two HTTP clients label the overlap queue at the same time against one uvicorn server:
    every item gets its copies, an item of one copy is labelled by one of them only, and every
    save is in the store."""
    queue_id = annotate_data.overlap_queue_id
    with Store.open(annotate_data.settings, ensure_schema=False) as store:
        copies = {item.position: item.copies for item in Annotations(store).items(queue_id)}
    assert 1 in copies.values() and 2 in copies.values()
    saved: dict[str, list[int]] = {}
    failures: list[BaseException] = []
    with serve(create_app(annotate_data.settings, annotate=True)) as base:
        start = threading.Barrier(2)

        def label_all(name: str) -> None:
            try:
                with httpx.Client(base_url=base, timeout=60) as client:
                    ana = Annotator(client, name, base)
                    mine: list[int] = []
                    start.wait()
                    url = ana.take(queue_id)
                    while (position := position_of(url)) is not None:
                        answer = ana.post(f"{url}/label", {"f.category": "wrong_answer"})
                        assert answer.status_code == 303, answer.text
                        mine.append(position)
                        url = answer.headers["location"]
                    saved[name] = mine
            except BaseException as exc:  # noqa: BLE001 - reported by the main thread
                failures.append(exc)

        threads = [threading.Thread(target=label_all, args=(n,)) for n in ("left", "right")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=150)
    assert not failures, failures
    left, right = set(saved["left"]), set(saved["right"])
    assert len(left) == len(saved["left"]) and len(right) == len(saved["right"])
    single = {p for p, n in copies.items() if n == 1}
    assert not (left & right & single)  # no item of one copy labelled twice
    assert left & right == {p for p, n in copies.items() if n == 2}
    assert left | right == set(copies)
    stored = Counter((label.annotator, label.position) for label in annotate_data.labels(queue_id))
    expected = Counter([("left", p) for p in left] + [("right", p) for p in right])
    assert stored == expected  # every save is stored, once
