"""The Manta explorer: a read-only web app to browse runs, read traces, plot metrics by step
and read stored results (``manta explore``).

``create_app`` builds the app; :mod:`manta_lib.explorer.links` builds URLs of its pages (for
Dagster metadata and notebooks) and imports nothing beyond the standard library, so Dagster
code can use it without loading the web stack (``create_app`` is imported on first use).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from manta_lib.explorer.links import (
    dagster_asset_url,
    entity_url,
    results_url,
    run_url,
    trace_url,
    traces_url,
)

if TYPE_CHECKING:
    from manta_lib.explorer.app import create_app

__all__ = [
    "create_app",
    "dagster_asset_url",
    "entity_url",
    "results_url",
    "run_url",
    "trace_url",
    "traces_url",
]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from manta_lib.explorer.app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
