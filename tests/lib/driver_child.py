"""Drive ``driver_defs.pipeline`` over a run with local worker processes (a killable driver).

``python -m tests.lib.driver_child RUN_ID BATCH_SIZE``: the batch-driver test SIGKILLs this
process (and its worker processes) mid-run, then runs it again to resume.
"""

from __future__ import annotations

import sys

from manta_lib.pipeline import RunOptions, run_pipeline
from manta_lib.pipeline.batches import BatchMapper
from manta_lib.settings import load_settings
from tests.lib import driver_defs
from tests.lib.process_pool_runner import ProcessPoolRunner


def main(run_id: str, batch_size: int) -> None:
    settings = load_settings()
    run_pipeline(
        driver_defs.pipeline,
        run_id,
        mapper=BatchMapper(ProcessPoolRunner(settings, max_workers=1)),
        options=RunOptions(batch_size=batch_size, progress=False, max_workers=2),
        settings=settings,
        mode="local-processes",
    )


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
