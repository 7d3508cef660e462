"""One hostile record must not sink its file, nor the files after it (issue 26, points 3-4):
deep nesting, overflowing numbers, a damaged deflate stream, JSON nested past Python's
recursion limit inside an Inspect ``.eval``, a zip bomb, an over-long line. Each is an error
of its record (or file) with its location; every good record around it loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from manta_lib import import_files
from manta_lib.importers import detect_format
from manta_lib.store import Store
from tests.lib.importers.otlp_builders import attrs, genai_agent_trace, request
from tests.robustness.hostile_files import (
    GOOD_EVALS,
    LOGS,
    bomb_second,
    corrupt_member,
    deep_second,
    rewrite_eval,
    two_samples,
)

# Seeded stores or seconds per test: make test runs them, make check leaves them out.
pytestmark = pytest.mark.slow

GOOD = {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]}


def rollout(index: int) -> str:
    return json.dumps({**GOOD, "id": f"oa{index}", "run_id": "r"})


def deep_rollout(depth: int = 5000) -> str:
    return rollout(99)[:-1] + ', "x": ' + "[" * depth + "]" * depth + "}"


def stored_ids(store: Store) -> set[str]:
    return {row[0] for row in store.rows("SELECT trace_id FROM {db}.traces")}


@pytest.mark.parametrize("bad_line", [1, 2])
def test_deep_openai_line_is_a_line_error_and_the_rest_loads(
    store: Store, tmp_path: Path, bad_line: int
) -> None:
    lines = [rollout(1), rollout(2)]
    lines.insert(bad_line - 1, deep_rollout())
    path = tmp_path / "rollouts.jsonl"
    path.write_text("\n".join(lines) + "\n")

    assert detect_format(path) == "openai"  # a bad first line does not hide the format
    report = import_files([path], store=store)

    assert stored_ids(store) == {"oa1", "oa2"}
    assert [(e.line, e.reason) for e in report.errors] == [
        (bad_line, "nested more than 64 levels deep")
    ]


def test_unparsable_first_line_does_not_break_detection(store: Store, tmp_path: Path) -> None:
    path = tmp_path / "rollouts.jsonl"
    path.write_text('{"messages": [\n' + rollout(1) + "\n" + rollout(2) + "\n")

    report = import_files([path], store=store)

    assert stored_ids(store) == {"oa1", "oa2"}
    assert [e.line for e in report.errors] == [1] and "invalid JSON" in report.errors[0].reason


def test_overlong_line_is_a_line_error(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MANTA_IMPORT_MAX_RECORD_MB", "1")
    huge = json.dumps({**GOOD, "id": "big", "run_id": "r", "pad": "x" * (3 << 20)})
    path = tmp_path / "rollouts.jsonl"
    path.write_text("\n".join([rollout(1), huge, rollout(2)]) + "\n")

    report = import_files([path], store=store, format="openai")

    assert stored_ids(store) == {"oa1", "oa2"}
    assert [e.line for e in report.errors] == [2]
    assert "over the import limit of 1 MB" in report.errors[0].reason
    assert "MANTA_IMPORT_MAX_RECORD_MB" in report.errors[0].reason


def test_bad_eval_between_good_ones_loses_only_its_bad_sample(store: Store, tmp_path: Path) -> None:
    good1, good2 = LOGS / GOOD_EVALS[2], LOGS / GOOD_EVALS[1]
    corrupt = corrupt_member(
        rewrite_eval(LOGS / GOOD_EVALS[0], tmp_path / "corrupt.eval", two_samples)
    )

    report = import_files([good1, corrupt, good2], store=store, run_id="mix")

    assert report.traces_loaded == 3  # both good files, and the corrupt file's good sample
    assert [(e.path, e.line, e.field) for e in report.errors] == [(str(corrupt), 2, "samples[1]")]
    assert "samples/2_epoch_1.json" in report.errors[0].reason
    assert "damaged compressed member" in report.errors[0].reason


def test_deep_json_inside_an_eval_is_that_samples_error(store: Store, tmp_path: Path) -> None:
    deep = rewrite_eval(LOGS / GOOD_EVALS[0], tmp_path / "deep.eval", deep_second)

    report = import_files([deep], store=store, run_id="deep")

    assert report.traces_loaded == 1
    assert [(e.line, e.field) for e in report.errors] == [(2, "samples[1]")]
    assert "RecursionError" in report.errors[0].reason


def test_zip_bomb_is_refused_before_it_inflates(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MANTA_IMPORT_MAX_RECORD_MB", "8")
    bomb = rewrite_eval(LOGS / GOOD_EVALS[0], tmp_path / "bomb.eval", bomb_second)
    assert bomb.stat().st_size < 1 << 20  # 40 MB of sample in well under 1 MB of zip

    report = import_files([bomb], store=store, run_id="bomb")

    assert report.traces_loaded == 1
    assert [(e.line, e.field) for e in report.errors] == [(2, "samples[1]")]
    assert "over the import limit of 8 MB per record" in report.errors[0].reason


def test_bomb_in_the_header_is_an_error_of_the_file(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MANTA_IMPORT_MAX_RECORD_MB", "8")

    def bomb_header(members: dict[str, bytes]) -> dict[str, bytes]:
        return {**members, "header.json": members["header.json"] + b" " * (40 << 20)}

    bomb = rewrite_eval(LOGS / GOOD_EVALS[0], tmp_path / "bomb.eval", bomb_header)
    good = LOGS / GOOD_EVALS[1]

    report = import_files([bomb, good], store=store, run_id="hb")

    assert report.traces_loaded == 1
    assert [(e.path, e.line) for e in report.errors] == [(str(bomb), 0)]
    assert report.errors[0].reason.startswith("header.json: ")


@pytest.mark.parametrize(
    ("marker", "where"), [('"intValue": "7"', "attributes"), ('"startTimeUnixNano": "', "start")]
)
def test_otlp_number_that_overflows_is_an_error_of_its_request(
    store: Store, tmp_path: Path, marker: str, where: str
) -> None:
    lines = [json.dumps(request(genai_agent_trace(t))) for t in (1, 2, 3)]
    if where == "attributes":
        lines[1] = json.dumps(request([{**genai_agent_trace(2)[0], "attributes": attrs({"n": 7})}]))
        lines[1] = lines[1].replace(marker, '"intValue": 1e400')
    else:
        lines[1] = lines[1].replace(marker, '"startTimeUnixNano": 1e400, "x": "', 1)
    path = tmp_path / "export.jsonl"
    path.write_text("\n".join(lines) + "\n")
    assert lines[1] != json.dumps(request(genai_agent_trace(2)))

    report = import_files([path], store=store, format="otlp", run_id="o")

    assert report.traces_loaded == 2
    assert [e.line for e in report.errors] == [2]
    assert "1e400" in report.errors[0].reason or "inf" in report.errors[0].reason
