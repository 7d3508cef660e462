"""Child process of ``test_scale_memory``: seed N demo traces, run a persisted pipeline whose
trace outputs are large, print (JSON) the growth of peak RSS over the run, and the Python heap
at its peak and still held once the run returned (with its result referenced)."""

from __future__ import annotations

import json
import resource
import sys
import tracemalloc

from pydantic import BaseModel

from manta_lib.context import TraceContext
from manta_lib.demo import seed_demo
from manta_lib.entities import EntityRef
from manta_lib.models import EntityLevel
from manta_lib.pipeline import MapReduceComputation
from manta_lib.pipeline import run as run_module
from manta_lib.store import Store, metadata, trace_queries

PAYLOAD = 8_000  # characters per trace output: what a kept output would cost


class Big(BaseModel):
    text: str
    tool_errors: int


class Count(BaseModel):
    children: int


def map_big(trace: TraceContext) -> Big:
    return Big(text=trace.trace_id.ljust(PAYLOAD, "x"), tool_errors=trace.tool_error_count)


def count(entity: EntityRef, children: list[BaseModel]) -> Count:
    return Count(children=len(children))


pipeline = (
    MapReduceComputation("Scale memory", project_id="prj_scale")
    .add_level(EntityLevel.TRACE, map_big, Big)
    .add_level(EntityLevel.DATAPOINT, count, Count)
    .add_level(EntityLevel.STEP, count, Count)
    .add_level(EntityLevel.RUN, count, Count)
)


def main(traces: int) -> None:
    # buffers sized so a small run streams as a large one does
    run_module.REDUCE_CHUNK = 50
    metadata.ENTITY_BLOCK_ROWS = 256
    trace_queries.SPAN_STREAM_BLOCK_ROWS = 512
    with Store.open() as store:
        seed_demo(store, traces=traces, seed=2)
        run_id = store.rows("SELECT run_id FROM {db}.traces GROUP BY run_id ORDER BY count() DESC")[
            0
        ][0]
    # warm up (imports, pools, first queries) on a few traces, not persisted
    pipeline.run(run_id, mode="local", persist_results=False, limit_traces=20, progress=False)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tracemalloc.start()
    result = pipeline.run(run_id, mode="local", progress=False, batch_size=100)
    heap_kept, heap_peak = tracemalloc.get_traced_memory()  # the result is still referenced
    tracemalloc.stop()
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps(
            {
                "traces": len(result[EntityLevel.TRACE]),
                "rss_growth_kb": rss_after - rss_before,
                "heap_peak_kb": heap_peak // 1024,
                "heap_kept_kb": heap_kept // 1024,
            }
        )
    )


if __name__ == "__main__":
    main(int(sys.argv[1]))
