"""The Manta explorer: a read-only web app to browse runs, read traces, plot metrics by step
and read stored results (``manta explore``).

``create_app`` builds the app; :mod:`manta_lib.explorer.links` builds URLs of its pages (for
Dagster metadata and notebooks).
"""

from manta_lib.explorer.app import create_app
from manta_lib.explorer.links import (
    dagster_asset_url,
    entity_url,
    results_url,
    run_url,
    trace_url,
    traces_url,
)

__all__ = [
    "create_app",
    "dagster_asset_url",
    "entity_url",
    "results_url",
    "run_url",
    "trace_url",
    "traces_url",
]
