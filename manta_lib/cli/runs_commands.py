"""``manta runs ...``: the JSONL runs log (seed 002)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Attach the runs-log commands to ``app``."""
