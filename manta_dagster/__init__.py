"""Dagster definitions built on manta_lib (assets, IO manager, resources, automation).

``dagster ... -m manta_dagster`` and ``-m manta_dagster.definitions`` load the same ``defs``.
They are built on first access only, so importing a submodule (``manta_dagster.assets`` in a
user's own definitions, say) does not load the registered pipelines.
"""

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "defs":
        from manta_dagster.definitions import defs

        return defs
    raise AttributeError(f"module 'manta_dagster' has no attribute {name!r}")


def __dir__() -> list[str]:
    # Dagster's `-m` loader looks for a Definitions object among dir(module).
    return sorted([*globals(), "defs"])
