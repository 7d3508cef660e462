"""Run ``pipeline_defs.full`` on a run; the resume tests SIGKILL this process mid-run.

``python -m tests.lib.resume_child RUN_ID [MAX_WORKERS]``: with MAX_WORKERS given, the run
uses that many threads and the default batch size, else 2 threads and batches of 10.
"""

from __future__ import annotations

import sys

from tests.lib import pipeline_defs

if __name__ == "__main__":
    if len(sys.argv) > 2:
        options: dict[str, int] = {"max_workers": int(sys.argv[2])}
    else:
        options = {"max_workers": 2, "batch_size": 10}
    pipeline_defs.full.run(sys.argv[1], mode="local", progress=False, **options)
