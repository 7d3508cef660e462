"""Run ``processes_defs.pipeline`` with ``mode="processes"`` (a driver the tests can kill).

``python -m tests.lib.processes_child RUN_ID BATCH_SIZE``
"""

from __future__ import annotations

import sys

from tests.lib import processes_defs


def main(run_id: str, batch_size: int) -> None:
    processes_defs.pipeline.run(
        run_id, mode="processes", workers=2, batch_size=batch_size, progress=False
    )


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
