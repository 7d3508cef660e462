"""The embedded engine's caches and memory limit: bounded by default, tunable, checked."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from manta_lib.errors import ConfigError
from manta_lib.settings import load_settings

REPO = Path(__file__).resolve().parents[3]

_SHOW = """
from manta_lib.store import Store
with Store.open() as store:
    for name, value in store.rows(
        "SELECT name, value FROM system.server_settings WHERE name IN ('mark_cache_size', "
        "'primary_index_cache_size', 'index_mark_cache_size', 'query_condition_cache_size', "
        "'max_server_memory_usage', 'index_uncompressed_cache_size') ORDER BY name"
    ):
        print(name, value)
"""


def _engine_settings(tmp_path: Path, **env: str) -> dict[str, int]:
    """The server settings a fresh process's engine started with (one engine per process)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("CLICKHOUSE_", "MANTA_"))}
    clean.update(MANTA_DATA_DIR=str(tmp_path / "data"), PYTHONPATH=str(REPO), **env)
    out = subprocess.run(
        [sys.executable, "-c", _SHOW], env=clean, capture_output=True, text=True, check=True
    ).stdout
    return {name: int(value) for name, value in (line.split() for line in out.splitlines())}


@pytest.mark.slow
def test_engine_caches_are_bounded_by_default_and_follow_the_settings(tmp_path: Path) -> None:
    default = _engine_settings(tmp_path / "a")
    caches = ("mark_cache_size", "primary_index_cache_size", "index_mark_cache_size")
    assert {default[name] for name in caches} == {64 * 2**20}
    assert default["query_condition_cache_size"] == 64 * 2**20
    assert default["index_uncompressed_cache_size"] == 256 * 2**20

    tuned = _engine_settings(
        tmp_path / "b",
        MANTA_CHDB_CACHE_MB="16",
        MANTA_CHDB_INDEX_CACHE_MB="8",
        MANTA_CHDB_MAX_MEMORY_MB="3000",
    )
    assert {tuned[name] for name in caches} == {16 * 2**20}
    assert tuned["max_server_memory_usage"] == 3000 * 2**20
    assert tuned["index_uncompressed_cache_size"] == 8 * 2**20
    assert default["max_server_memory_usage"] != 3000 * 2**20


def test_bad_engine_memory_settings_name_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MANTA_CHDB_CACHE_MB", "-1")
    with pytest.raises(ConfigError, match="MANTA_CHDB_CACHE_MB"):
        load_settings()
    monkeypatch.delenv("MANTA_CHDB_CACHE_MB")
    monkeypatch.setenv("MANTA_CHDB_INDEX_CACHE_MB", "lots")
    with pytest.raises(ConfigError, match="MANTA_CHDB_INDEX_CACHE_MB"):
        load_settings()
    monkeypatch.delenv("MANTA_CHDB_INDEX_CACHE_MB")
    monkeypatch.setenv("MANTA_CHDB_MAX_MEMORY_MB", "0")
    with pytest.raises(ConfigError, match="MANTA_CHDB_MAX_MEMORY_MB"):
        load_settings()
