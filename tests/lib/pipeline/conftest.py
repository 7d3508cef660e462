"""Fixtures of the pipeline tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def calls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The file a test pipeline's map function appends each call to (``MANTA_TEST_CALLS_FILE``)."""
    path = tmp_path / "calls.txt"
    monkeypatch.setenv("MANTA_TEST_CALLS_FILE", str(path))
    return path
