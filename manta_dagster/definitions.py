"""The single entry point ``workspace.yaml`` and ``dagster -m manta_dagster.definitions`` load."""

import dagster as dg

defs = dg.Definitions()
