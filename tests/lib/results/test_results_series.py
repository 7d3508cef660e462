"""Series over steps match a hand computation from the results table; plots are real images."""

from __future__ import annotations

from pathlib import Path

import pytest

from manta_lib.errors import QueryError
from manta_lib.service import MantaService
from tests.lib.results.conftest import EVAL_RUN, TRAIN_RUN
from tests.lib.results.test_results_compare import ref_percentile

# Seeded stores or seconds per test: make test runs them, make check leaves them out.
pytestmark = pytest.mark.slow


def test_trace_level_series_per_step_and_run(svc: MantaService) -> None:
    curve = svc.series("typed_results", "tool_errors", [EVAL_RUN, TRAIN_RUN])
    frame = svc.results("typed_results", [EVAL_RUN, TRAIN_RUN], where="status == 'ok'")
    expected = {}
    for (run, phase, step), group in frame.groupby(["run_id", "phase", "step_number"]):
        values = [float(v) for v in group.tool_errors]
        expected[(run, phase, int(step))] = (
            sum(values) / len(values), ref_percentile(values, 0.5),
            ref_percentile(values, 0.95), len(values),
        )  # fmt: skip
    got = {
        (row.run_id, row.phase, int(row.step_number)): (row.mean, row.p50, row.p95, row.count)
        for row in curve.itertuples()
    }
    assert got.keys() == expected.keys()
    # One point per run, phase and step, in that order with steps as numbers.
    assert list(got) == sorted(got)
    for key, (mean, p50, p95, count) in expected.items():
        assert got[key] == (pytest.approx(mean), pytest.approx(p50), pytest.approx(p95), count)


def test_step_level_and_boolean_rate(svc: MantaService) -> None:
    steps = svc.series("typed_results", "mean_errors", TRAIN_RUN, level="step")
    table = svc.results("typed_results", TRAIN_RUN, level="step")
    assert list(zip(steps.phase, steps.step_number, strict=False)) == sorted(
        zip(table.phase, table.step_number, strict=False)
    )
    assert list(steps["count"]) == [1] * len(table)
    rate = svc.series("typed_results", "passed", TRAIN_RUN)
    frame = svc.results("typed_results", TRAIN_RUN, where="status == 'ok'")
    first = frame[(frame.step_number == rate.step_number.iloc[0]) & (frame.phase == "eval")]
    assert rate.phase.iloc[0] == "eval"
    assert rate["mean"].iloc[0] == pytest.approx(first.passed.astype(float).mean())


def test_series_refuses_what_it_cannot_aggregate(svc: MantaService) -> None:
    with pytest.raises(QueryError, match="needs a numeric or boolean column"):
        svc.series("typed_results", "label", TRAIN_RUN)
    with pytest.raises(QueryError, match="column 'tool_erors' of judge 'typed_results'"):
        svc.series("typed_results", "tool_erors", TRAIN_RUN)


def test_plot_writes_png_and_svg(svc: MantaService, tmp_path: Path) -> None:
    png = svc.plot_series("typed_results", "tool_errors", [EVAL_RUN, TRAIN_RUN], tmp_path / "c.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    svg = svc.plot_series(
        "typed_results", "mean_errors", TRAIN_RUN, tmp_path / "c.svg", level="step"
    )
    assert "<svg" in svg.read_text()[:500] and TRAIN_RUN in svg.read_text()


def test_plot_cli(cli, tmp_path: Path) -> None:
    target = tmp_path / "curve.png"
    code, out, _ = cli(
        "plot", "typed_results", "tool_errors", "-r", EVAL_RUN, "-r", TRAIN_RUN, "-o", str(target)
    )
    assert code == 0 and target.stat().st_size > 1000 and "over 2 run(s)" in out
    assert cli("plot", "typed_results", "tool_errors", "-r", TRAIN_RUN)[0] == 2
    code, _, err = cli("plot", "typed_results", "label", "-r", TRAIN_RUN, "-o", str(target))
    assert code == 1 and "numeric or boolean" in err


def test_column_of_another_level_names_that_level(svc: MantaService, tmp_path: Path) -> None:
    # mean_errors exists at the datapoint and step levels, not at the default trace level:
    # "unknown" would send the reader looking for a typo that is not there.
    with pytest.raises(QueryError) as caught:
        svc.plot_series("typed_results", "mean_errors", TRAIN_RUN, tmp_path / "c.png")
    message = str(caught.value)
    assert "is unknown" not in message
    assert "not stored at level 'trace'" in message
    assert "exists at levels datapoint, step" in message
    assert not (tmp_path / "c.png").exists()
    # A column no level has is still unknown, with the close names.
    with pytest.raises(QueryError, match="'mean_erors' of judge 'typed_results' is unknown"):
        svc.series("typed_results", "mean_erors", TRAIN_RUN, level="step")


def test_unknown_trace_id_names_the_closest_stored_ids(svc: MantaService) -> None:
    stored = svc.get_traces(TRAIN_RUN, limit=1)[0].trace_id
    typo = stored[:-1]  # one character short, as a copy-paste loses it
    with pytest.raises(QueryError) as caught:
        svc.get_trace(typo)
    message = str(caught.value)
    assert f"trace_id {typo!r} not found; closest stored ids: " in message
    close = message.split("closest stored ids: ")[1].split(", ")
    assert stored in close and len(close) == 5
    assert svc.similar_trace_ids(typo) == close


def test_show_cli_suggests_close_ids(svc: MantaService, cli) -> None:
    stored = svc.get_traces(TRAIN_RUN, limit=1)[0].trace_id
    code, out, err = cli("show", stored[:-1])
    assert code != 0
    assert "closest stored ids:" in out + err and stored in out + err
