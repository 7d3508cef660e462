"""``python -m tests.lib.fault_child RUN_ID MAX_WORKERS TIMEOUT_S``: run ``pipeline_defs.full``
locally with those knobs (the fault tests hang, interrupt or time out this process)."""

from __future__ import annotations

import logging
import sys

from tests.lib import pipeline_defs

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    run_id, workers, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    result = pipeline_defs.full.run(
        run_id, mode="local", max_workers=workers, timeout_s=timeout, progress=False
    )
    print(f"done {len(result[pipeline_defs.EntityLevel.TRACE])}")
