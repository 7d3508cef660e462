"""The reader: shards newest first, bad lines counted and reported, never a crash."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from pathlib import Path

import pytest

from manta_lib.errors import ConfigError
from manta_lib.runs_log import ReadReport, append_run, iter_rows, list_shards, make_run_row


def row_line(run_id: str, finished_at: str = "2026-05-13T18:09:34Z", **extra: object) -> str:
    row = make_run_row(
        run_id=run_id,
        workflow_id="wf",
        status="succeeded",
        created_at="2026-05-01T00:00:00Z",
        finished_at=finished_at,
        wall_time_breakdown={"think": 1.0},
        **extra,
    )
    return json.dumps(row)


def test_shards_are_listed_newest_first_and_other_files_ignored(log_dir: Path) -> None:
    for name in ("2025-12.jsonl", "2026-02.jsonl", "2026-01.jsonl"):
        (log_dir / name).write_text("")
    for name in ("notes.txt", "2026-13.jsonl", "2026-01.jsonl.bak"):
        (log_dir / name).write_text("")
    (log_dir / "2026-03.jsonl").mkdir()
    assert [s.name for s in list_shards(log_dir)] == [
        "2026-02.jsonl",
        "2026-01.jsonl",
        "2025-12.jsonl",
    ]
    assert [s.name for s in list_shards(log_dir, since=datetime(2026, 1, 31, tzinfo=UTC))] == [
        "2026-02.jsonl",
        "2026-01.jsonl",
    ]
    assert [s.name for s in list_shards(log_dir, until=datetime(2026, 1, 1, tzinfo=UTC))] == [
        "2025-12.jsonl",
    ]


def test_rows_stream_newest_shard_first_in_file_order(log_dir: Path) -> None:
    for run_id, finished in [
        ("a", "2026-04-02T00:00:00Z"),
        ("b", "2026-05-02T00:00:00Z"),
        ("c", "2026-04-01T00:00:00Z"),
        ("d", "2026-05-01T00:00:00Z"),
    ]:
        assert append_run(json.loads(row_line(run_id, finished)), log_dir)
    assert [r["run_id"] for r in iter_rows(log_dir)] == ["b", "d", "a", "c"]


def test_blank_truncated_corrupt_and_unknown_version_lines_are_counted_not_raised(
    log_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    shard = log_dir / "2026-05.jsonl"
    lines = [
        row_line("ok-1", shoe_size=44),
        "",
        "   ",
        "{not json",
        "[1, 2, 3]",
        json.dumps({**json.loads(row_line("v2")), "schema_version": 2}),
        row_line("ok-2"),
    ]
    shard.write_text("\n".join(lines) + "\n" + row_line("cut")[:40])
    report = ReadReport()
    rows = list(iter_rows(log_dir, report=report))
    assert [r["run_id"] for r in rows] == ["ok-1", "ok-2"]
    assert rows[0]["shoe_size"] == 44
    assert (report.blank, report.corrupt, report.truncated, report.unknown_version) == (2, 2, 1, 1)
    assert report.lines == 8
    assert report.first_bad == f"{shard}:4"
    with caplog.at_level(logging.WARNING, logger="manta_lib.runs_log"):
        report.warn()
    assert (
        f"skipped 4 line(s): 2 corrupt, 1 truncated, 1 with a schema_version other than 1; "
        f"first at {shard}:4"
    ) in caplog.text


def test_a_clean_log_warns_about_nothing(log_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    (log_dir / "2026-05.jsonl").write_text(row_line("a") + "\n")
    report = ReadReport()
    with caplog.at_level(logging.WARNING, logger="manta_lib.runs_log"):
        assert len(list(iter_rows(log_dir, report=report))) == 1
        report.warn()
    assert caplog.text == ""


def test_a_missing_log_directory_says_where_it_looked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"runs log directory .*/nowhere does not exist; set "):
        list_shards(tmp_path / "nowhere")
