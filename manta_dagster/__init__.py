"""Dagster definitions built on manta_lib (assets, IO manager, resources, automation)."""
