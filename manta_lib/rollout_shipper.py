"""``python -m manta_lib.rollout_shipper SPOOL``: the process that ships a rollout spool into
the store (see :mod:`manta_lib.rollout_spool`); started by :class:`~manta_lib.RolloutLogger`."""

from __future__ import annotations

import sys

from manta_lib.rollout_spool import main

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
