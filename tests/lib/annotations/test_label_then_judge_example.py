"""examples/label_then_judge.py end to end: a queue of 30 failed demo rollouts, labelled
over HTTP by two annotators, the LLM judge (the loopback server) tried on them, and the
agreement per step it prints checked against scikit-learn over the same labels and answers.
The labels are given through the explorer's annotation endpoints, as its pages post them."""

from __future__ import annotations

import importlib
import zlib
from collections.abc import Iterator
from types import ModuleType

import pytest
from rich.console import Console
from starlette.testclient import TestClient

from manta_lib import MantaService
from manta_lib.annotations import Annotations
from manta_lib.demo import seed_demo
from manta_lib.explorer import create_app
from manta_lib.models import EntityLevel
from manta_lib.store import Store
from tests.lib.explorer.annotators import Annotator, position_of
from tests.lib.fake_openai import FakeOpenAIServer


@pytest.fixture
def judge_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[FakeOpenAIServer, ModuleType]]:
    """The loopback OpenAI server and ``examples.failure_modes`` with its judge pointed at it."""
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "MANTA_LLM_CACHE", "MANTA_LLM_PRICES"):
        monkeypatch.delenv(name, raising=False)
    with FakeOpenAIServer() as fake:
        monkeypatch.setenv("OPENAI_BASE_URL", fake.url)
        monkeypatch.setenv("OPENAI_API_KEY", "test-key")
        import examples.failure_modes

        module = importlib.reload(examples.failure_modes)  # the judge reads the environment
        yield fake, module
        module.judge.close()


def _kappa(a: list[str], b: list[str]) -> float | None:
    from sklearn.metrics import cohen_kappa_score  # slow to import: only when used

    value = float(cohen_kappa_score(a, b))
    return None if value != value else value  # NaN: one label on both sides


@pytest.mark.slow
def test_label_then_judge(store: Store, judge_env: tuple[FakeOpenAIServer, ModuleType]) -> None:
    fake, failure_modes = judge_env
    import examples.label_then_judge as example

    seed_demo(store, traces=300, seed=3)
    run_id = "run_grpo_math_v1"
    with MantaService(store) as svc:
        queue = example.create_queue(svc, run_id)
        ann = Annotations(svc)
        items = ann.items(queue.queue_id)
        assert len(items) == 30 and sum(i.copies == 2 for i in items) == 6
        scores = dict(
            store.rows(
                "SELECT trace_id, score FROM {db}.traces FINAL WHERE run_id = {r:String}",
                {"r": run_id},
            )
        )
        assert all(scores[i.trace_id] is not None and scores[i.trace_id] < 0.5 for i in items)
        assert len({i.step_number for i in items}) > 1  # stratified over the steps
        choices = [f.choices for f in example.TASK.fields() if f.name == "category"][0]
        by_position = {i.position: i for i in items}
        # Two people label through the HTTP endpoints the explorer's pages post, one item at
        # a time (next → label → next), each in a client of their own (cookies, CSRF token).
        app = create_app(store.settings, annotate=True)
        for who in ("ana", "bo"):
            with TestClient(app, base_url="http://127.0.0.1") as client:
                person = Annotator(client, who, "http://127.0.0.1")
                url = person.take(queue.queue_id)
                while (position := position_of(url)) is not None:
                    item = by_position[position]
                    pick = choices[(zlib.crc32(item.entity_id.encode()) + len(who)) % len(choices)]
                    saved = person.post(f"{url}/label", {"f.category": pick})
                    assert saved.status_code == 303, saved.text
                    url = str(saved.headers["location"])
        progress = ann.progress(queue.queue_id)
        assert progress.labelled == 30 and progress.double_labelled == 6

        report = example.judge_labelled(svc, run_id)
        labels = svc.results(example.TASK_NAME, run_id)
        calls = fake.stats()["completions"]
        assert 0 < calls <= 30  # only the labelled rollouts were judged (passed: no call)
        # The reference: the judge's answers again (cached: no new call) and scikit-learn.
        again = failure_modes.pipeline.run(
            run_id=run_id, mode="local", results=f"{example.TASK_NAME}.status == 'ok'",
            progress=False,
        )[EntityLevel.TRACE]  # fmt: skip
        assert fake.stats()["completions"] == calls
    answers = {o.entity_id: o.output.category for o in again}
    human = dict(zip(labels["trace_id"], labels["category"], strict=True))
    assert set(answers) == set(human) == {i.trace_id for i in items}
    [column] = report.columns
    assert column.n == 30
    ids = sorted(human)
    assert column.kappa.value == pytest.approx(
        _kappa([human[t] for t in ids], [answers[t] for t in ids])
    )
    for part in column.by_step:
        at_step = [
            i.trace_id for i in items if (i.step_number, i.phase) == (part.step_number, part.phase)
        ]
        assert part.n == len(at_step)
        assert part.accuracy.value == pytest.approx(
            sum(human[t] == answers[t] for t in at_step) / len(at_step)
        )
        expected = _kappa([human[t] for t in at_step], [answers[t] for t in at_step])
        assert part.kappa.value == (pytest.approx(expected) if expected is not None else None)
    assert sum(p.n for p in column.by_step) == 30
    [pairs] = report.inter_annotator
    both: dict[str, dict[str, str]] = {}
    for label in Annotations(store).annotator_labels(example.TASK_NAME, run_id):
        both.setdefault(label.entity_id, {})[label.annotator] = label.values["category"]
    twice = [v for v in both.values() if len(v) == 2]
    assert pairs.n == len(twice) == 6
    expected_pairs = _kappa([v["ana"] for v in twice], [v["bo"] for v in twice])
    assert pairs.kappa.value == (
        pytest.approx(expected_pairs) if expected_pairs is not None else None
    )

    console = Console(record=True, width=120)
    example.print_report(report, console)
    text = console.export_text()
    assert f"on 30 labelled rollouts of {run_id}" in text and "agreement per step" in text
    assert f"{column.accuracy.value:.2f}" in text
