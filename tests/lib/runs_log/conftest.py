"""Fixtures for the runs log: a log directory, and one holding a reference workflow."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.lib.runs_log.helpers import write_seed_log


@pytest.fixture
def log_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty runs-log directory, also set as MANTA_RUNS_LOG_DIR."""
    path = tmp_path / "runs_log"
    path.mkdir()
    monkeypatch.setenv("MANTA_RUNS_LOG_DIR", str(path))
    yield path


@pytest.fixture
def seed_log(log_dir: Path) -> Path:
    """``log_dir`` holding the reference example (see :func:`write_seed_log`)."""
    write_seed_log(log_dir)
    return log_dir
