"""Labelling with the keyboard only in headless Chromium, then reading the labels back with
``manta results``.

The app runs under uvicorn in a thread of this process (the embedded store allows one process
per path); Chromium talks to it over 127.0.0.1. Screenshots go to ``artifacts/explorer/``.
"""

from __future__ import annotations

import csv
import io
import re
import sys

import pytest

from manta_lib.annotations import Annotations
from manta_lib.cli import main
from manta_lib.explorer import create_app
from manta_lib.store import Store
from tests.lib.explorer.browser import SHOTS, chromium_page
from tests.lib.explorer.conftest import ANNOTATE_RUN, AnnotateData, serve

pytestmark = [pytest.mark.serial, pytest.mark.slow, pytest.mark.timeout(240)]

NAME = "keyboard_kim"
CATEGORIES = ["passed", "looping", "wrong_answer", "tool_misuse"]
KEYS = ["2", "3", "4", "1", "2"]  # digit n picks the n-th category


def manta_results(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str
) -> list[dict[str, str]]:
    monkeypatch.setattr(sys, "argv", ["manta", "results", *args, "--format", "csv"])
    try:
        main()
    except SystemExit as exit_:
        assert not exit_.code, capsys.readouterr().err
    return list(csv.DictReader(io.StringIO(capsys.readouterr().out)))


def test_label_five_items_with_the_keyboard_then_read_them_with_manta_results(
    annotate_data: AnnotateData,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from playwright.sync_api import expect

    queue_id = annotate_data.queue_id
    item_url = re.compile(rf"/annotate/{queue_id}/items/(\d+)$")
    labelled: list[tuple[int, str, str]] = []  # (position, category, note)
    with (
        serve(create_app(annotate_data.settings, annotate=True)) as base,
        chromium_page("failure_annotate.png") as (page, errors),
    ):
        page.goto(f"{base}/annotate?next=/annotate/{queue_id}")
        page.keyboard.type(NAME)  # the name field has the focus
        page.keyboard.press("Enter")
        expect(page).to_have_url(f"{base}/annotate/{queue_id}")
        page.keyboard.press("Enter")  # "Label as keyboard_kim" has the focus
        expect(page).to_have_url(item_url)
        for i, key in enumerate(KEYS):
            url = page.url
            expect(page.locator("#label-form")).to_be_visible()
            page.keyboard.press(key)
            page.keyboard.press("n")
            page.keyboard.type(f"note {i}")
            if i == 0:
                page.screenshot(path=str(SHOTS / "10_label_item.png"))
            page.keyboard.press("Enter")
            expect(page).not_to_have_url(url)
            expect(page).to_have_url(item_url)
            position = int(item_url.search(url).group(1))  # type: ignore[union-attr]
            labelled.append((position, CATEGORIES[int(key) - 1], f"note {i}"))
        # s skips this item, u undoes the skip and reopens it
        skipped = page.url
        page.keyboard.press("s")
        expect(page).not_to_have_url(skipped)
        page.keyboard.press("u")
        expect(page).to_have_url(skipped + "?undone=1")
        expect(page.locator("#label-panel")).to_contain_text("was undone")
        # the labels show on the trace pages
        with Store.open(annotate_data.settings, ensure_schema=False) as store:
            first = Annotations(store).item(queue_id, labelled[0][0])
        page.goto(f"{base}/traces/{first.trace_id}")
        expect(page.locator("section[aria-label=labels]")).to_contain_text(NAME)
        expect(page.locator("section[aria-label=labels]")).to_contain_text(labelled[0][1])
        page.screenshot(path=str(SHOTS / "11_trace_with_label.png"))
    assert not errors, errors  # no script error, no CSP violation, no missing asset

    with Store.open(annotate_data.settings, ensure_schema=False) as store:
        notes = Annotations(store)
        traces = {p: notes.item(queue_id, p).trace_id for p, _, _ in labelled}
    rows = manta_results(monkeypatch, capsys, annotate_data.task.name, "--run", ANNOTATE_RUN)
    mine = {r["trace_id"]: (r["category"], r["note"]) for r in rows if r["annotator"] == NAME}
    assert mine == {traces[p]: (category, note) for p, category, note in labelled}
