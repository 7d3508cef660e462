"""``wall_time_percentiles``: the figures of ``mantis runs stats``, as a DuckDB asset.

A real runs log written with ``append_run``, the asset materialized on an ephemeral Dagster
instance with the real ``DuckDBResource``, compared with the CLI's ``--json`` output.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from typer.testing import CliRunner

from manta_dagster.wall_time import (
    TABLE_HEADER,
    WALL_TIME_CRON,
    WALL_TIME_KEY,
    WALL_TIME_RESOURCES,
    markdown_table,
    wall_time_percentiles,
)
from manta_lib.cli import _register_commands, app
from manta_lib.runs_log import append_run, make_run_row

# workflow -> (succeeded runs, failed runs, buckets)
WORKFLOWS: dict[str, tuple[int, int, tuple[str, ...]]] = {
    "default__listings-v1": (130, 12, ("think", "act", "load", "overhead")),
    "acme__triage-v2": (37, 3, ("llm", "map", "persist")),
}


@pytest.fixture(scope="module")
def cli() -> Iterator[CliRunner]:
    """The real ``manta``/``mantis`` Typer app with its commands registered once."""
    if not app.registered_groups and not app.registered_commands:
        _register_commands()
    yield CliRunner()


@pytest.fixture
def runs_log(tmp_path: Path) -> Path:
    """A runs log over two month shards: two workflows, failed runs, a bucket sometimes absent."""
    log_dir = tmp_path / "runs_log"
    rng = random.Random(6)
    start = datetime(2026, 9, 20, tzinfo=UTC)
    n = 0
    for workflow_id, (succeeded, failed, buckets) in WORKFLOWS.items():
        statuses = ["succeeded"] * succeeded + ["failed"] * failed
        rng.shuffle(statuses)
        for status in statuses:
            n += 1
            breakdown = {b: round(rng.uniform(0.5, 90.0), 3) for b in buckets}
            if rng.random() < 0.2:
                breakdown.pop(buckets[-1])  # the last bucket is missing from some runs
            created = start + timedelta(hours=4 * n)  # spans September and October
            finished = created + timedelta(seconds=sum(breakdown.values()) + rng.uniform(0, 5))
            row = make_run_row(
                run_id=f"run-{n:04d}",
                workflow_id=workflow_id,
                status=status,
                created_at=created,
                finished_at=finished,
                wall_time_breakdown=breakdown,
                error="boom" if status == "failed" else None,
            )
            assert append_run(row, log_dir=log_dir)
    assert sorted(p.name for p in log_dir.iterdir()) == ["2026-09.jsonl", "2026-10.jsonl"]
    return log_dir


def materialize(run_config: dict[str, Any]) -> dg.AssetMaterialization:
    """Materialize the asset on an ephemeral instance and return its materialization."""
    result = dg.materialize(
        [wall_time_percentiles],
        resources=WALL_TIME_RESOURCES,
        run_config={"ops": {"wall_time_percentiles": {"config": run_config}}},
    )
    assert result.success
    [materialization] = result.asset_materializations_for_node("wall_time_percentiles")
    return materialization


def cli_stats(cli: CliRunner, log_dir: Path, workflow_id: str, *args: str) -> dict[str, Any]:
    """``mantis runs stats <workflow_id> --json`` run in-process on the real app."""
    result = cli.invoke(
        app, ["runs", "stats", workflow_id, "--json", "--log-dir", str(log_dir), *args]
    )
    assert result.exit_code == 0, (result.output, result.exception)
    payload: dict[str, Any] = json.loads(result.output)
    return payload


def as_cli_json(rows: list[dict[str, Any]], workflow_id: str) -> dict[str, Any]:
    """The asset's rows of one workflow in the shape of ``mantis runs stats --json``."""
    mine = [row for row in rows if row["workflow_id"] == workflow_id]
    return {
        "workflow_id": workflow_id,
        "run_count": mine[0]["run_count"],
        "percentiles": {
            row["bucket"]: {
                "p50": row["p50"],
                "p95": row["p95"],
                "p99": row["p99"],
                "count": row["count"],
            }
            for row in mine
        },
    }


