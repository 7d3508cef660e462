"""Resume after a real SIGKILL: nothing persisted is recomputed, nothing is lost."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from manta_lib.settings import load_settings
from manta_lib.store import Store
from tests.lib import pipeline_defs
from tests.lib.builders import load_traces, trace_line
from tests.lib.pipeline.stored import metadata_snapshot

REPO = Path(__file__).resolve().parents[3]
TRACES = 120


def _lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


@pytest.mark.slow
def test_resume_after_sigkill_recomputes_nothing_persisted(
    manta_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Child processes need the store: each process opens it only while it runs.
    lines = [
        trace_line(f"t{i:03d}", run_id="run_big", datapoint=f"dp{i // 6}", step=i // 40)
        for i in range(TRACES)
    ]
    with Store.open(load_settings()) as store:
        load_traces(store, lines, tmp_path)

    calls = tmp_path / "calls.txt"
    env = {
        **os.environ,
        "MANTA_TEST_CALLS_FILE": str(calls),
        "MANTA_TEST_MAP_DELAY_S": "0.05",
        "MANTA_FLUSH_SECONDS": "0.2",
        "PYTHONPATH": str(REPO),
    }
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.lib.resume_child", "run_big"], env=env, cwd=REPO
    )
    deadline = time.monotonic() + 60
    while len(_lines(calls)) < 45 and time.monotonic() < deadline:
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait()
    first_calls = _lines(calls)
    assert 45 <= len(first_calls) < TRACES, "the child must be killed mid-run"

    with Store.open(load_settings()) as store:
        persisted = {
            entity_id
            for (entity_id,) in store.rows(
                "SELECT entity_id FROM {db}.entity_metadata FINAL "
                "WHERE entity_level = 'trace' AND column = '__status__'"
            )
        }
    assert persisted, "finished batches must have been flushed before the kill"

    # Restart in a child too (same code path), env without the delay.
    env.pop("MANTA_TEST_MAP_DELAY_S")
    calls.unlink()
    subprocess.run(
        [sys.executable, "-m", "tests.lib.resume_child", "run_big"], env=env, cwd=REPO, check=True
    )
    second_calls = _lines(calls)
    assert not persisted & set(second_calls), "a persisted trace was mapped again"
    assert set(second_calls) | persisted == {f"t{i:03d}" for i in range(TRACES)}

    with Store.open(load_settings()) as store:
        resumed = metadata_snapshot(store)

    # An uninterrupted run into a fresh database gives the same values.
    monkeypatch.setenv("MANTA_DATABASE", manta_env["MANTA_DATABASE"] + "_ref")
    with Store.open(load_settings()) as store:
        load_traces(store, lines, tmp_path)
    pipeline_defs.full.run("run_big", mode="local", progress=False)
    with Store.open(load_settings()) as store:
        assert metadata_snapshot(store) == resumed
