"""Annotation hand-out: what one label costs (``next_item`` + ``save_label``) at the start of a
queue and late in it, and in a small queue against a large one.

    .venv/bin/python benchmarks/bench_annotation.py [--traces 5000] [--large 1000] [--labels 30]

Every hand-out and save reads the queue's history and appends to it under one lock, so a
label's cost grows with the queue's history. Measured: the mean time of ``--labels`` labels
(a) at the start of a ``--large`` queue and (b) once all but ``--labels`` of its items are
labelled; and (c) at the start of a 100-item queue. Printed side by side as ratios b/a and a/c
(target: b/a <= 3 for a 1,000-item queue: a person labels one item in seconds, the hand-out
takes milliseconds).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Literal

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pydantic import BaseModel  # noqa: E402

from benchmarks._data import BENCH_RUN, bench_settings, ensure_run  # noqa: E402
from manta_lib.annotations import Annotations, AnnotationTask  # noqa: E402
from manta_lib.store import Store  # noqa: E402


class Label(BaseModel):
    category: Literal["passed", "looping", "wrong_tool", "other"]
    note: str = ""


def _label(ann: Annotations, queue_id: str, count: int, who: str = "ana") -> float:
    """Seconds per label over ``count`` labels (hand-out + save)."""
    started = time.perf_counter()
    for _ in range(count):
        item = ann.next_item(queue_id, who)
        if item is None:
            raise SystemExit("queue exhausted: raise --large or lower --labels")
        ann.save_label(queue_id, item.position, who, {"category": "looping"})
    return (time.perf_counter() - started) / count


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--traces", type=int, default=5000)
    parser.add_argument("--large", type=int, default=1000)
    parser.add_argument("--labels", type=int, default=30)
    args = parser.parse_args()
    with Store.open(bench_settings("annotation")) as store:
        ensure_run(store, args.traces)
        for table in ("annotation_queues", "annotation_items", "annotation_events"):
            store.command(f"TRUNCATE TABLE {{db}}.{table}")
        ann = Annotations(store)
        task = AnnotationTask("bench_human", Label)
        large = ann.create_queue(task, BENCH_RUN, sample=args.large, stratify="step", seed=1)
        small = ann.create_queue(task, BENCH_RUN, sample=100, stratify="step", seed=2)
        small_start = _label(ann, small.queue_id, args.labels, who="bo")
        large_start = _label(ann, large.queue_id, args.labels)
        _label(ann, large.queue_id, args.large - 2 * args.labels)  # fill the history
        large_late = _label(ann, large.queue_id, args.labels)
    rows = (
        (f"(c) 100-item queue, first {args.labels} labels", small_start),
        (f"(a) {args.large}-item queue, first {args.labels} labels", large_start),
        (f"(b) {args.large}-item queue, last {args.labels} labels", large_late),
    )
    for name, seconds in rows:
        print(f"{name:<42} {seconds * 1000:8.1f} ms/label")
    print(f"b/a = {large_late / large_start:.2f}   a/c = {large_start / small_start:.2f}")


if __name__ == "__main__":
    main()
