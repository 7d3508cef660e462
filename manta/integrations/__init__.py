"""``from manta.integrations.trl import MantaCallback``: integrations with training frameworks."""
