"""Commands over the trace store: import, demo data, overview."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Attach the data commands to ``app``."""
