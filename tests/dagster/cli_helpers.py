"""Helpers of the Dagster CLI and browser tests: the documented commands, run as subprocesses,
and what the store must hold after each."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from manta_lib.demo import seed_demo
from manta_lib.settings import MantaSettings
from manta_lib.store import Store

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
DOC = REPO / "docs" / "dagster.md"
RUN = "run_grpo_math_v1"  # the run the docs use; in the demo data
JUDGE = "tool_errors"
SHARDS = 64
COMMAND_TIMEOUT_S = 120

TRACE_COLUMNS = {"tool_calls", "tool_errors", "failing_tools", "score"}
DATAPOINT_COLUMNS = {"rollouts", "error_rate", "rollouts_with_errors", "mean_score"}
STEP_COLUMNS = {"datapoints", "mean_error_rate", "worst_datapoint_error_rate", "top_failing_tool"}


@dataclass(frozen=True)
class DocCommands:
    """The three ``dagster asset materialize`` lines of docs/dagster.md, as argv lists."""

    one_shard: list[str]
    whole_run: list[str]
    upper: list[str]


def doc_commands() -> DocCommands:
    """Parse the bash block of docs/dagster.md (continuations joined, comments dropped)."""
    text = DOC.read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    assert blocks, f"{DOC} has no ```bash block"
    commands = []
    for block in blocks:
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            argv = shlex.split(line, comments=True)
            if argv[:3] == ["dagster", "asset", "materialize"]:
                commands.append(argv)

    def option(argv: list[str], name: str) -> str | None:
        return argv[argv.index(name) + 1] if name in argv else None

    one_shard = [c for c in commands if "|" in (option(c, "--partition") or "")]
    whole_run = [c for c in commands if option(c, "--partition-range")]
    upper = [c for c in commands if "|" not in (option(c, "--partition") or "|")]
    assert len(one_shard) == len(whole_run) == len(upper) == 1, (
        f"expected one command each for a shard, a run range and an upper level in {DOC}, "
        f"found {commands}"
    )
    return DocCommands(one_shard[0], whole_run[0], upper[0])


def with_shard(argv: list[str], shard: str) -> list[str]:
    """The one-shard command on ``shard`` instead of the docs' example shard."""
    i = argv.index("--partition") + 1
    run_id, _, _ = argv[i].rpartition("|")
    return [*argv[:i], f"{run_id}|{shard}", *argv[i + 1 :]]


def run(argv: list[str], env: dict[str, str], log: list[str]) -> str:
    """Run a command from the repository root; fail with its output tail on a non-zero exit."""
    exe = BIN / argv[0]
    full = [str(exe) if exe.exists() else argv[0], *argv[1:]]
    started = time.perf_counter()
    try:
        done = subprocess.run(
            full,
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"")[-4000:]
        pytest.fail(f"{shlex.join(argv)} timed out after {COMMAND_TIMEOUT_S} s:\n{out!r}")
    log.append(f"{time.perf_counter() - started:5.1f} s  {shlex.join(argv)}")
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{shlex.join(argv)} exited {done.returncode}:\n{output[-6000:]}"
    return output


def stored(settings: MantaSettings) -> dict[tuple[str, str], dict[str, set[str]]]:
    """``{(run_id, level): {entity_id: {columns}}}`` of the judge in entity_metadata."""
    with Store.open(settings) as store:
        rows = store.rows(
            "SELECT run_id, entity_level, entity_id, groupUniqArray(column) "
            "FROM {db}.entity_metadata FINAL WHERE judge = {j:String} "
            "GROUP BY run_id, entity_level, entity_id",
            {"j": JUDGE},
        )
    result: dict[tuple[str, str], dict[str, set[str]]] = {}
    for run_id, level, entity_id, columns in rows:
        result.setdefault((run_id, level), {})[entity_id] = set(columns)
    return result


def expected_entities(settings: MantaSettings, shard: int | None) -> dict[str, set[str]]:
    """Trace ids, datapoint group ids (``dp@step``) and step ids (``phase/step``) of ``RUN``
    (one shard or all)."""
    where = "run_id = {r:String}"
    if shard is not None:
        where += " AND cityHash64(datapoint_id) % {n:UInt64} = {s:UInt64}"
    with Store.open(settings) as store:
        [(traces, datapoints, steps)] = store.rows(
            "SELECT groupUniqArray(trace_id), "
            "groupUniqArray(concat(datapoint_id, '@', toString(step_number))), "
            "groupUniqArray(concat(toString(phase), '/', toString(step_number))) "
            f"FROM {{db}}.traces WHERE {where}",
            {"r": RUN, "n": SHARDS, "s": shard if shard is not None else 0},
        )
    return {"trace": set(traces), "datapoint": set(datapoints), "step": set(steps)}


def assert_levels(
    found: dict[tuple[str, str], dict[str, set[str]]],
    expected: dict[str, set[str]],
    levels: dict[str, set[str]],
) -> None:
    """Only ``RUN`` was computed, and each level in ``levels`` holds exactly ``expected``."""
    assert {key[0] for key in found} <= {RUN}, f"rows for other runs: {sorted(found)}"
    assert {key[1] for key in found} == set(levels), f"levels stored: {sorted(found)}"
    for level, columns in levels.items():
        entities = found[(RUN, level)]
        assert set(entities) == expected[level], (
            f"{level}: {len(entities)} entities stored, {len(expected[level])} expected; "
            f"missing {sorted(expected[level] - set(entities))[:5]}, "
            f"extra {sorted(set(entities) - expected[level])[:5]}"
        )
        for entity_id, stored_columns in entities.items():
            assert columns <= stored_columns, (level, entity_id, stored_columns)


def make_dagster_env(
    manta_env: dict[str, str], settings: MantaSettings, tmp_path: Path
) -> dict[str, str]:
    """Seed 300 demo traces (store closed again) and return the subprocess environment: the
    test's store and a fresh DAGSTER_HOME holding the checked-in dagster.yaml."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / ".dagster_home" / "dagster.yaml", home / "dagster.yaml")
    with Store.open(settings) as store:
        summary = seed_demo(store, traces=300)
    assert RUN in summary.runs
    env = {**os.environ, **manta_env, "DAGSTER_HOME": str(home)}
    env.pop("MANTA_PIPELINES", None)
    env.pop("MANTA_DAGSTER_AUTOMATION", None)
    return env


def busiest_shard(settings: MantaSettings) -> int:
    """The shard of ``RUN`` with the most traces (the docs' shard 07 may be empty here)."""
    with Store.open(settings) as store:
        [(shard, traces)] = store.rows(
            "SELECT cityHash64(datapoint_id) % {n:UInt64} AS s, count() AS c "
            "FROM {db}.traces WHERE run_id = {r:String} GROUP BY s ORDER BY c DESC, s LIMIT 1",
            {"n": SHARDS, "r": RUN},
        )
    assert traces > 0
    return int(shard)
