"""Fault tests of the importer: a real SIGKILL right after a batch's span (or trace) insert,
Ctrl-C at that moment and while streaming stdin; then the same import again. Reads must never
show a duplicate or a span without its trace, and the final counts must be exact."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.robustness.import_subprocess import (
    manta,
    no_duplicates,
    reimport,
    store_env,
    table_state,
)

# Each test runs the CLI as a subprocess and kills or interrupts it.
pytestmark = pytest.mark.slow

TRACES = 12
BATCH = 4  # three batches; two spans per trace


def trace_line(index: int) -> str:
    spans = [
        {"kind": "message", "role": "user", "content": f"question {index}"},
        {"kind": "llm", "tokens_output": index},
    ]
    return json.dumps({"trace_id": f"t{index:03d}", "run_id": "run_f", "spans": spans})


@pytest.fixture
def traces_file(tmp_path: Path) -> Path:
    path = tmp_path / "traces.jsonl"
    path.write_text("".join(trace_line(i) + "\n" for i in range(TRACES)))
    return path


def kill_then_reimport(tmp_path: Path, path: Path, fault: str) -> None:
    killed_env = store_env(tmp_path, MANTA_TEST_KILL_AFTER=fault)
    killed = manta("import", str(path), "--batch-size", str(BATCH), env=killed_env)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    table, batch = fault.split(":")
    full_batches = int(batch) - (table == "spans")

    again = reimport(store_env(tmp_path), path, BATCH)

    after_crash, final = again["before"], again["after"]
    assert after_crash["traces"] == full_batches * BATCH
    assert after_crash["spans"] == int(batch) * BATCH * 2
    missing_spans = 2 * (TRACES - int(batch) * BATCH)
    assert again["summary"].startswith(
        f"{TRACES - full_batches * BATCH} traces and {missing_spans} spans loaded"
    )
    assert (final["traces"], final["spans"]) == (TRACES, 2 * TRACES)
    assert no_duplicates(final), final


def test_kill_after_a_span_insert_then_reimport_stores_each_row_once(
    tmp_path: Path, traces_file: Path
) -> None:
    kill_then_reimport(tmp_path, traces_file, "spans:2")


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["spans:1", "traces:2"])
def test_kill_at_every_insert_then_reimport(tmp_path: Path, traces_file: Path, fault: str) -> None:
    kill_then_reimport(tmp_path, traces_file, fault)


def test_ctrl_c_between_inserts_stops_after_the_batch_with_a_summary(
    tmp_path: Path, traces_file: Path
) -> None:
    env = store_env(tmp_path)
    interrupted = manta(
        "import",
        str(traces_file),
        "--batch-size",
        str(BATCH),
        env={**env, "MANTA_TEST_KILL_AFTER": "spans:2:INT"},
    )

    assert interrupted.returncode == 130, interrupted.stderr
    assert "Traceback" not in interrupted.stderr
    assert interrupted.stderr.strip().splitlines()[-1] == (
        "interrupted: 8 traces and 16 spans were stored (whole batches only); run the same "
        "import again to resume, stored traces are skipped"
    )
    resumed = reimport(env, traces_file, BATCH)
    state = resumed["before"]
    assert (state["traces"], state["spans"], state["orphan_spans"]) == (8, 16, 0)
    assert "8 traces already present" in resumed["summary"]
    assert resumed["after"]["spans"] == 2 * TRACES and no_duplicates(resumed["after"])


@pytest.mark.slow
def test_ctrl_c_while_streaming_stdin(tmp_path: Path) -> None:
    env = store_env(tmp_path, MANTA_LOG_LEVEL="DEBUG", COLUMNS="400")
    process = subprocess.Popen(
        [sys.executable, "-m", "manta_lib.cli", "import", "-", "--batch-size", "2"],
        env=env,
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdin is not None and process.stderr is not None
    process.stdin.write("".join(trace_line(i) + "\n" for i in range(4)))
    process.stdin.flush()
    batches = 0
    deadline = time.monotonic() + 120
    while batches < 2 and time.monotonic() < deadline:  # streamed: written before EOF
        line = process.stderr.readline()
        if not line:
            break
        batches += "trace batch written" in line
    assert batches == 2
    process.send_signal(signal.SIGINT)  # blocked reading stdin, between batches
    _, stderr = process.communicate(timeout=60)

    assert process.returncode == 130, stderr
    assert "interrupted: 4 traces and 8 spans were stored" in stderr
    assert "Traceback" not in stderr
    state = table_state(store_env(tmp_path))
    assert (state["traces"], state["spans"]) == (4, 8) and no_duplicates(state)


def test_import_from_dev_stdin(tmp_path: Path) -> None:
    data = "".join(trace_line(i) + "\n" for i in range(2)).encode()

    result = manta("import", "/dev/stdin", env=store_env(tmp_path), stdin=data)

    assert result.returncode == 0, result.stderr
    assert "2 traces and 4 spans loaded from 1 file" in result.stdout


def test_ctrl_c_while_a_strict_import_writes_takes_everything_back(
    tmp_path: Path, traces_file: Path
) -> None:
    env = store_env(tmp_path)
    interrupted = manta(
        "import",
        str(traces_file),
        "--strict",
        "--batch-size",
        str(BATCH),
        env={**env, "MANTA_TEST_KILL_AFTER": "traces:2:INT"},
    )

    assert interrupted.returncode == 130, interrupted.stderr
    assert (
        interrupted.stderr.strip()
        .splitlines()[-1]
        .startswith("interrupted: nothing was stored (strict")
    )
    state = table_state(env)
    assert (state["traces"], state["spans"]) == (0, 0)


def test_ctrl_c_in_an_import_of_another_format(tmp_path: Path) -> None:
    rollouts = tmp_path / "rollouts.jsonl"
    rollouts.write_text(
        "".join(
            json.dumps({"messages": [{"role": "user", "content": f"q{i}"}], "reward": 1}) + "\n"
            for i in range(TRACES)
        )
    )
    env = store_env(tmp_path)
    interrupted = manta(
        "import",
        str(rollouts),
        "--run-id",
        "rl",
        "--batch-size",
        str(BATCH),
        env={**env, "MANTA_TEST_KILL_AFTER": "spans:2:INT"},
    )

    assert interrupted.returncode == 130, interrupted.stderr
    assert "Traceback" not in interrupted.stderr
    assert (
        interrupted.stderr.strip()
        .splitlines()[-1]
        .startswith("interrupted: 8 traces and 8 spans were stored (whole batches only)")
    )
    resumed = manta("import", str(rollouts), "--run-id", "rl", env=env)
    assert resumed.returncode == 0, resumed.stderr
    assert "8 traces already present" in resumed.stdout
    assert table_state(env)["traces"] == TRACES
