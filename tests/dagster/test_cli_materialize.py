"""The Dagster commands of ``docs/dagster.md``, run as documented, store exactly what they say.

A temporary ``DAGSTER_HOME`` (the checked-in ``dagster.yaml``), a small demo store (embedded
chDB, closed before any subprocess starts: one process at a time may hold it), then as
subprocesses: ``manta dagster register-runs`` and the three ``dagster asset materialize``
commands of the docs (one shard, a whole run with ``--partition-range``, the upper level).
After each command the store must hold the entity_metadata rows of exactly that scope.
"""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import pytest

from manta_lib.settings import MantaSettings
from tests.dagster.cli_helpers import (
    DATAPOINT_COLUMNS,
    JUDGE,
    RUN,
    STEP_COLUMNS,
    TRACE_COLUMNS,
    assert_levels,
    busiest_shard,
    doc_commands,
    expected_entities,
    make_dagster_env,
    run,
    stored,
    with_shard,
)

pytestmark = pytest.mark.slow


@pytest.fixture
def dagster_env(
    manta_env: dict[str, str], settings: MantaSettings, tmp_path: Path
) -> dict[str, str]:
    """Environment of the subprocesses (see :func:`make_dagster_env`)."""
    return make_dagster_env(manta_env, settings, tmp_path)


def test_documented_commands_materialize_exactly_their_scope(
    dagster_env: dict[str, str], settings: MantaSettings
) -> None:
    commands = doc_commands()
    log: list[str] = []
    shard = busiest_shard(settings)
    # The explorer `make ui` started elsewhere, as scripts/ui.sh records it; this shell does
    # not have MANTA_EXPLORER_URL.
    home = Path(dagster_env["DAGSTER_HOME"])
    explorer = "http://127.0.0.1:8311"
    (home / "manta_ui.json").write_text(json.dumps({"explorer": explorer}))
    dagster_env.pop("MANTA_EXPLORER_URL", None)

    out = run(["manta", "dagster", "register-runs"], dagster_env, log)
    assert f"registered {RUN}" in out
    assert stored(settings) == {}

    # One shard: its traces and datapoints, nothing of the other shards, no step yet.
    one = with_shard(commands.one_shard, f"{shard:02d}")
    out = run(one, dagster_env, log)
    assert "RUN_SUCCESS" in out, out[-3000:]
    with dg.DagsterInstance.from_config(str(home)) as instance:
        event = instance.get_latest_materialization_event(dg.AssetKey([JUDGE, "trace"]))
    assert event is not None and event.asset_materialization is not None
    link = event.asset_materialization.metadata["explorer"].value
    assert link == f"{explorer}/results/{JUDGE}?run={RUN}&level=trace&shard={shard}"
    assert_levels(
        stored(settings),
        expected_entities(settings, shard),
        {"trace": TRACE_COLUMNS, "datapoint": DATAPOINT_COLUMNS},
    )

    # The whole run (every shard, one Dagster run): every trace and datapoint of the run.
    out = run(commands.whole_run, dagster_env, log)
    assert "RUN_SUCCESS" in out, out[-3000:]
    assert out.count("RUN_START") == 1, "a partition range must execute as one run"
    everything = expected_entities(settings, None)
    assert_levels(
        stored(settings), everything, {"trace": TRACE_COLUMNS, "datapoint": DATAPOINT_COLUMNS}
    )

    # The upper level: one row set per step of the run.
    out = run(commands.upper, dagster_env, log)
    assert "RUN_SUCCESS" in out, out[-3000:]
    assert_levels(
        stored(settings),
        everything,
        {"trace": TRACE_COLUMNS, "datapoint": DATAPOINT_COLUMNS, "step": STEP_COLUMNS},
    )
    print("\n".join(log))
