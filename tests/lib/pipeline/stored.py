"""Shared by the pipeline tests: numbered traces to map, and what a computation stored."""

from __future__ import annotations

from pathlib import Path

from manta_lib.settings import MantaSettings
from manta_lib.store import Store
from tests.lib.builders import load_traces, trace_line


def load_numbered(settings: MantaSettings, tmp_path: Path, count: int, run_id: str) -> None:
    """Traces ``t000``, ``t001`` … of ``run_id``, three per datapoint, every other one with a
    tool error."""
    lines = [
        trace_line(f"t{i:03d}", run_id=run_id, datapoint=f"dp{i // 3}", tool_errors=i % 2)
        for i in range(count)
    ]
    with Store.open(settings) as store:
        load_traces(store, lines, tmp_path)


def metadata_snapshot(store: Store) -> list[tuple]:
    """Every current value (FINAL), without computed_at."""
    return store.rows(
        """
        SELECT entity_level, entity_id, column, value_type, value_number, value_string,
               value_bool, value_json, judge_version
        FROM {db}.entity_metadata FINAL ORDER BY entity_level, entity_id, column
        """
    )


def stored_snapshot(settings: MantaSettings) -> list[tuple]:
    """:func:`metadata_snapshot` of the store ``settings`` name."""
    with Store.open(settings) as store:
        return metadata_snapshot(store)
