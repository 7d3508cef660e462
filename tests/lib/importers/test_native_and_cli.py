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
from manta_lib.models import SpanRecord, TraceRecord
from manta_lib.store import Store

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
    assert MantaService(store).count_traces("mem") == 0
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
