"""kill -9 at any moment loses at most ``MANTA_FLUSH_SECONDS`` of completed work.

A child maps slow traces on 4 threads and records when each one finished; the test kills it
with SIGKILL mid-run, runs it again, and looks at which traces the second run had to redo: every
one of them must have finished less than one flush interval plus one map call before the kill
(a trace finishing just after a flush waits for the next one; nothing waits for a batch or a
chunk of traces to fill up).
"""

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
from tests.lib.builders import load_traces, trace_line

# timing-sensitive: run one at a time, after the parallel pass
pytestmark = pytest.mark.serial

REPO = Path(__file__).resolve().parents[3]
TRACES = 160
MAP_S = 0.4
FLUSH_S = 2.0


def _finished(path: Path) -> dict[str, float]:
    if not path.exists():
        return {}
    rows = (line.split() for line in path.read_text().splitlines() if line.strip())
    return {trace_id: float(at) for trace_id, at in rows}


def _persisted() -> set[str]:
    with Store.open(load_settings()) as store:
        return {
            entity_id
            for (entity_id,) in store.rows(
                "SELECT entity_id FROM {db}.entity_metadata FINAL "
                "WHERE entity_level = 'trace' AND column = '__status__'"
            )
        }


@pytest.mark.slow
def test_sigkill_loses_at_most_one_flush_interval_of_completed_traces(
    manta_env: dict[str, str], tmp_path: Path
) -> None:
    lines = [
        trace_line(f"t{i:03d}", run_id="run_k", datapoint=f"dp{i // 8}", step=i // 40)
        for i in range(TRACES)
    ]
    with Store.open(load_settings()) as store:
        load_traces(store, lines, tmp_path)

    done_file = tmp_path / "done.txt"
    env = {
        **os.environ,
        "MANTA_TEST_DONE_FILE": str(done_file),
        "MANTA_TEST_MAP_DELAY_S": str(MAP_S),
        "MANTA_FLUSH_SECONDS": str(FLUSH_S),
        "PYTHONPATH": str(REPO),
    }
    command = [sys.executable, "-m", "tests.lib.resume_child", "run_k", "4"]
    child = subprocess.Popen(command, env=env, cwd=REPO)
    # Long enough for a few flushes: about 3 flush intervals of work on 4 threads.
    deadline = time.monotonic() + 90
    while len(_finished(done_file)) < 60 and time.monotonic() < deadline:
        time.sleep(0.02)
    killed_at = time.time()
    child.send_signal(signal.SIGKILL)
    child.wait()
    finished = _finished(done_file)
    assert 60 <= len(finished) < TRACES, "the child must be killed mid-run"

    persisted = _persisted()
    lost = {tid: at for tid, at in finished.items() if tid not in persisted}
    assert persisted <= set(finished)

    # The resumed run redoes exactly the traces that were not written, and finishes the run.
    done_file.unlink()
    env.pop("MANTA_TEST_MAP_DELAY_S")
    subprocess.run(command, env=env, cwd=REPO, check=True, timeout=120)
    redone = set(_finished(done_file))
    assert not redone & persisted, "a written trace was mapped again"
    assert set(lost) <= redone
    assert len(_persisted()) == TRACES

    if lost:
        oldest = killed_at - min(lost.values())
        assert oldest < FLUSH_S + MAP_S, (
            f"a trace finished {oldest:.2f} s before the kill was lost (at most "
            f"{FLUSH_S} s flush interval + {MAP_S} s of one map call may be lost)"
        )
