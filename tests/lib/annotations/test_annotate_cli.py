"""`manta annotate ...` end to end on a chDB store: task, queue, status, import, export, and
the labels read back through `manta results` and `manta export`."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from manta_lib import MantaService
from manta_lib.annotations import Annotations
from manta_lib.cli import _register_commands, app
from manta_lib.errors import AnnotationError
from manta_lib.store import Store

# Seeded stores or seconds per test: make test runs them, make check leaves them out.
pytestmark = pytest.mark.slow


@pytest.fixture
def manta(monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    _register_commands()
    # The command's console took its width when first imported (maybe by an earlier test):
    # give it a wide one so table cells do not wrap.
    from manta_lib.cli import annotate_commands

    monkeypatch.setattr(annotate_commands.console, "width", 160)
    return CliRunner(env={"COLUMNS": "160"})


def _run(runner: CliRunner, *args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def test_annotate_from_the_command_line(
    manta: CliRunner, store: Store, demo_run: str, tmp_path: Path
) -> None:
    store.close()  # the commands open the store themselves
    out = _run(
        manta, "annotate", "create", "failure_modes_human", "--run", demo_run, "--sample", "12",
        "--stratify", "step", "--seed", "7", "--overlap", "0.25",
        "--category", "passed,looping,wrong_tool", "--note",
    )  # fmt: skip
    queue_id = out.strip().splitlines()[-1]
    with MantaService() as svc:
        ann = Annotations(svc.store)
        task = ann.task(queue_id)
        assert [(f.name, f.kind, f.choices) for f in task.fields()] == [
            ("category", "category", ["passed", "looping", "wrong_tool"]),
            ("note", "text", []),
        ]
        items = ann.items(queue_id)
    assert len(items) == 12 and sum(i.copies == 2 for i in items) == 3

    # Import: one bad line and nothing is stored; fixed, every label is.
    bad = tmp_path / "bad.csv"
    bad.write_text(
        "trace_id,annotator,category,note\n"
        f"{items[0].trace_id},ana,looping,\n{items[1].trace_id},ana,sleepy,\n"
    )
    result = manta.invoke(
        app, ["annotate", "import", str(bad), "--task", "failure_modes_human", "--run", demo_run]
    )
    assert result.exit_code == 1  # main() prints a MantaError as one line
    assert isinstance(result.exception, AnnotationError)
    assert "category='sleepy'" in str(result.exception)
    assert "passed, looping, wrong_tool" in str(result.exception)
    good = tmp_path / "labels.jsonl"
    good.write_text(
        "".join(
            json.dumps(
                {
                    "run_id": demo_run,
                    "trace_id": i.trace_id,
                    "annotator": who,
                    "category": category,
                    "note": "imported",
                }
            )
            + "\n"
            for i, who, category in (
                (items[0], "ana", "looping"),
                (items[1], "ana", "passed"),
                (items[0], "bo", "wrong_tool"),
                (items[0], "ana", "wrong_tool"),
            )
        )  # fmt: skip
    )
    _run(manta, "annotate", "import", str(good), "--task", "failure_modes_human")
    _run(manta, "annotate", "import", str(good), "--task", "failure_modes_human")  # idempotent

    status = _run(manta, "annotate", "status")
    assert queue_id in status and "failure_modes_human-import-" in status
    assert "ana: 2" in status and "bo: 1" in status

    # The labels are results: `manta results`, the trace filter, `manta export`.
    table = _run(manta, "results", "failure_modes_human", "-r", demo_run, "-f", "csv")
    rows = {r["trace_id"]: r for r in csv.DictReader(io.StringIO(table))}
    assert set(rows) == {items[0].trace_id, items[1].trace_id}
    assert rows[items[0].trace_id]["category"] == "wrong_tool"  # ana's revision, the latest
    assert rows[items[1].trace_id]["annotator"] == "ana"
    with MantaService() as svc:
        passed = svc.get_traces(demo_run, results="failure_modes_human.category == 'passed'")
    assert [t.trace_id for t in passed] == [items[1].trace_id]
    _run(manta, "export", "-o", str(tmp_path / "dump"), "-r", demo_run, "--no-traces",
         "-j", "failure_modes_human")  # fmt: skip
    exported = [pq.read_table(p).to_pylist() for p in (tmp_path / "dump").glob("*.parquet")]
    assert sorted(r["trace_id"] for part in exported for r in part) == sorted(rows)

    # Export: one row per annotator and entity, with the revision count.
    _run(manta, "annotate", "export", "failure_modes_human", "-o", str(tmp_path / "l.jsonl"))
    lines = [json.loads(x) for x in (tmp_path / "l.jsonl").read_text().splitlines()]
    got = {(x["trace_id"], x["annotator"]): (x["category"], x["revisions"]) for x in lines}
    assert got == {
        (items[0].trace_id, "ana"): ("wrong_tool", 1),
        (items[1].trace_id, "ana"): ("passed", 0),
        (items[0].trace_id, "bo"): ("wrong_tool", 0),
    }
    _run(manta, "annotate", "export", "failure_modes_human", "-o", str(tmp_path / "l.parquet"))
    assert pq.read_table(tmp_path / "l.parquet").to_pylist() == lines


def test_unknown_task_and_queue_are_clear_errors(
    manta: CliRunner, store: Store, demo_run: str
) -> None:
    store.close()
    result = manta.invoke(app, ["annotate", "create", "nope", "--run", demo_run, "--sample", "3"])
    assert result.exit_code == 1 and "no label task 'nope'" in str(result.exception)
    result = manta.invoke(app, ["annotate", "status", "missing-queue"])
    assert "no annotation queue 'missing-queue'" in str(result.exception)


def test_annotate_task_declares_a_task_the_store_rebuilds(manta: CliRunner, store: Store) -> None:
    store.close()
    out = _run(
        manta, "annotate", "task", "groups_human", "--bool", "diverse", "--number", "quality",
        "--note", "--level", "datapoint",
    )  # fmt: skip
    assert "groups_human version" in out
    with MantaService() as svc:
        task = Annotations(svc.store).get_task("groups_human")
    assert task.level.value == "datapoint"
    assert [(f.name, f.kind, f.required) for f in task.fields()] == [
        ("diverse", "bool", False), ("quality", "number", False), ("note", "text", False),
    ]  # fmt: skip
    result = manta.invoke(app, ["annotate", "task", "empty"])
    assert result.exit_code == 2  # no fields: a usage error
