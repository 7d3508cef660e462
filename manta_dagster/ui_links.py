"""Where the explorer that ``make ui`` started listens, for the links Dagster writes.

``scripts/ui.sh`` records the explorer's and Dagster's URLs in ``$DAGSTER_HOME/manta_ui.json``
when it starts them. Explorer links in materialization metadata (the sensors, and a
``dagster asset materialize`` run from another shell, where ``MANTA_EXPLORER_URL`` is not set)
use, in order: ``MANTA_EXPLORER_URL``, the URL recorded there, ``http://127.0.0.1:8050``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from manta_lib.explorer.links import explorer_base_url

UI_URLS_FILE = "manta_ui.json"


def recorded_urls() -> dict[str, str]:
    """``{"explorer": url, "dagster": url}`` recorded by ``scripts/ui.sh`` in
    ``$DAGSTER_HOME`` (empty when there is none or it cannot be read)."""
    home = os.environ.get("DAGSTER_HOME")
    if not home:
        return {}
    try:
        data = json.loads((Path(home) / UI_URLS_FILE).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: str(v).rstrip("/") for k, v in data.items() if isinstance(v, str) and v}


def explorer_base() -> str:
    """The explorer base URL for links: ``MANTA_EXPLORER_URL``, else the one ``make ui``
    recorded, else the default."""
    if os.environ.get("MANTA_EXPLORER_URL"):
        return explorer_base_url()
    return recorded_urls().get("explorer") or explorer_base_url()
