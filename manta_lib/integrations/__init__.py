"""Integrations with training frameworks (``manta_lib.integrations.trl``: TRL's trainers)."""
