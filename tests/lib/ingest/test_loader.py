"""JSON Lines import: validation messages, partial loads, strict mode, idempotence, CLI."""

from __future__ import annotations

import json
import os
import threading
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from manta_lib.cli import _register_commands, app
from manta_lib.errors import ValidationError
from manta_lib.ingest.loader import ImportReport, LineError, import_jsonl, load_records
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


def test_one_existence_query_per_batch(
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
    # Per batch of 4, 4, 2: one query for its stored traces and the stored spans of the others.
    assert len(queries) == 3
    assert all("FROM {db}.spans" in query for query in queries)
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
    doc = (Path(__file__).parents[3] / "docs" / "import_format.md").read_text()
    example = doc.split("```json\n", 1)[1].split("```", 1)[0]
    path = tmp_path / "example.jsonl"
    path.write_text(example)

    report = import_jsonl([path], store=store)

    assert report.ok and (report.traces_loaded, report.spans_loaded) == (1, 5)
    attributes = store.rows("SELECT attributes FROM {db}.spans WHERE role = 'assistant'")
    assert json.loads(attributes[0][0]) == {"tool_call_ids": ["c1"]}


# ---- hostile lines: each is a per-line error, the good lines still load ------------------


def write_raw(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return path


def good(trace_id: str) -> bytes:
    return json.dumps(trace(trace_id)).encode()


def test_deep_nesting_and_lone_surrogates_are_line_errors(store: Store, tmp_path: Path) -> None:
    deep = b'{"trace_id": "d", "run_id": "run_a", "meta": {"x": ' + b"[" * 5000 + b"]" * 5000
    deep += b"}}"
    nested = {"trace_id": "n", "run_id": "run_a", "meta": {"x": [[[[]]]]}}
    for _ in range(70):
        nested["meta"] = {"x": nested["meta"]}
    path = write_raw(
        tmp_path / "hostile.jsonl",
        [
            good("t1"),
            deep,
            json.dumps(nested).encode(),
            b'{"trace_id": "s1", "run_id": "run_a", "meta": {"note": "\\ud800"}, "spans": '
            b'[{"kind": "message", "content": "x"}]}',
            b'{"trace_id": "s2", "run_id": "run_a", "datapoint_id": "\xed\xa0\x80"}',
            b'{"trace_id": "s3", "run_id": "run_a", "spans": [{"kind": "llm", "content": '
            b'"ok \\ud83d\\ude00", "attributes": {"\\udfff": 1}}]}',
            good("t2"),
        ],
    )

    report = import_jsonl([path], store=store)

    assert [(e.line, e.field) for e in report.errors] == [
        (2, ""),
        (3, "meta" + ".x" * 63),  # the 65th level
        (4, "meta.note"),
        (5, "datapoint_id"),
        (6, "spans[0].attributes"),
    ]
    assert report.errors[0].reason == "nested more than 64 levels deep"
    assert report.errors[1].reason == "nested more than 64 levels deep"
    assert report.errors[2].reason.startswith(
        "contains a lone UTF-16 surrogate (\\ud800 at character 0)"
    )
    assert report.errors[4].reason.startswith("key contains a lone UTF-16 surrogate (\\udfff")
    assert (report.traces_loaded, report.spans_loaded) == (2, 4)
    assert counts(store) == (2, 4)
    again = import_jsonl([path], store=store)
    assert (again.traces_loaded, again.spans_loaded, again.traces_already_present) == (0, 0, 2)
    assert counts(store) == (2, 4)  # no orphan spans, no duplicates


NON_FINITE = [b"NaN", b"Infinity", b"-Infinity", b"1e309", b"-1E+400"]


@pytest.mark.parametrize("literal", NON_FINITE)
def test_non_finite_numbers_are_rejected_everywhere(
    store: Store, tmp_path: Path, literal: bytes
) -> None:
    lines = [
        b'{"trace_id": "a", "run_id": "r", "score": %s}' % literal,
        b'{"trace_id": "b", "run_id": "r", "cost_usd": %s}' % literal,
        b'{"trace_id": "c", "run_id": "r", "meta": {"t": [1, %s]}}' % literal,
        b'{"trace_id": "d", "run_id": "r", "spans": [{"kind": "llm", "cost_usd": %s}]}' % literal,
        b'{"trace_id": "e", "run_id": "r", "spans": [{"kind": "llm", "attributes": {"p": %s}}]}'
        % literal,
        b'{"trace_id": "ok", "run_id": "r", "score": 1e308, "meta": {"big": 1e300}}',
    ]
    path = write_raw(tmp_path / "nonfinite.jsonl", lines)

    report = import_jsonl([path], store=store)

    assert [(e.line, e.field) for e in report.errors] == [
        (1, "score"),
        (2, "cost_usd"),
        (3, "meta.t[1]"),
        (4, "spans[0].cost_usd"),
        (5, "spans[0].attributes.p"),
    ]
    assert all("is not a finite number" in e.reason for e in report.errors)
    assert report.traces_loaded == 1
    meta = store.rows("SELECT meta FROM {db}.traces")[0][0]
    assert json.loads(meta) == {"big": 1e300}  # valid JSON, still filterable


def test_empty_ids_negative_counts_and_millisecond_timestamps_are_rejected(
    store: Store, tmp_path: Path
) -> None:
    path = write_lines(
        tmp_path / "values.jsonl",
        [
            {"trace_id": "", "run_id": "r"},
            {"trace_id": "a", "run_id": "  "},
            {"trace_id": "b", "run_id": "r", "tokens_input": -1, "duration_ms": -5},
            {"trace_id": "c", "run_id": "r", "cost_usd": -0.5},
            {"trace_id": "d", "run_id": "r", "spans": [{"kind": "llm", "tokens_output": -2}]},
            {"trace_id": "e", "run_id": "r", "created_at": 1e12},
            {"trace_id": "f", "run_id": "r", "spans": [{"kind": "llm", "started_at": 1.7e12}]},
            {"trace_id": "g", "run_id": "r", "created_at": "9999-01-01T00:00:00Z"},
            {"trace_id": "ok", "run_id": "r", "created_at": 1736157600, "turn_count": 0},
        ],
    )

    report = import_jsonl([path], store=store)

    assert [str(e).split(": ", 1)[1] for e in report.errors] == [
        "trace_id: must not be empty or blank",
        "run_id: must not be empty or blank",
        "duration_ms: must not be negative, got -5",
        "tokens_input: must not be negative, got -1",
        "cost_usd: must not be negative, got -0.5",
        "spans[0].tokens_output: must not be negative, got -2",
        "created_at: 1000000000000.0 is not a plausible Unix timestamp: seconds since 1970 are "
        "expected (0 to 1e+10); a value in milliseconds must be divided by 1000",
        "spans[0].started_at: 1700000000000.0 is not a plausible Unix timestamp: seconds since "
        "1970 are expected (0 to 1e+10); a value in milliseconds must be divided by 1000",
        "created_at: 9999-01-01T00:00:00+00:00 is outside the storable range (years 1900-2299)",
    ]
    assert store.rows("SELECT trace_id, toUnixTimestamp(created_at) FROM {db}.traces") == [
        ("ok", 1736157600)
    ]


def test_invalid_json_messages_say_at_once(store: Store, tmp_path: Path) -> None:
    path = write_raw(
        tmp_path / "ctl.jsonl",
        [b'{"trace_id": "a\x01", "run_id": "r"}', b'{"trace_id": "b', b"{1e99999999}"],
    )

    report = import_jsonl([path], store=store)

    assert [str(e) for e in report.errors] == [
        f"{path}:1: invalid JSON (Invalid control character at column 16)",
        f"{path}:2: invalid JSON (Unterminated string starting at column 14)",
        f"{path}:3: invalid JSON (Expecting property name enclosed in double quotes at column 2)",
    ]


def test_strict_is_all_or_nothing_with_hostile_lines(store: Store, tmp_path: Path) -> None:
    lines = [good(f"t{i}") for i in range(6)]
    lines.insert(4, b'{"trace_id": "x", "run_id": "r", "meta": {"s": "\\udc00"}}')
    path = write_raw(tmp_path / "strict.jsonl", lines)

    report = import_jsonl([path], store=store, strict=True, batch_size=2)

    assert [(e.line, e.field) for e in report.errors] == [(5, "meta.s")]
    assert counts(store) == (0, 0)
    fixed = write_raw(tmp_path / "fixed.jsonl", [line for line in lines if b"udc00" not in line])
    done = import_jsonl([fixed], store=store, strict=True, batch_size=2)
    assert done.ok and (done.traces_loaded, done.spans_loaded) == (6, 12)
    assert counts(store) == (6, 12)


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-be", "utf-32", "utf-8-sig"])
def test_files_with_a_byte_order_mark_are_decoded(
    store: Store, tmp_path: Path, encoding: str
) -> None:
    text = "".join(json.dumps(trace(f"t{i}"), ensure_ascii=False) + "\n" for i in range(3))
    text = text.replace('"user"', '"usér ✓"')
    bom = {"utf-16-be": "\ufeff"}.get(encoding, "")
    path = tmp_path / "bom.jsonl"
    path.write_bytes((bom + text).encode(encoding))

    report = import_jsonl([path], store=store)

    assert report.ok and (report.traces_loaded, report.spans_loaded) == (3, 6)
    assert store.rows("SELECT DISTINCT role FROM {db}.spans WHERE seq = 0") == [("usér ✓",)]


def test_utf16_without_byte_order_mark_is_rejected_with_the_reason(
    store: Store, tmp_path: Path
) -> None:
    path = tmp_path / "u16.jsonl"
    path.write_bytes(
        "".join(json.dumps(trace(f"t{i}")) + "\n" for i in range(3)).encode("utf-16-le")
    )

    report = import_jsonl([path], store=store)

    assert len(report.errors) == 1 and report.errors[0].line == 1
    assert "looks like UTF-16 without a byte-order mark" in report.errors[0].reason
    assert counts(store) == (0, 0)


def test_unmapped_fields_and_traces_without_spans_are_warned_per_file(
    store: Store, tmp_path: Path
) -> None:
    openai = {
        "trace_id": "o1",
        "run_id": "r",
        "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}],
    }
    first = write_lines(tmp_path / "a.jsonl", [openai, {**openai, "trace_id": "o2"}, trace("t1")])
    second = write_lines(tmp_path / "b.jsonl", [trace("t2")])

    report = import_jsonl([first, second], store=store)

    assert report.ok and report.traces_loaded == 4
    assert report.warnings == [
        f"{first}: fields that nothing maps were stored in meta: 'messages' (2 traces). "
        f"'messages' looks like a conversation, which is not turned into spans: give each "
        f'message as a span of kind "message" with role and content (docs/import_format.md)',
        f"{first}: 2 traces ended with no spans ('o1', 'o2'): their conversation, tool calls and "
        f'grader are missing; give them in "spans" or a --spans file',
    ]


def test_traces_whose_spans_come_from_a_span_file_are_not_warned(
    store: Store, tmp_path: Path
) -> None:
    traces_path = write_lines(
        tmp_path / "t.jsonl", [{"trace_id": t, "run_id": "r"} for t in ("a", "b")]
    )
    spans_path = write_lines(tmp_path / "s.jsonl", [{"trace_id": "a", "kind": "llm"}])

    report = import_jsonl([traces_path], spans_paths=[spans_path], store=store)

    assert report.warnings == [
        f"{traces_path}: 1 trace ended with no spans ('b'): its conversation, tool calls and "
        f'grader are missing; give them in "spans" or a --spans file'
    ]


def test_load_records_takes_parsed_records_and_a_source_name(store: Store) -> None:
    records = [
        trace("t1"),
        (7, {"run_id": "r"}),
        {"trace_id": "t3", "run_id": "r", "score": float("nan")},
    ]

    report = load_records(records, source="export.parquet", store=store)

    assert [str(e) for e in report.errors] == [
        "export.parquet:3: score: NaN is not a finite number (a literal such as 1e309 overflows "
        "to Infinity); use a finite number, or null where a value may be missing",
        "export.parquet:7: trace_id: missing required field",
    ]
    assert report.traces_loaded == 1
    spans = load_records(
        [{"trace_id": "t1", "span_id": "extra", "kind": "system"}],
        source="spans.parquet",
        store=store,
        kind="spans",
    )
    assert spans.ok and spans.spans_loaded == 1
    assert counts(store) == (1, 3)


def test_a_crash_between_span_and_trace_inserts_leaves_no_duplicates(
    store: Store, tmp_path: Path
) -> None:
    path = write_lines(tmp_path / "t.jsonl", [trace(f"t{i}") for i in range(4)])
    # What a process killed after the span insert of the first batch leaves behind.
    from manta_lib.ingest.loader import _columns, _parse_trace
    from manta_lib.models import SPAN_COLUMNS

    rows = [row for i in range(2) for row in _parse_trace(trace(f"t{i}"), "", 0)[1]]
    store.insert_columns("spans", _columns(SPAN_COLUMNS, rows))

    report = import_jsonl([path], store=store, batch_size=2)

    assert (report.traces_loaded, report.spans_loaded, report.spans_skipped) == (4, 4, 4)
    assert store.rows("SELECT count(), uniqExact(trace_id, span_id) FROM {db}.spans") == [(8, 8)]


def test_import_reads_stdin_and_pipes(cli: CliRunner, store: Store, tmp_path: Path) -> None:
    data = "".join(json.dumps(trace(f"t{i}")) + "\n" for i in range(3))

    result = cli.invoke(app, ["import", "-"], input=data)

    assert result.exit_code == 0, result.output
    assert "3 traces and 6 spans loaded from 1 file" in result.stdout
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    writer = threading.Thread(
        target=lambda: fifo.write_text(json.dumps(trace("t9")) + "\n"), daemon=True
    )
    writer.start()
    report = import_jsonl([fifo], store=store, strict=True)
    writer.join(10)
    assert report.ok and report.traces_loaded == 1
    assert counts(store) == (4, 8)
    with pytest.raises(ValidationError, match="standard input"):
        import_jsonl(["-", "-"], store=store)


def test_cli_import_prints_warnings_and_no_traceback(
    cli: CliRunner, store: Store, tmp_path: Path
) -> None:
    path = write_raw(
        tmp_path / "mixed.jsonl",
        [good("t1"), b"[" * 100000, b'{"trace_id": "x", "run_id": "r", "messages": []}'],
    )

    result = cli.invoke(app, ["import", str(path)])

    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert f"{path}:2: nested more than 64 levels deep" in result.stderr
    assert "warning: " in result.stderr and "'messages' looks like a conversation" in result.stderr
