"""Fault tests of ``manta demo seed``: killed (SIGKILL) right after a batch's span or trace
insert, or interrupted (Ctrl-C) there; the same command then completes the seed with exact
counts and no duplicate or orphan rows, and ``--if-empty`` completes it too."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from manta_lib.demo import generate_demo
from tests.robustness.import_subprocess import manta, no_duplicates, store_env, table_state

# Each test runs the CLI as a subprocess and kills or interrupts it.
pytestmark = pytest.mark.slow

TRACES = 240
BATCH = 80  # about three batches


def expected_rows() -> tuple[int, int]:
    batches = list(generate_demo(traces=TRACES, seed=7, batch_traces=BATCH))
    assert len(batches) >= 3
    return sum(b.trace_count for b in batches), sum(b.span_count for b in batches)


def seed(env: dict[str, str], *extra: str) -> tuple[int, str, str]:
    args = ("demo", "seed", "--traces", str(TRACES), "--batch-traces", str(BATCH), *extra)
    result = manta(*args, env=env)
    return result.returncode, result.stdout, result.stderr


def check_complete(env: dict[str, str]) -> None:
    state = table_state(env)
    assert (state["traces"], state["spans"]) == expected_rows()
    assert no_duplicates(state), state


@pytest.mark.parametrize(
    "fault,resume",
    [
        ("spans:2", ()),
        pytest.param("traces:1", ("--if-empty",), marks=pytest.mark.slow),
    ],
)
def test_a_killed_seed_is_completed_by_running_it_again(
    tmp_path: Path, fault: str, resume: tuple[str, ...]
) -> None:
    env = store_env(tmp_path)
    code, _, stderr = seed({**env, "MANTA_TEST_KILL_AFTER": fault})
    assert code == -signal.SIGKILL, stderr

    code, stdout, stderr = seed(env, *resume)

    assert code == 0, stderr
    assert "traces were already stored (an earlier seed was stopped)" in stdout
    check_complete(env)
    code, stdout, _ = seed(env)
    assert code == 0 and "nothing seeded" in stdout  # complete: a third run writes nothing


@pytest.mark.slow
def test_ctrl_c_stops_a_seed_between_batches_and_it_resumes(tmp_path: Path) -> None:
    env = store_env(tmp_path)
    code, _, stderr = seed({**env, "MANTA_TEST_KILL_AFTER": "spans:2:INT"})

    assert code == 130, stderr
    assert "Traceback" not in stderr
    assert "were written (whole batches only); run the same command again to resume" in stderr
    state = table_state(env)
    assert state["orphan_spans"] == 0 and no_duplicates(state)

    assert seed(env)[0] == 0
    check_complete(env)
