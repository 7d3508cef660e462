"""Run ``pipeline_defs.full`` on run_big; the resume test SIGKILLs this process mid-run."""

from __future__ import annotations

import sys

from tests.lib import pipeline_defs

if __name__ == "__main__":
    pipeline_defs.full.run(sys.argv[1], mode="local", batch_size=10, max_workers=2, progress=False)
