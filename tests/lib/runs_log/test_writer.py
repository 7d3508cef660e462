"""The writer: row validation, month shards, one write() + fsync, best effort on faults."""

from __future__ import annotations

import errno
import json
import logging
import multiprocessing
import os
import shutil
import subprocess
import sys
import threading
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from manta_lib.runs_log import (
    MAX_ROW_BYTES,
    STABLE_KEYS,
    ReadReport,
    RunsLogWriter,
    append_run,
    iter_rows,
    make_run_row,
)
from manta_lib.runs_log import writer as writer_module
from manta_lib.runs_log.writer import PIPE_BUF


def a_row(run_id: str = "r1", **overrides: object) -> dict[str, object]:
    row = make_run_row(
        run_id=run_id,
        workflow_id="wf",
        status="succeeded",
        created_at="2026-05-13T18:05:27Z",
        finished_at="2026-05-13T18:09:34Z",
        wall_time_breakdown={"think": 200.0, "act": 47.0},
    )
    row.update(overrides)
    return row


def lines_of(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def test_make_run_row_has_the_stable_keys_in_order_and_computes_total_time() -> None:
    row = make_run_row(
        run_id="20260513_180527_abc12345",
        workflow_id="default__marketplace-listings-v1",
        status="succeeded",
        created_at=datetime(2026, 5, 13, 18, 5, 27, tzinfo=UTC),
        finished_at=datetime(2026, 5, 13, 20, 9, 34, tzinfo=timezone(timedelta(hours=2))),
        wall_time_breakdown={"think": 92.0},
        profile_id="default__alice-prod",
        trace_count=7,
    )
    assert list(row)[: len(STABLE_KEYS)] == list(STABLE_KEYS)
    assert row["schema_version"] == 1
    assert row["created_at"] == "2026-05-13T18:05:27Z"
    assert row["finished_at"] == "2026-05-13T18:09:34Z"
    assert row["total_time_s"] == 247.0
    assert row["trace_count"] == 7
    assert row["tenant_id"] == "default" and row["error"] is None


def test_append_writes_one_compact_line_to_the_month_shard_of_finished_at(
    log_dir: Path,
) -> None:
    # 01:00 on June 1st at +02:00 is still May in UTC.
    row = a_row(finished_at="2026-06-01T01:00:00+02:00", note="extra keys are kept")
    assert append_run(row, log_dir) is True
    assert sorted(p.name for p in log_dir.iterdir()) == ["2026-05.jsonl"]
    (line,) = lines_of(log_dir / "2026-05.jsonl")
    assert json.loads(line) == row
    assert ", " not in line and ": " not in line


def test_missing_optional_keys_get_defaults_and_extra_keys_follow_the_stable_ones(
    log_dir: Path,
) -> None:
    row = {
        "extra": [1, 2],
        "run_id": "r9",
        "workflow_id": "wf",
        "status": "failed",
        "created_at": "2026-05-13T18:05:27Z",
        "finished_at": "2026-05-13T18:09:34Z",
        "total_time_s": 247,
        "wall_time_breakdown": {},
    }
    assert append_run(row, log_dir)
    written = json.loads(lines_of(log_dir / "2026-05.jsonl")[0])
    assert list(written) == [*STABLE_KEYS, "extra"]
    assert written["schema_version"] == 1 and written["tenant_id"] == "default"


def test_log_dir_defaults_to_manta_runs_log_dir(log_dir: Path) -> None:
    assert append_run(a_row())
    assert (log_dir / "2026-05.jsonl").exists()


def test_missing_directory_is_created(tmp_path: Path) -> None:
    target = tmp_path / "not" / "yet" / "there"
    assert append_run(a_row(), target)
    assert len(lines_of(target / "2026-05.jsonl")) == 1


@pytest.mark.parametrize(
    ("override", "reason"),
    [
        ({"status": "paused"}, "status='paused' is not logged"),
        ({"schema_version": 2}, "schema_version=2 is not supported"),
        ({"finished_at": "yesterday"}, "finished_at='yesterday' is not an ISO-8601"),
        ({"workflow_id": ""}, "workflow_id='' must be a non-empty string"),
        ({"total_time_s": float("nan")}, "total_time_s=nan must be a finite number"),
        ({"wall_time_breakdown": {"think": "slow"}}, "wall_time_breakdown['think']='slow'"),
        ({"extra": object()}, "not JSON serializable"),
    ],
)
def test_invalid_rows_are_dropped_logged_and_never_raised(
    log_dir: Path, caplog: pytest.LogCaptureFixture, override: dict[str, object], reason: str
) -> None:
    with caplog.at_level(logging.ERROR, logger="manta_lib.runs_log"):
        assert append_run(a_row(run_id="bad-1", **override), log_dir) is False
    assert list(log_dir.iterdir()) == []
    assert "dropped run 'bad-1' of workflow" in caplog.text
    assert reason in caplog.text


def test_directory_under_a_regular_file_is_logged_and_swallowed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A real condition even root cannot bypass: a path component is a regular file.
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with caplog.at_level(logging.ERROR, logger="manta_lib.runs_log"):
        assert append_run(a_row(run_id="r-ro"), blocker / "runs_log") is False
    assert "dropped run 'r-ro'" in caplog.text
    assert "ENOTDIR" in caplog.text or "EEXIST" in caplog.text
    assert blocker.read_text() == "not a directory"


@pytest.mark.skipif(
    shutil.which("unshare") is None
    or subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode != 0,
    reason="needs unshare with user and mount namespaces",
)
def test_read_only_file_system_is_logged_and_swallowed(tmp_path: Path) -> None:
    # A read-only bind mount in a private mount namespace: EROFS, which root cannot bypass.
    log_dir = tmp_path / "ro"
    log_dir.mkdir()
    (log_dir / "2026-05.jsonl").write_text("")
    script = (
        "import logging, sys\n"
        "logging.basicConfig(level=logging.ERROR, stream=sys.stdout, format='%(message)s')\n"
        "from manta_lib.runs_log import append_run, make_run_row\n"
        "row = make_run_row(run_id='r-erofs', workflow_id='wf', status='succeeded',\n"
        "    created_at='2026-05-13T18:05:27Z', finished_at='2026-05-13T18:09:34Z',\n"
        "    wall_time_breakdown={'think': 1.0})\n"
        f"print('written', append_run(row, {str(log_dir)!r}))\n"
    )
    mount = (
        f'mount --bind "{log_dir}" "{log_dir}" && mount -o remount,ro,bind "{log_dir}" && '
        f'"{sys.executable}" -c "$SCRIPT"'
    )
    proc = subprocess.run(
        ["unshare", "-rm", "sh", "-c", mount],
        capture_output=True,
        text=True,
        env={**os.environ, "SCRIPT": script},
        cwd=Path(__file__).resolve().parents[3],
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "written False" in proc.stdout
    assert "dropped run 'r-erofs'" in proc.stdout and "EROFS" in proc.stdout
    assert (log_dir / "2026-05.jsonl").read_text() == ""


def test_disk_full_on_write_is_logged_and_swallowed(
    log_dir: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    def disk_full(fd: int, data: bytes) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(writer_module.os, "write", disk_full)
    with caplog.at_level(logging.ERROR, logger="manta_lib.runs_log"):
        assert append_run(a_row(run_id="r-full"), log_dir) is False
    assert "dropped run 'r-full' of workflow 'wf'" in caplog.text
    assert "ENOSPC" in caplog.text and "2026-05.jsonl" in caplog.text


def test_short_write_is_terminated_so_the_next_row_is_intact(
    log_dir: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_write = os.write

    def half_then_fine(fd: int, data: bytes) -> int:
        if data == b"\n":
            return real_write(fd, data)
        return real_write(fd, data[: len(data) // 2])

    monkeypatch.setattr(writer_module.os, "write", half_then_fine)
    with caplog.at_level(logging.ERROR, logger="manta_lib.runs_log"):
        assert append_run(a_row(run_id="r-short"), log_dir) is False
    assert "short write" in caplog.text
    monkeypatch.setattr(writer_module.os, "write", real_write)
    assert append_run(a_row(run_id="r-next"), log_dir) is True
    report = ReadReport()
    assert [r["run_id"] for r in iter_rows(log_dir, report=report)] == ["r-next"]
    assert report.corrupt == 1


def test_a_row_over_pipe_buf_is_one_write_and_an_oversized_row_is_dropped(
    log_dir: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    sizes: list[int] = []
    real_write = os.write

    def counting_write(fd: int, data: bytes) -> int:
        sizes.append(len(data))
        return real_write(fd, data)

    monkeypatch.setattr(writer_module.os, "write", counting_write)
    assert append_run(a_row(run_id="big", blob="x" * (3 * PIPE_BUF)), log_dir)
    assert len(sizes) == 1 and sizes[0] > PIPE_BUF
    with caplog.at_level(logging.ERROR, logger="manta_lib.runs_log"):
        assert not append_run(a_row(run_id="huge", blob="x" * MAX_ROW_BYTES), log_dir)
    assert len(sizes) == 1
    assert "dropped run 'huge'" in caplog.text and "limit" in caplog.text
    assert [r["run_id"] for r in iter_rows(log_dir)] == ["big"]


# --------------------------------------------------------------------------- concurrency

PROCESSES, THREADS, ROWS = 4, 8, 25


def _append_from_threads(log_dir: str, process: int) -> int:
    """Worker process: THREADS threads each append ROWS rows (some above PIPE_BUF)."""
    writer = RunsLogWriter(log_dir)
    failures: list[str] = []

    def work(thread: int) -> None:
        for i in range(ROWS):
            finished = datetime(2026, 5 if i % 2 else 6, 1 + i % 28, tzinfo=UTC)
            row = make_run_row(
                run_id=f"p{process}-t{thread}-r{i}",
                workflow_id="wf",
                status="succeeded",
                created_at=finished - timedelta(seconds=10),
                finished_at=finished,
                wall_time_breakdown={"think": float(i)},
                padding="y" * (6000 if i % 5 == 0 else 100 * thread),
            )
            if not writer.append(row):
                failures.append(row["run_id"])

    threads = [threading.Thread(target=work, args=(t,)) for t in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return len(failures)


def test_processes_times_threads_append_exactly_that_many_parseable_lines(
    log_dir: Path,
) -> None:
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(PROCESSES, mp_context=context) as pool:
        failures = list(
            pool.map(_append_from_threads, [str(log_dir)] * PROCESSES, range(PROCESSES))
        )
    assert failures == [0] * PROCESSES
    lines = [line for shard in sorted(log_dir.iterdir()) for line in lines_of(shard)]
    assert len(lines) == PROCESSES * THREADS * ROWS
    run_ids = {json.loads(line)["run_id"] for line in lines}
    assert run_ids == {
        f"p{p}-t{t}-r{i}" for p in range(PROCESSES) for t in range(THREADS) for i in range(ROWS)
    }
    report = ReadReport()
    assert len(list(iter_rows(log_dir, report=report))) == PROCESSES * THREADS * ROWS
    assert report.skipped == 0 and report.blank == 0
