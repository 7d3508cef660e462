"""Manta's own format through the importer interface, format detection, and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from manta_lib import MantaService, import_files, import_records
from manta_lib.cli import _register_commands, app
from manta_lib.errors import ValidationError
from manta_lib.importers import detect_format
from manta_lib.ingest.loader import SourceRecord, load_records
from manta_lib.models import SpanRecord, TraceRecord
from manta_lib.settings import load_settings
from manta_lib.store import Store

# Seeded stores or seconds per test: make test runs them, make check leaves them out.
pytestmark = pytest.mark.slow

LOGS = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "inspect_logs"


def _trace(n: int) -> dict:
    return {
        "trace_id": f"tr_{n}",
        "run_id": "original",
        "meta": {"iteration": n, "problem": f"p{n % 2}", "reward": n / 4},
        "spans": [
            {"kind": "message", "role": "user", "content": "hi", "run_id": "original"},
            {"kind": "message", "role": "assistant", "content": "hello"},
        ],
    }


def test_native_with_hierarchy_overrides(store: Store, tmp_path: Path) -> None:
    path = tmp_path / "traces.jsonl"
    path.write_text("".join(json.dumps(_trace(n)) + "\n" for n in range(3)))
    assert detect_format(path) == "manta"
    report = import_files(
        [path],
        store=store,
        run_id="moved",
        step="meta.iteration",
        datapoint="meta.problem",
        score="meta.reward",
        phase="eval",
    )
    assert report.ok, report.errors
    traces = MantaService(store).get_traces("moved")
    assert [(t.step_number, t.datapoint_id, t.score, t.phase.value) for t in traces] == [
        (0, "p0", 0.0, "eval"),
        (1, "p1", 0.25, "eval"),
        (2, "p0", 0.5, "eval"),
    ]
    again = import_files([path], store=store, run_id="moved", progress=True)
    assert again.traces_already_present == 3


def test_records_in_memory_strict_and_pydantic(store: Store) -> None:
    good = {
        **TraceRecord(trace_id="mem1", run_id="mem").model_dump(),
        "spans": [
            SpanRecord(span_id="s0", seq=0, kind="message", role="user", content="x").model_dump()
        ],
    }
    bad = {"trace_id": "mem2", "run_id": "mem", "spans": [{"kind": "toool"}]}
    strict = import_records(iter([good, bad]), store=store, format="manta", strict=True)
    assert strict.traces_loaded == 0 and strict.strict
    assert [str(e) for e in strict.errors] == [
        "<records>:2: spans[0].kind: 'toool' is not a valid span kind "
        "(expected one of: message, tool, grader, llm, system)"
    ]
    assert "mem" not in MantaService(store).run_ids()  # nothing loaded: an unknown run
    loose = import_records([good, bad], store=store, format="manta")
    assert (loose.traces_loaded, loose.spans_loaded, loose.bad_lines) == (1, 1, 1)
    with pytest.raises(ValidationError, match="format= one of"):
        import_records([good], store=store, format="auto")


def test_cli_detects_and_reimports(store: Store, tmp_path: Path) -> None:
    _register_commands()
    store.close()
    unknown = tmp_path / "notes.txt"
    unknown.write_text("hello\n")
    cli = CliRunner()
    result = cli.invoke(app, ["import", str(unknown)])
    # main() prints a MantaError as one line with exit code 1
    assert isinstance(result.exception, ValidationError)
    assert "cannot tell the format" in str(result.exception)
    log = str(LOGS / "log_read_sample.eval")
    first = cli.invoke(app, ["import", log])
    assert first.exit_code == 0, first.output
    assert "1 trace and 5 spans loaded" in first.stdout
    again = cli.invoke(app, ["import", log, "--format", "inspect"])
    assert again.exit_code == 0 and "1 trace already present" in again.stdout
    bad = cli.invoke(app, ["import", log, "--spans", log])
    assert bad.exit_code == 2 and "Manta-format" in bad.output


def test_source_records_of_several_files_keep_their_locations(store: Store) -> None:
    records = [
        SourceRecord("b.jsonl", 3, None, (("messages", "expected a list"),)),
        SourceRecord("a.jsonl", 7, {"trace_id": "loc1", "run_id": "loc", "phase": "nope"}),
        SourceRecord("a.jsonl", 2, {"trace_id": "loc2", "run_id": "loc", "spans": []}),
        SourceRecord("b.jsonl", 1, {"trace_id": "loc2", "run_id": "loc"}),
    ]
    report = load_records(records, source="unused", store=store)
    assert report.traces_loaded == 1 and report.files == 2
    # grouped by source in the order first seen, then by line
    assert [str(e).split(":", 2)[:2] for e in report.errors] == [
        ["b.jsonl", "1"],
        ["b.jsonl", "3"],
        ["a.jsonl", "7"],
    ]
    assert "duplicate trace_id 'loc2' (first seen at a.jsonl:2)" in str(report.errors[0])
    assert str(report.errors[1]) == "b.jsonl:3: messages: expected a list"


def test_cli_hierarchy_from_stdin_and_strict_across_formats(store: Store, tmp_path: Path) -> None:
    _register_commands()
    store.close()
    cli = CliRunner()
    data = "".join(json.dumps(_trace(n)) + "\n" for n in range(2))
    piped = cli.invoke(
        app, ["import", "-", "--run-id", "piped", "--step", "meta.iteration"], input=data
    )
    assert piped.exit_code == 0, piped.output
    assert "2 traces and 4 spans loaded from 1 file" in piped.stdout
    refused = cli.invoke(app, ["import", "-", "--format", "openai"], input=data)
    assert refused.exit_code == 1 and "read as Manta JSON Lines only" in str(refused.exception)
    # one bad record in the second file: --strict loads nothing from either
    rollouts = tmp_path / "rollouts.jsonl"
    rollouts.write_text(json.dumps({"messages": [{"role": "user", "content": "q"}]}) + "\n")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"messages": "not a list", "run_id": "r"}) + "\n")
    strict = cli.invoke(
        app, ["import", str(rollouts), str(bad), "--format", "openai", "--run-id", "s", "--strict"]
    )
    assert strict.exit_code == 1
    assert "0 traces and 0 spans loaded from 2 files" in strict.stdout
    assert f"{bad}:1: " in strict.stderr and "nothing loaded (strict)" in strict.stdout
    with Store.open(load_settings()) as reopened:
        assert MantaService(reopened).count_traces("piped") == 2
        assert "s" not in MantaService(reopened).run_ids()