def test_figures_equal_mantis_runs_stats(cli: CliRunner, runs_log: Path) -> None:
    materialization = materialize({"log_dir": str(runs_log)})
    rows = materialization.metadata["rows"].value
    assert isinstance(rows, list)
    assert {row["workflow_id"] for row in rows} == set(WORKFLOWS)
    for workflow_id in WORKFLOWS:
        expected = cli_stats(cli, runs_log, workflow_id)
        assert as_cli_json(rows, workflow_id) == expected
        # Same row order as the CLI table: p50 descending, total_time_s last.
        assert [r["bucket"] for r in rows if r["workflow_id"] == workflow_id] == list(
            expected["percentiles"]
        )
    # The newest 100 of 130 succeeded runs; all 37 of the smaller workflow.
    assert {r["workflow_id"]: r["run_count"] for r in rows} == {
        "default__listings-v1": 100,
        "acme__triage-v2": 37,
    }
    assert materialization.metadata["dagster/row_count"].value == len(rows)
    assert materialization.metadata["workflows"].value == 2
    assert "note" not in materialization.metadata


def test_config_matches_the_cli_flags(cli: CliRunner, runs_log: Path) -> None:
    rows = materialize({"log_dir": str(runs_log), "last": 0, "status": ""}).metadata["rows"].value
    assert isinstance(rows, list)
    for workflow_id, (succeeded, failed, _) in WORKFLOWS.items():
        expected = cli_stats(cli, runs_log, workflow_id, "--last", "0", "--status", "")
        assert expected["run_count"] == succeeded + failed
        assert as_cli_json(rows, workflow_id) == expected


def test_markdown_metadata_holds_the_table(runs_log: Path) -> None:
    materialization = materialize({"log_dir": str(runs_log)})
    table = materialization.metadata["percentiles"]
    assert isinstance(table, dg.MarkdownMetadataValue)
    rows = materialization.metadata["rows"].value
    assert isinstance(rows, list)
    lines = str(table.value).splitlines()
    assert lines[0] == TABLE_HEADER
    assert len(lines) == 2 + len(rows)
    first = rows[0]
    assert lines[2] == (
        f"| {first['workflow_id']} | {first['bucket']} | {first['run_count']} | "
        f"{first['count']} | {first['p50']:.3f} | {first['p95']:.3f} | {first['p99']:.3f} |"
    )
    assert str(table.value) == markdown_table(rows)


def test_missing_runs_log_materializes_an_empty_table_with_a_note(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    materialization = materialize({"log_dir": str(missing)})
    assert materialization.metadata["rows"].value == []
    assert materialization.metadata["dagster/row_count"].value == 0
    note = materialization.metadata["note"].value
    assert isinstance(note, str)
    assert str(missing) in note and "does not exist" in note
    assert len(str(materialization.metadata["percentiles"].value).splitlines()) == 2


def test_empty_runs_log_directory_materializes_an_empty_table(tmp_path: Path) -> None:
    empty = tmp_path / "runs_log"
    empty.mkdir()
    materialization = materialize({"log_dir": str(empty)})
    assert materialization.metadata["dagster/row_count"].value == 0
    assert "no month shard" in str(materialization.metadata["note"].value)


def test_no_matching_run_says_so(runs_log: Path) -> None:
    materialization = materialize({"log_dir": str(runs_log), "status": "cancelled"})
    assert materialization.metadata["dagster/row_count"].value == 0
    assert "no cancelled run matches" in str(materialization.metadata["note"].value)


def test_log_dir_defaults_to_the_settings(
    monkeypatch: pytest.MonkeyPatch, cli: CliRunner, runs_log: Path
) -> None:
    monkeypatch.setenv("MANTA_RUNS_LOG_DIR", str(runs_log))
    rows = materialize({}).metadata["rows"].value
    assert isinstance(rows, list)
    assert as_cli_json(rows, "acme__triage-v2") == cli_stats(cli, runs_log, "acme__triage-v2")


def test_refreshed_daily_by_automation() -> None:
    spec = wall_time_percentiles.get_asset_spec(WALL_TIME_KEY)
    condition = spec.automation_condition
    assert condition is not None
    assert condition.get_label() == f"on_cron({WALL_TIME_CRON}, UTC)"
    assert WALL_TIME_CRON == "0 6 * * *"
    assert spec.kinds == {"duckdb"}
