"""The batch mapper behind Modal mode, through a local process-pool runner.

The runner is the same interface Modal mode uses (payload in, report or exception out), with
spawned worker processes instead of containers: scheduling, retries, crash handling and resume
are the batch mapper's and the one run path's own logic, exercised for real against chDB. The
test process never holds the store open while workers run (chDB lets one process open it at a
time).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from manta_lib.errors import ComputationAborted
from manta_lib.models import EntityLevel
from manta_lib.pipeline import Limits, RunOptions, run_pipeline
from manta_lib.pipeline.batches import BatchMapper
from manta_lib.settings import MantaSettings, load_settings
from manta_lib.store import Store
from tests.lib import driver_defs
from tests.lib.pipeline.stored import load_numbered, stored_snapshot
from tests.lib.process_pool_runner import ProcessPoolRunner

REPO = Path(__file__).resolve().parents[3]


def _statuses(settings: MantaSettings) -> dict[str, str]:
    """Stored ``__status__`` per trace (the resume record)."""
    with Store.open(settings) as store:
        return dict(
            store.rows(
                "SELECT entity_id, value_string FROM {db}.entity_metadata FINAL "
                "WHERE entity_level = 'trace' AND column = '__status__'"
            )
        )


def _raw_label_rows(settings: MantaSettings) -> dict[str, int]:
    """Rows written per trace before FINAL merges anything: >1 means written twice."""
    with Store.open(settings) as store:
        return dict(
            store.rows(
                "SELECT entity_id, count() FROM {db}.entity_metadata "
                "WHERE entity_level = 'trace' AND column = 'label' GROUP BY entity_id"
            )
        )


def _calls(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def _drive(settings: MantaSettings, batch_size: int, **options: Any) -> dict:
    return run_pipeline(
        driver_defs.pipeline,
        "run_d",
        mapper=BatchMapper(ProcessPoolRunner(settings, max_workers=1)),
        options=RunOptions(batch_size=batch_size, progress=False, max_workers=2, **options),
        settings=settings,
        mode="local-processes",
    )


@pytest.mark.slow
def test_workers_match_local_mode_and_a_rerun_maps_nothing(
    settings: MantaSettings,
    manta_env: dict[str, str],
    tmp_path: Path,
    calls: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    load_numbered(settings, tmp_path, 14, "run_d")
    result = _drive(settings, batch_size=4)

    assert [o.entity_id for o in result[EntityLevel.TRACE]] == [f"t{i:03d}" for i in range(14)]
    assert len(result[EntityLevel.DATAPOINT]) == 5 and len(result[EntityLevel.RUN]) == 1
    assert sorted(_calls(calls)) == [f"t{i:03d}" for i in range(14)]
    driven = stored_snapshot(settings)

    # Same run_id again: every trace is stored, nothing is mapped, same result.
    calls.unlink()
    again = _drive(settings, batch_size=4)
    assert _calls(calls) == []
    assert [o.output for o in again[EntityLevel.DATAPOINT]] == [
        o.output for o in result[EntityLevel.DATAPOINT]
    ]
    assert set(_raw_label_rows(settings).values()) == {1}

    # Local mode (the same ThreadMapper, in this process) writes the same values.
    monkeypatch.setenv("MANTA_DATABASE", manta_env["MANTA_DATABASE"] + "_local")
    local_settings = load_settings()
    load_numbered(local_settings, tmp_path, 14, "run_d")
    driver_defs.pipeline.run("run_d", mode="local", batch_size=4, progress=False)
    assert stored_snapshot(local_settings) == driven


@pytest.mark.slow
def test_worker_crash_on_one_batch_is_retried_without_writing_twice(
    settings: MantaSettings, tmp_path: Path, calls: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    load_numbered(settings, tmp_path, 9, "run_d")
    monkeypatch.setenv("MANTA_TEST_CRASH_ON", "t004")
    monkeypatch.setenv("MANTA_TEST_CRASH_ONCE_FILE", str(tmp_path / "crashed"))

    result = _drive(settings, batch_size=3)

    assert (tmp_path / "crashed").exists(), "the worker process really died"
    assert len(result[EntityLevel.TRACE]) == 9
    assert _calls(calls).count("t004") == 2, "the crashed batch ran again"
    assert _statuses(settings) == {f"t{i:03d}": "ok" for i in range(9)}
    assert set(_raw_label_rows(settings).values()) == {1}


@pytest.mark.slow
def test_a_trace_that_kills_its_worker_twice_is_recorded_as_its_error(
    settings: MantaSettings, tmp_path: Path, calls: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    load_numbered(settings, tmp_path, 6, "run_d")
    monkeypatch.setenv("MANTA_TEST_CRASH_ON", "t001")

    # Attempt 1 dies on t001; attempt 2 maps the traces in flight then alone first and dies on
    # t001 alone; attempt 3 records t001's error (the workers share the crash journal under
    # MANTA_DATA_DIR) and completes the batch: the run is reduced with t001 failed.
    result = _drive(settings, batch_size=3)

    assert _calls(calls).count("t001") == 2
    assert _statuses(settings) == {**{f"t{i:03d}": "ok" for i in range(6)}, "t001": "error"}
    (error,) = [o.error for o in result[EntityLevel.TRACE] if o.error]
    assert error.startswith("ProcessCrash: the process died 2 times")
    assert len(result[EntityLevel.DATAPOINT]) == 2
    assert set(_raw_label_rows(settings).values()) == {1}


@pytest.mark.slow
def test_driver_killed_mid_run_resumes_without_losing_or_rewriting_a_trace(
    settings: MantaSettings,
    manta_env: dict[str, str],
    tmp_path: Path,
    calls: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    traces, batch_size = 48, 4
    load_numbered(settings, tmp_path, traces, "run_d")
    env = {
        **os.environ,
        "MANTA_TEST_MAP_DELAY_S": "0.03",
        "MANTA_FLUSH_SECONDS": "0.05",
        "PYTHONPATH": str(REPO),
    }
    command = [sys.executable, "-m", "tests.lib.driver_child", "run_d", str(batch_size)]
    # Its own process group: the kill takes the driver and its worker processes down at once.
    child = subprocess.Popen(command, env=env, cwd=REPO, start_new_session=True)
    deadline = time.monotonic() + 40
    while len(_calls(calls)) < 18 and time.monotonic() < deadline and child.poll() is None:
        time.sleep(0.02)
    os.killpg(child.pid, signal.SIGKILL)
    child.wait()
    first_calls = _calls(calls)
    assert 18 <= len(first_calls) < traces, "the driver must be killed mid-run"

    persisted_before = set(_raw_label_rows(settings))
    assert persisted_before, "traces finished before the kill must be written"
    assert len(persisted_before) < traces

    env.pop("MANTA_TEST_MAP_DELAY_S")
    calls.unlink()
    subprocess.run(command, env=env, cwd=REPO, check=True, timeout=60)
    second_calls = _calls(calls)

    assert not persisted_before & set(second_calls), "a persisted trace was mapped again"
    assert set(first_calls) | set(second_calls) == {f"t{i:03d}" for i in range(traces)}
    assert _raw_label_rows(settings) == {f"t{i:03d}": 1 for i in range(traces)}
    resumed = stored_snapshot(settings)

    monkeypatch.setenv("MANTA_DATABASE", manta_env["MANTA_DATABASE"] + "_ref")
    reference = load_settings()
    load_numbered(reference, tmp_path, traces, "run_d")
    driver_defs.pipeline.run("run_d", mode="local", batch_size=batch_size, progress=False)
    assert stored_snapshot(reference) == resumed


@pytest.mark.slow
def test_subset_runs_through_workers_and_writes_nothing(
    settings: MantaSettings, tmp_path: Path, calls: Path
) -> None:
    load_numbered(settings, tmp_path, 8, "run_d")
    result = _drive(settings, batch_size=2, limits=Limits(traces=5))
    outputs = result[EntityLevel.TRACE]
    assert [o.entity_id for o in outputs] == [f"t{i:03d}" for i in range(5)]
    assert outputs[3].output == driver_defs.TraceOut(tool_errors=1, label="dp1")
    assert [o.output for o in result[EntityLevel.DATAPOINT]] == [
        driver_defs.DatapointOut(rollouts=3, failed=0),
        driver_defs.DatapointOut(rollouts=2, failed=0),
    ]
    with Store.open(settings) as store:
        assert store.rows("SELECT count() FROM {db}.entity_metadata") == [(0,)]


@pytest.mark.slow
def test_too_many_trace_errors_abort_keeping_written_traces(
    settings: MantaSettings, tmp_path: Path, calls: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    load_numbered(settings, tmp_path, 9, "run_d")
    monkeypatch.setenv("MANTA_TEST_FAIL_ON", "t00")
    with pytest.raises(ComputationAborted, match=r"traces failed, more than max_failures=1"):
        _drive(settings, batch_size=3, max_failures=1)
    assert _statuses(settings) == dict.fromkeys(["t000", "t001", "t002"], "error")
