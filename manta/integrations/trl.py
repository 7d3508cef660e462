"""``from manta.integrations.trl import MantaCallback``: re-exports
:mod:`manta_lib.integrations.trl`."""

from manta_lib.integrations.trl import MantaCallback, completion_rows

__all__ = ["MantaCallback", "completion_rows"]
