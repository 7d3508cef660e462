"""One explorer over a real chDB database per test module: demo runs plus hostile traces.

Seeding is the slow part, so the database is built once per test process and each module
reads a copy of it (its own ``MANTA_DATABASE`` on the process's shared chDB path) through the
app's test client; the explorer never writes. ``annotate_data`` is a smaller store with label
queues, for the annotation pages (the explorer's only writes).
"""

from __future__ import annotations

import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pytest
import uvicorn
from pydantic import BaseModel
from starlette.testclient import TestClient

from examples.tool_errors import pipeline as tool_errors
from manta_lib.annotations import Annotations, AnnotationTask, StoredLabel
from manta_lib.demo import seed_demo
from manta_lib.explorer import create_app
from manta_lib.models import EntityLevel
from manta_lib.settings import MantaSettings, load_settings
from manta_lib.store import Store
from tests.conftest import StoreTemplates, drop_database
from tests.lib.builders import load_traces, trace_line
from tests.lib.explorer.judges import echo_errors

DEMO_TRACES = 400
HOSTILE_RUN = "run_hostile"
RESULTS_RUN = "run_grpo_math_v1"
SECOND_RUN = "run_grpo_math_v2"
SCRIPT = "<script>alert('pwned')</script>"
LONG_LINE = "x" * 30_000
REPLACED = "caf\ufffd\ufffd na\ufffdve"  # bytes that were not UTF-8, decoded with replacement


@dataclass
class ExplorerData:
    client: TestClient
    settings: MantaSettings
    runs: dict[str, int]
    hostile_trace: str
    error_trace: str


def hostile_lines() -> list[dict]:
    """Traces whose contents try to break the page: markup, a 30k-char line, U+FFFD."""
    evil = trace_line(
        "t_evil",
        run_id=HOSTILE_RUN,
        step=1,
        datapoint="dp_<b>bold</b>",
        tool_errors=1,
        tool_calls=2,
        meta={"note": SCRIPT},
    )
    evil["spans"][0]["content"] = f"user says {SCRIPT} and {REPLACED}"
    evil["spans"][2]["tool_result"] = f"Traceback: {SCRIPT}\n{LONG_LINE}"
    evil["spans"][2]["attributes"]["error_type"] = "ToolError<img src=x onerror=alert(1)>"
    evil["spans"][3]["tool_arguments"] = {"code": SCRIPT}
    plain = [
        trace_line(f"t_plain_{i}", run_id=HOSTILE_RUN, step=i % 3, score=i / 10, datapoint="dp_p")
        for i in range(6)
    ]
    return [evil, *plain]


def _build_explorer_data() -> None:
    with Store.open(load_settings()) as store:
        seed_demo(store, traces=DEMO_TRACES)
        load_traces(store, hostile_lines(), Path(os.environ["MANTA_DATA_DIR"]).parent)
    # Real pipeline results: tool errors per trace, datapoint and step, and a judge that
    # stores the hostile trace's error text.
    tool_errors.run(RESULTS_RUN, mode="local", progress=False)
    tool_errors.run(SECOND_RUN, mode="local", progress=False)
    echo_errors.run(HOSTILE_RUN, mode="local", progress=False)


@pytest.fixture(scope="module")
def explorer_data(store_templates: StoreTemplates) -> Iterator[ExplorerData]:
    env = store_templates.copy("explorer", _build_explorer_data)
    with pytest.MonkeyPatch.context() as patch:
        for name in ("CLICKHOUSE_URL", "MANTA_DATABASE", "KESTREL_API_URL", "MANTA_DAGSTER_URL"):
            patch.delenv(name, raising=False)
        for name, value in env.items():
            patch.setenv(name, value)
        settings = load_settings()
        with Store.open(settings) as store:
            runs = dict(store.rows("SELECT run_id, count() FROM {db}.traces GROUP BY run_id"))
            error_trace = store.rows(
                "SELECT trace_id FROM {db}.spans WHERE kind = 'tool' AND is_error "
                "AND run_id = {r:String} ORDER BY trace_id LIMIT 1",
                {"r": RESULTS_RUN},
            )[0][0]
        app = create_app(settings, dagster_url="http://dagster.test:3000")
        with TestClient(app, base_url="http://127.0.0.1") as client:
            yield ExplorerData(client, settings, runs, "t_evil", error_trace)
    drop_database(settings.clickhouse_dsn, settings.database)


# ---- annotation: a small demo store with one label queue -----------------------------------

ANNOTATE_RUN = "run_grpo_math_v1"
CSRF_INPUT = re.compile(r'name="csrf_token" value="([^"]+)"')


class Verdict(BaseModel):
    """The label task of the annotation tests: a category and a free-text note."""

    category: Literal["passed", "looping", "wrong_answer", "tool_misuse"]
    note: str = ""


ANNOTATE_TASK = AnnotationTask("failure_human", Verdict, level=EntityLevel.TRACE)


@dataclass
class AnnotateData:
    settings: MantaSettings
    queue_id: str
    overlap_queue_id: str
    group_queue_id: str
    task: AnnotationTask

    def labels(self, queue_id: str | None = None) -> list[StoredLabel]:
        with Store.open(self.settings, ensure_schema=False) as store:
            return Annotations(store).labels(queue_id or self.queue_id)

    def client(self, **app_options: Any) -> TestClient:
        """A test client of an explorer over this store (annotation on unless told)."""
        app_options.setdefault("annotate", True)
        return TestClient(create_app(self.settings, **app_options), base_url="http://127.0.0.1")


def csrf_of(html: str) -> str:
    """The CSRF token a page's forms carry."""
    found = CSRF_INPUT.search(html)
    assert found is not None, "the page has no form with a CSRF token"
    return found.group(1)


def _build_annotate_data() -> tuple[str, str, str]:
    with Store.open(load_settings()) as store:
        seed_demo(store, traces=300)
        notes = Annotations(store)
        queue = notes.create_queue(ANNOTATE_TASK, ANNOTATE_RUN, sample=12, stratify="step", seed=7)
        overlap = notes.create_queue(
            ANNOTATE_TASK, ANNOTATE_RUN, sample=10, stratify="step", seed=8, overlap=0.3
        )
        groups = AnnotationTask("group_human", Verdict, level=EntityLevel.DATAPOINT)
        group_queue = notes.create_queue(groups, ANNOTATE_RUN, sample=3, seed=7)
    return queue.queue_id, overlap.queue_id, group_queue.queue_id


@pytest.fixture(scope="module")
def annotate_data(store_templates: StoreTemplates) -> Iterator[AnnotateData]:
    """A demo store (a few hundred traces) with a queue of 12 traces stratified by step, a
    queue of 10 with a 30% overlap share and a queue of 3 datapoint groups (each module gets
    its own copy: the annotation pages write labels)."""
    env = store_templates.copy("annotate", _build_annotate_data)
    with pytest.MonkeyPatch.context() as patch:
        for name in (
            "CLICKHOUSE_URL",
            "MANTA_DATABASE",
            "MANTA_EXPLORER_TOKEN",
            "MANTA_EXPLORER_TOKENS_FILE",
            "MANTA_EXPLORER_URL",
        ):
            patch.delenv(name, raising=False)
        for name, value in env.items():
            patch.setenv(name, value)
        settings = load_settings()
        queues = store_templates.value("annotate")
        yield AnnotateData(settings, *queues, ANNOTATE_TASK)
    drop_database(settings.clickhouse_dsn, settings.database)


@contextmanager
def serve(app: Any) -> Iterator[str]:
    """``app`` under uvicorn in a thread of this process (the embedded store allows one
    process per path), on a free loopback port: yields its base URL."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
