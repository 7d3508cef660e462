"""JSON Lines import: validation messages, partial loads, strict mode, idempotence, CLI."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from manta_lib.cli import _register_commands, app
from manta_lib.errors import ValidationError
from manta_lib.ingest import ImportReport, LineError, import_jsonl
from manta_lib.store import Store


def write_lines(path: Path, lines: list[Any]) -> Path:
    """Write objects as JSON lines (strings are written as they are)."""
    path.write_text(
        "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines)
    )
    return path


def trace(trace_id: str, **fields: Any) -> dict[str, Any]:
    spans = fields.pop("spans", None)
    obj = {"trace_id": trace_id, "run_id": "run_a", **fields}
    obj["spans"] = (
        spans
        if spans is not None
        else [
            {"span_id": f"{trace_id}-0", "seq": 0, "kind": "message", "role": "user"},
            {"span_id": f"{trace_id}-1", "seq": 1, "kind": "llm", "tokens_input": 12},
        ]
    )
    return obj


def counts(store: Store) -> tuple[int, int]:
    traces = store.rows("SELECT count() FROM {db}.traces")[0][0]
    spans = store.rows("SELECT count() FROM {db}.spans")[0][0]
    return traces, spans


def test_a_full_line_is_loaded_with_defaults_unknown_keys_and_json_arguments(
    store: Store, tmp_path: Path
) -> None:
    line = {
        "trace_id": "t1",
        "run_id": "run_a",
        "step_number": 3,
        "phase": "eval",
        "datapoint_id": "dp_1",
        "score": 0.75,
        "cost_usd": 0.01,
        "model_name": "m",
        "meta": {"temperature": 0.7},
        "sampler": "nucleus",  # unknown trace key -> meta
        "spans": [
            {
                "span_id": "s1",
                "seq": 0,
                "kind": "tool",
                "tool_name": "python",
                "tool_arguments": {"code": "1+1"},
                "started_at": "2025-01-06T10:00:00+02:00",
                "ended_at": "2025-01-06T08:00:01.250Z",
                "sandbox": "sb_9",  # unknown span key -> attributes
                "attributes": {"call_id": "c1"},
            },
            {"kind": "message", "role": "tool", "content": "2"},  # span_id and seq defaulted
        ],
    }
    path = write_lines(tmp_path / "traces.jsonl", [line, {"trace_id": "t2", "run_id": "run_a"}])

    report = import_jsonl([path], store=store, project_id="prj")

    assert report.ok
    assert (report.traces_loaded, report.spans_loaded) == (2, 2)
    rows = store.rows(
        "SELECT trace_id, project_id, phase, step_number, status, score, meta FROM {db}.traces "
        "ORDER BY trace_id"
    )
    assert rows[0][:6] == ("t1", "prj", "eval", 3, "completed", 0.75)
    assert json.loads(rows[0][6]) == {"temperature": 0.7, "sampler": "nucleus"}
    assert rows[1][:6] == ("t2", "prj", "train", 0, "completed", None)  # all defaults
    spans = store.rows(
        "SELECT trace_id, run_id, span_id, seq, tool_arguments, attributes, started_at, ended_at "
        "FROM {db}.spans ORDER BY seq"
    )
    assert spans[0][:5] == ("t1", "run_a", "s1", 0, '{"code":"1+1"}')
    assert json.loads(spans[0][5]) == {"call_id": "c1", "sandbox": "sb_9"}
    assert spans[0][6] == datetime(2025, 1, 6, 8, 0, 0)  # converted to UTC
    assert spans[0][7] == datetime(2025, 1, 6, 8, 0, 1, 250000)
    assert spans[1][:4] == ("t1", "run_a", "t1:1", 1)


BAD_FILE = [
    trace("t1"),
    trace("t2", spans=[{"span_id": "a", "seq": 0, "kind": "toool"}]),
    trace("t3"),
    {"run_id": "run_a"},
    trace("t5"),
    '{"trace_id": "t6", "run_id": "run_a", "step_number": 1 "x": 2}',
    trace("t7"),
    trace("t8", step_number="abc", score="high"),
    trace("t1"),
    "[1, 2]",
    trace("t11", spans={"not": "a list"}),
    trace("t12", meta="oops", spans=[{"seq": 0, "is_error": "maybe"}]),
]


def expected_errors(path: Path) -> list[str]:
    return [
        f"{path}:2: spans[0].kind: 'toool' is not a valid span kind "
        f"(expected one of: message, tool, grader, llm, system)",
        f"{path}:4: trace_id: missing required field",
        f"{path}:6: invalid JSON (Expecting ',' delimiter at column 56)",
        f"{path}:8: step_number: expected an integer, got 'abc'",
        f"{path}:8: score: expected a number, got 'high'",
        f"{path}:9: trace_id: duplicate trace_id 't1' (first seen at {path}:1)",
        f"{path}:10: expected a JSON object, got a list",
        f"{path}:11: spans: expected a list of span objects, got an object",
        f"{path}:12: meta: expected an object, got 'oops'",
        f"{path}:12: spans[0].kind: missing required field",
        f"{path}:12: spans[0].is_error: expected true or false, got 'maybe'",
    ]


def test_bad_lines_are_reported_exactly_and_the_good_lines_still_load(
    store: Store, tmp_path: Path
) -> None:
    path = write_lines(tmp_path / "traces.jsonl", BAD_FILE)

    report = import_jsonl([path], store=store)

    assert [str(error) for error in report.errors] == expected_errors(path)
    assert report.bad_lines == 8
    assert report.errors[0] == LineError(
        str(path),
        2,
        "spans[0].kind",
        "'toool' is not a valid span kind (expected one of: message, tool, grader, llm, system)",
    )
    assert (report.traces_loaded, report.spans_loaded) == (4, 8)  # t1 t3 t5 t7
    assert counts(store) == (4, 8)
    loaded = [row[0] for row in store.rows("SELECT trace_id FROM {db}.traces ORDER BY trace_id")]
    assert loaded == ["t1", "t3", "t5", "t7"]


def test_strict_mode_loads_nothing_when_a_line_is_bad(store: Store, tmp_path: Path) -> None:
    path = write_lines(tmp_path / "traces.jsonl", BAD_FILE)

    report = import_jsonl([path], store=store, strict=True)

    assert [str(error) for error in report.errors] == expected_errors(path)
    assert (report.traces_loaded, report.spans_loaded) == (0, 0)
    assert counts(store) == (0, 0)
    assert report.summary().endswith("8 bad lines, nothing loaded (strict)")


def test_strict_mode_loads_everything_when_all_lines_are_good(store: Store, tmp_path: Path) -> None:
    path = write_lines(tmp_path / "traces.jsonl", [trace(f"t{i}") for i in range(5)])

    report = import_jsonl([path], store=store, strict=True)

    assert report.ok and report.traces_loaded == 5
    assert counts(store) == (5, 10)


def test_reimporting_the_same_file_duplicates_nothing(store: Store, tmp_path: Path) -> None:
    path = write_lines(tmp_path / "traces.jsonl", [trace(f"t{i}") for i in range(7)])
    first = import_jsonl([path], store=store, batch_size=3)
    assert (first.traces_loaded, first.spans_loaded, first.traces_already_present) == (7, 14, 0)

    again = import_jsonl([path], store=store, batch_size=3)

    assert (again.traces_loaded, again.spans_loaded) == (0, 0)
    assert (again.traces_already_present, again.spans_skipped) == (7, 14)
    assert "7 traces already present (skipped)" in again.summary()
    assert counts(store) == (7, 14)
    # A file mixing old and new traces loads only the new ones.
    more = write_lines(tmp_path / "more.jsonl", [trace("t6"), trace("t7")])
    third = import_jsonl([more], store=store)
    assert (third.traces_loaded, third.traces_already_present) == (1, 1)
    assert counts(store) == (8, 16)


def test_two_existence_queries_per_batch(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_lines(tmp_path / "traces.jsonl", [trace(f"t{i}") for i in range(10)])
    queries: list[str] = []
    original = store.rows

    def spy(template: str, parameters: dict[str, Any] | None = None) -> list[tuple]:
        queries.append(template)
        return original(template, parameters)

    monkeypatch.setattr(store, "rows", spy)

    report = import_jsonl([path], store=store, batch_size=4)

    assert report.traces_loaded == 10
    # Per batch of 4, 4, 2: stored traces, then stored spans of the traces not stored.
    assert len(queries) == 6
    assert ["FROM {db}.spans" in query for query in queries] == [False, True] * 3
    assert all("trace_id IN {ids:Array(String)}" in query for query in queries)


def test_duplicate_trace_ids_across_files_are_reported_on_the_second(
    store: Store, tmp_path: Path
) -> None:
    first = write_lines(tmp_path / "a.jsonl", [trace("t1"), trace("t2")])
    second = write_lines(tmp_path / "b.jsonl", ["", trace("t2"), trace("t3")])

    report = import_jsonl([first, second], store=store)

    assert [str(e) for e in report.errors] == [
        f"{second}:2: trace_id: duplicate trace_id 't2' (first seen at {first}:2)"
    ]
    assert report.traces_loaded == 3


def test_spans_may_come_from_a_separate_file(store: Store, tmp_path: Path) -> None:
    traces_path = write_lines(
        tmp_path / "traces.jsonl",
        [
            {"trace_id": "t1", "run_id": "run_a"},
            {"trace_id": "t2", "run_id": "run_b"},
            {"trace_id": "bad", "run_id": "run_a", "turn_count": "many"},
        ],
    )
    spans_path = write_lines(
        tmp_path / "spans.jsonl",
        [
            {"trace_id": "t1", "kind": "message", "role": "user", "content": "hi"},
            {"trace_id": "t1", "kind": "llm", "tokens_output": 5, "provider": "vllm"},
            {"trace_id": "t2", "span_id": "x", "seq": 4, "kind": "system", "name": "setup"},
            {"trace_id": "nope", "kind": "llm"},
            {"kind": "llm"},
            {"trace_id": "t2", "run_id": "run_a", "kind": "llm"},
            {"trace_id": "bad", "kind": "llm"},  # its trace line is bad: skipped, not reported
        ],
    )

    report = import_jsonl([traces_path], spans_paths=[spans_path], store=store)

    assert [str(e) for e in report.errors] == [
        f"{traces_path}:3: turn_count: expected an integer, got 'many'",
        f"{spans_path}:4: trace_id: no trace 'nope' in this import or in the store",
        f"{spans_path}:5: trace_id: missing required field",
        f"{spans_path}:6: run_id: 'run_a' does not match the run_id 'run_b' of trace 't2'",
    ]
    assert (report.traces_loaded, report.spans_loaded, report.spans_skipped) == (2, 3, 1)
    rows = store.rows(
        "SELECT trace_id, run_id, span_id, seq, kind, attributes FROM {db}.spans "
        "ORDER BY trace_id, seq"
    )
    assert rows == [
        ("t1", "run_a", "t1:0", 0, "message", "{}"),
        ("t1", "run_a", "t1:1", 1, "llm", '{"provider":"vllm"}'),
        ("t2", "run_b", "x", 4, "system", "{}"),
    ]

    again = import_jsonl([traces_path], spans_paths=[spans_path], store=store)

    assert (again.traces_loaded, again.spans_loaded, again.traces_already_present) == (0, 0, 2)
    assert counts(store) == (2, 3)


def test_missing_files_and_bad_batch_sizes_fail_before_any_work(
    store: Store, tmp_path: Path
) -> None:
    with pytest.raises(ValidationError, match="no such file"):
        import_jsonl([tmp_path / "missing.jsonl"], store=store)
    path = write_lines(tmp_path / "traces.jsonl", [trace("t1")])
    with pytest.raises(ValidationError, match="batch_size must be at least 1"):
        import_jsonl(path, store=store, batch_size=0)
    assert counts(store) == (0, 0)


def test_report_summary_reads_well() -> None:
    report = ImportReport(traces_loaded=1, spans_loaded=20, files=1, seconds=0.5)
    assert report.summary() == "1 trace and 20 spans loaded from 1 file in 0.50 s"


# ---- CLI ---------------------------------------------------------------------------------


@pytest.fixture
def cli() -> CliRunner:
    if not any(command.name == "import" for command in app.registered_commands):
        _register_commands()
    return CliRunner()


def test_cli_import_exit_codes(cli: CliRunner, store: Store, tmp_path: Path) -> None:
    good = write_lines(tmp_path / "good.jsonl", [trace("t1"), trace("t2")])
    spans = write_lines(tmp_path / "spans.jsonl", [{"trace_id": "t1", "kind": "llm", "seq": 9}])

    result = cli.invoke(app, ["import", str(good), "--spans", str(spans), "--project-id", "p"])
    assert result.exit_code == 0, result.output
    assert "2 traces and 5 spans loaded from 2 files" in result.stdout
    assert store.rows("SELECT DISTINCT project_id FROM {db}.traces") == [("p",)]

    again = cli.invoke(app, ["import", str(good)])
    assert again.exit_code == 0
    assert "2 traces already present (skipped)" in again.stdout

    bad = write_lines(tmp_path / "bad.jsonl", [trace("t3"), {"run_id": "r"}])
    result = cli.invoke(app, ["import", str(bad), "--strict"])
    assert result.exit_code == 1
    assert f"{bad}:2: trace_id: missing required field" in result.stderr
    assert "nothing loaded (strict)" in result.stdout
    result = cli.invoke(app, ["import", str(bad)])
    assert result.exit_code == 1
    assert counts(store) == (3, 7)

    assert cli.invoke(app, ["import", str(tmp_path / "missing.jsonl")]).exit_code == 2
    assert cli.invoke(app, ["import"]).exit_code == 2


def test_the_documented_example_line_imports_cleanly(store: Store, tmp_path: Path) -> None:
    doc = (Path(__file__).parents[2] / "docs" / "import_format.md").read_text()
    example = doc.split("```json\n", 1)[1].split("```", 1)[0]
    path = tmp_path / "example.jsonl"
    path.write_text(example)

    report = import_jsonl([path], store=store)

    assert report.ok and (report.traces_loaded, report.spans_loaded) == (1, 5)
    attributes = store.rows("SELECT attributes FROM {db}.spans WHERE role = 'assistant'")
    assert json.loads(attributes[0][0]) == {"tool_call_ids": ["c1"]}
