"""The judges that stored results for a run, as the run page lists them."""

from __future__ import annotations

from typing import Any

from manta_lib.service import MantaService


def run_judges(svc: MantaService, run_id: str) -> list[Any]:
    """Judges with results for ``run_id`` (empty until the results API is available)."""
    return []
