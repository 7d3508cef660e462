"""`manta results / judges / show` through the real entry point: output shapes, exit codes."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from manta_lib.service import MantaService
from tests.lib.results.conftest import EVAL_RUN, TRAIN_RUN

# Seeded stores or seconds per test: make test runs them, make check leaves them out.
pytestmark = pytest.mark.slow


def test_results_csv_json_and_parquet_have_one_row_per_entity(cli, tmp_path: Path) -> None:
    with MantaService() as svc:
        expected = svc.results("typed_results", TRAIN_RUN)
    code, out, _ = cli("results", "typed_results", "--run", TRAIN_RUN, "--format", "csv")
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == len(expected)
    assert list(rows[0])[:6] == [
        "run_id", "trace_id", "datapoint_id", "step_number", "phase", "status"
    ]  # fmt: skip
    assert json.loads(rows[0]["tags"]) == expected.tags.iloc[0]

    code, out, _ = cli("results", "typed_results", "-r", TRAIN_RUN, "-f", "json", "-n", "4")
    records = json.loads(out)
    assert code == 0 and len(records) == 4
    assert isinstance(records[0]["tool_errors"], int) and isinstance(records[0]["counts"], dict)

    target = tmp_path / "typed.parquet"
    code, _, _ = cli("results", "typed_results", "-r", TRAIN_RUN, "-o", str(target))
    table = pq.read_table(target)
    assert code == 0 and table.num_rows == len(expected)
    assert str(table.schema.field("tool_errors").type) == "int64"


def test_results_where_and_levels(cli) -> None:
    with MantaService() as svc:
        steps = svc.results("typed_results", TRAIN_RUN, level="step")
    rollouts = dict(
        zip(zip(steps.step_number, steps.phase, strict=False), steps.rollouts, strict=True)
    )
    threshold = sorted(rollouts.values())[len(rollouts) // 2 - 1]  # some steps above, some not
    code, out, _ = cli(
        "results", "typed_results", "-r", TRAIN_RUN, "-l", "step", "-w", f"rollouts > {threshold}",
        "-f", "csv",
    )  # fmt: skip
    rows = list(csv.DictReader(io.StringIO(out)))
    assert code == 0 and rows and len(rows) < len(rollouts)
    assert {(int(r["step_number"]), r["phase"]): int(r["rollouts"]) for r in rows} == {
        key: n for key, n in rollouts.items() if n > threshold
    }
    assert "step_number" in rows[0] and "trace_id" not in rows[0]
    code, out, _ = cli(
        "results", "datapoint_history", "-r", TRAIN_RUN, "-l", "datapoint_across_steps",
        "-f", "csv",
    )  # fmt: skip
    rows = list(csv.DictReader(io.StringIO(out)))
    assert code == 0 and list(rows[0])[:2] == ["run_id", "datapoint_id"]
    assert "step_number" not in rows[0]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["results", "typed_result", "-r", TRAIN_RUN], "did you mean: typed_results"),
        (["results", "typed_results", "-r", TRAIN_RUN, "-w", "tool_errors >"], "position 14"),
        (["results", "typed_results", "-r", TRAIN_RUN, "-l", "stepp"], "did you mean: step"),
        (["results", "typed_results", "-r", TRAIN_RUN, "-w", "label > 3"], "is text but is"),
        (["show", "tr_nope"], "trace_id 'tr_nope' not found"),
    ],
)
def test_bad_input_is_one_error_and_exit_1(cli, args: list[str], message: str) -> None:
    code, _, err = cli(*args)
    assert code == 1
    assert message in err and "Traceback" not in err


def test_usage_errors_exit_2(cli) -> None:
    assert cli("results")[0] == 2
    assert cli("results", "typed_results", "--limit", "-1")[0] == 2
    code, _, err = cli("results", "typed_results", "-r", TRAIN_RUN, "-f", "parquet")
    assert code == 2 and "add --output" in err
    assert cli("results", "typed_results", "-r", TRAIN_RUN, "-f", "xml")[0] == 2


def test_judges_lists_each_version_and_level(cli) -> None:
    code, out, _ = cli("judges", "--format", "json")
    rows = json.loads(out)
    assert code == 0
    typed = {(r["level"], r["entities"]) for r in rows if r["judge"] == "typed_results"}
    with MantaService() as svc:
        traces = len(svc.results("typed_results", [EVAL_RUN, TRAIN_RUN]))
    assert ("trace", traces) in typed and {level for level, _ in typed} == {
        "trace", "datapoint", "step",
    }  # fmt: skip
    code, out, _ = cli("judges", "--run", EVAL_RUN, "-f", "csv")
    assert {r["judge"] for r in csv.DictReader(io.StringIO(out))} == {
        "typed_results", "strict_labels", "lenient_labels",
    }  # fmt: skip


def test_show_prints_conversation_tool_errors_grader_and_results(cli) -> None:
    with MantaService() as svc:
        frame = svc.results("typed_results", TRAIN_RUN, where="tool_errors > 0")
        trace_id = frame.trace_id.iloc[0]
        trace = svc.get_trace(trace_id)
    code, out, _ = cli("show", trace_id)
    assert code == 0
    assert trace_id in out and f"step {trace.step_number}" in out
    failed = trace.tools(errors_only=True)[0]
    assert f"tool {failed.tool_name} · ERROR" in out
    grader = trace.grader_result()
    assert grader is not None and f"grader {grader.name}:" in out
    assert ("passed" if grader.passed else "failed") in out
    assert "typed_results · trace" in out and "tool_errors=" in out
    assert "typed_results · datapoint" in out and "strict_labels" not in out  # eval run only


def test_export_parquet_matches_the_filtered_traces_and_their_spans(cli, tmp_path: Path) -> None:
    condition = "typed_results.tool_errors > 1"
    code, out, _ = cli(
        "export", "-o", str(tmp_path), "-r", TRAIN_RUN, "--filter", condition,
        "-j", "typed_results",
    )  # fmt: skip
    assert code == 0
    with MantaService() as svc:
        traces = svc.get_traces(TRAIN_RUN, results=condition)
        spans = svc.get_spans([t.trace_id for t in traces])
        results = svc.results("typed_results", TRAIN_RUN)
    exported = pq.read_table(tmp_path / "traces.parquet")
    assert sorted(exported.column("trace_id").to_pylist()) == sorted(t.trace_id for t in traces)
    assert pq.read_table(tmp_path / "spans.parquet").num_rows == sum(map(len, spans.values()))
    assert pq.read_table(tmp_path / "results_typed_results_trace.parquet").num_rows == len(results)
    assert f"{len(traces):,} rows" in out


def test_export_jsonl_is_the_import_format(
    cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    condition = "typed_results.tool_errors > 1"
    code, _, _ = cli(
        "export", "-o", str(tmp_path), "-r", TRAIN_RUN, "-f", "jsonl", "--filter", condition
    )
    assert code == 0
    with MantaService() as svc:
        batches = svc.iter_trace_batches(TRAIN_RUN, results=condition)
        originals = {trace.trace_id: trace for batch in batches for trace in batch}
    from manta_lib.ingest.loader import import_jsonl
    from manta_lib.settings import load_settings
    from manta_lib.store import Store

    monkeypatch.setenv("MANTA_DATABASE", "r_reimport_" + TRAIN_RUN[-2:])
    with Store.open(load_settings()) as store:
        report = import_jsonl([tmp_path / "traces.jsonl"], store=store)
        assert not report.errors and report.traces_loaded == len(originals)
        with MantaService(store) as copy:
            for trace_id, original in originals.items():
                again = copy.get_trace(trace_id)
                assert again.trace == original.trace
                assert again.spans() == original.spans()
        store.command("DROP DATABASE {db}")


def test_a_table_fits_80_columns_and_rounds_numbers_for_people(
    cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rich.console import Console

    from manta_lib.cli import results_commands
    from manta_lib.results.output import human_number

    monkeypatch.setattr(results_commands, "console", Console(width=80, force_terminal=False))
    with MantaService() as svc:
        frame = svc.results("typed_results", TRAIN_RUN, level="step")
    code, out, _ = cli("results", "typed_results", "-r", TRAIN_RUN, "-l", "step", "-f", "table")
    assert code == 0
    lines = out.splitlines()
    assert max(map(len, lines)) <= 80
    # one line per row (no cell wrapped over several lines): each step's row holds its mean
    for step, phase, mean in zip(frame.step_number, frame.phase, frame.mean_errors, strict=True):
        [row] = [
            line for line in lines if line.split()[:1] == [str(step)] and phase in line.split()
        ]
        assert human_number(float(mean)) in row.split()
    assert f"run_id {TRAIN_RUN}" in lines[0]  # the one run moves above the table
    assert len([line for line in lines if line.strip()]) == 3 + len(frame)  # a line per row
    # Too many columns for 80: one block per row, every value whole
    code, out, _ = cli("results", "typed_results", "-r", TRAIN_RUN, "-f", "table", "-n", "5")
    assert code == 0 and max(map(len, out.splitlines())) <= 80
    with MantaService() as svc:
        traces = svc.results("typed_results", TRAIN_RUN, limit=5)
    for number, trace_id in enumerate(traces.trace_id, start=1):
        assert f"── row {number} ──" in out
        assert ["trace_id", trace_id] in [line.split() for line in out.splitlines()]


def test_human_numbers_are_rounded_and_ids_shortened_in_the_middle() -> None:
    from manta_lib.results.output import fit_widths, human_number, shorten_middle

    assert human_number(0.08571428571428572) == "0.08571"
    assert human_number(237_538.42) == "237,538.4"
    assert human_number(3.0) == "3"
    assert shorten_middle("run_grpo_math_v1", 9) == "run_…h_v1"
    assert shorten_middle("tr_7_0_00000027", 20) == "tr_7_0_00000027"
    # the widest column gives way first, none below its floor; None when floors do not fit
    assert fit_widths([30, 10, 5], [8, 8, 5], 40) == [25, 10, 5]
    assert fit_widths([30, 10, 5], [8, 8, 5], 20) is None


def test_show_rounds_result_numbers_for_people(cli) -> None:
    from manta_lib.results.output import human_number

    with MantaService() as svc:
        groups = svc.results("typed_results", TRAIN_RUN, level="datapoint")
        group = next(g for g in groups.itertuples() if len(repr(float(g.mean_errors))) > 8)
        traces = svc.results("typed_results", TRAIN_RUN)
    trace_id = traces[
        (traces.datapoint_id == group.datapoint_id) & (traces.step_number == group.step_number)
    ].trace_id.iloc[0]
    code, out, _ = cli("show", trace_id)
    assert code == 0
    assert f"mean_errors={human_number(float(group.mean_errors))}" in out
    assert repr(float(group.mean_errors)) not in out  # not 17 digits
