"""Run the importer and the demo seed in real subprocesses against their own embedded store,
so a test can SIGKILL or SIGINT them (chDB admits one process per store path, so the test
process reads the results through a subprocess too)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

_STATE = """
import json
from manta_lib.settings import load_settings
from manta_lib.store import Store


def state(store):
    traces = store.rows("SELECT count(), uniqExact(trace_id) FROM {db}.traces")[0]
    spans = store.rows("SELECT count(), uniqExact(trace_id, span_id) FROM {db}.spans")[0]
    orphans = store.rows(
        "SELECT count() FROM {db}.spans WHERE trace_id NOT IN (SELECT trace_id FROM {db}.traces)"
    )[0][0]
    return {
        "traces": traces[0], "trace_ids": traces[1], "spans": spans[0], "span_keys": spans[1],
        "orphan_spans": orphans,
    }
"""

_PROBE = (
    _STATE
    + """
with Store.open(load_settings()) as store:
    print(json.dumps(state(store)))
"""
)

# Table state after a crash, then the same import again, then the state: one subprocess.
_REIMPORT = (
    _STATE
    + """
import sys
from manta_lib.ingest.loader import import_jsonl
with Store.open(load_settings()) as store:
    before = state(store)
    report = import_jsonl([sys.argv[1]], store=store, batch_size=int(sys.argv[2]))
    print(json.dumps({"before": before, "summary": report.summary(), "after": state(store)}))
"""
)


def store_env(root: Path, **extra: str) -> dict[str, str]:
    """The environment of a subprocess that uses its own embedded store under ``root``."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("MANTA_", "CLICKHOUSE_"))
    }
    env.update(
        CLICKHOUSE_URL=f"chdb://{root / 'chdb'}",
        MANTA_DATABASE="faults",
        MANTA_DATA_DIR=str(root / "data"),
        MANTA_RUNS_LOG_DIR=str(root / "runs_log"),
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def manta(
    *args: str, env: dict[str, str], stdin: bytes | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the ``manta`` command line in a subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "manta_lib.cli", *args],
        env=env,
        input=None if stdin is None else stdin.decode(),
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


def python(code: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


def table_state(env: dict[str, str]) -> dict[str, int]:
    """Row counts of the subprocess store: traces, spans, distinct keys, orphan spans."""
    result = python(_PROBE, env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def no_duplicates(state: dict[str, int]) -> bool:
    return (
        state["traces"] == state["trace_ids"]
        and state["spans"] == state["span_keys"]
        and state["orphan_spans"] == 0
    )


def reimport(env: dict[str, str], path: Path, batch_size: int) -> dict[str, Any]:
    """State before, import summary and state after importing ``path`` again."""
    result = python(_REIMPORT, env, str(path), str(batch_size))
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])
