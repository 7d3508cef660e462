"""Explorer page times on a large store: runs page, a 50-row trace list (plain, with two stored
result columns, sorted by one, and searched for a phrase no trace holds and for a common one),
a 20-span and a 500-span trace page, a group page of 16
rollouts x 20 spans and a live page's poll, requested in a loop; server time (the app's
``Server-Timing``) p50/p95.

    .venv/bin/python benchmarks/bench_explorer.py [--traces 200000] [--loops 20]
        [--data-dir benchmarks/.data/explorer]

The store holds ``--traces`` demo traces over four runs (seeded once, reused), the
``tool_errors`` example's results for the largest run (computed once), one imported trace of
500 spans and one imported group of 16 rollouts of 20 spans. Every page is measured twice in
the same run, alternating:
(a) as served by default on the embedded store, which opens and closes the store for each
request so other processes can use it between page views, and (b) with the connection kept
open (what a ClickHouse server deployment does), so the cost of the open/close is visible.
Targets: < 300 ms for every page but the 500-span trace (< 1 s), in (a).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from starlette.testclient import TestClient  # noqa: E402

from examples import tool_errors  # noqa: E402
from manta_lib.demo import seed_demo  # noqa: E402
from manta_lib.explorer import create_app  # noqa: E402
from manta_lib.ingest.loader import import_jsonl  # noqa: E402
from manta_lib.settings import MantaSettings, load_settings  # noqa: E402
from manta_lib.store import Store  # noqa: E402

DEFAULT_DIR = Path(__file__).resolve().parent / ".data" / "explorer"
BIG_TRACE = "tr_bench_500_spans"
BIG_RUN = "run_bench_big_traces"
GROUP_DATAPOINT = "dp_bench_group"
GROUP_SIZE = 16
COLS = "cols=tool_errors.tool_errors&cols=tool_errors.error_rate"


def big_trace_line(spans: int = 500, trace_id: str = BIG_TRACE, **fields: object) -> dict:
    """One trace of ``spans`` spans: user prompt, then llm / assistant / tool / tool message."""
    items: list[dict] = [
        {"span_id": "s0", "seq": 0, "kind": "message", "role": "user", "content": "Solve it."}
    ]
    seq = 1
    turn = 0
    start = 1_700_000_000.0  # Unix seconds
    while seq < spans - 1:
        call = f"c{turn}"
        for kind, extra in (
            ("llm", {"model_name": "m", "tokens_input": 900, "tokens_output": 120}),
            (
                "message",
                {
                    "role": "assistant",
                    "content": f"turn {turn}: " + "think " * 40,
                    "attributes": {"tool_call_ids": [call]},
                },
            ),
            (
                "tool",
                {
                    "tool_name": "python",
                    "tool_arguments": {"code": "print(1)" * 20},
                    "tool_result": "1\n" * 60,
                    "is_error": turn % 7 == 3,
                    "attributes": {"call_id": call},
                },
            ),
            (
                "message",
                {"role": "tool", "content": "1\n" * 60, "attributes": {"tool_call_id": call}},
            ),
        ):
            if seq >= spans - 1:
                break
            at = start + seq * 0.5
            items.append(
                {
                    "span_id": f"s{seq}",
                    "seq": seq,
                    "kind": kind,
                    "started_at": at,
                    "ended_at": at + 0.4,
                    **extra,
                }
            )
            seq += 1
        turn += 1
    items.append(
        {
            "span_id": f"s{seq}",
            "seq": seq,
            "kind": "grader",
            "name": "g",
            "attributes": {"score": 1.0, "passed": True, "criteria": []},
        }
    )
    return {"trace_id": trace_id, "run_id": BIG_RUN, "score": 1.0, "spans": items, **fields}


def group_lines() -> list[dict]:
    """A GRPO group: 16 rollouts of one datapoint at one step, 20 spans each."""
    return [
        big_trace_line(
            20,
            f"tr_bench_group_{i:02d}",
            datapoint_id=GROUP_DATAPOINT,
            step_number=1,
            score=float(i % 2),
        )
        for i in range(GROUP_SIZE)
    ]


def ensure_data(settings: MantaSettings, traces: int) -> tuple[str, str]:
    """Seed once; returns (a run id, the id of a trace with exactly 20 spans)."""
    with Store.open(settings) as store:
        have = store.rows(
            "SELECT count() FROM {db}.traces WHERE run_id != {r:String}", {"r": BIG_RUN}
        )[0][0]
        if have < traces:
            started = time.perf_counter()
            seed_demo(store, traces=traces)
            print(f"seeded {traces:,} demo traces in {time.perf_counter() - started:.0f} s")
        if not store.rows(
            "SELECT count() FROM {db}.traces WHERE trace_id = {t:String}", {"t": BIG_TRACE}
        )[0][0]:
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "big.jsonl"
                lines = [big_trace_line(), *group_lines()]
                path.write_text("".join(json.dumps(line) + "\n" for line in lines))
                report = import_jsonl([path], store=store)
                if not report.ok:
                    raise SystemExit(f"the bench traces did not import: {report.errors[:3]}")
        run_id, total = store.rows(
            "SELECT run_id, count() FROM {db}.traces GROUP BY run_id ORDER BY 2 DESC LIMIT 1"
        )[0]
        # Demo traces have an odd number of spans: take one as close to 20 as there is.
        twenty, twenty_spans = store.rows(
            "SELECT trace_id, count() AS n FROM {db}.spans WHERE run_id = {r:String} "
            "GROUP BY trace_id ORDER BY abs(n - 20), trace_id LIMIT 1",
            {"r": run_id},
        )[0]
        spans = store.rows("SELECT count() FROM {db}.spans")[0][0]
        all_traces = store.rows("SELECT count() FROM {db}.traces")[0][0]
        has_results = store.rows(
            "SELECT count() FROM {db}.entity_metadata WHERE judge = 'tool_errors' "
            "AND run_id = {r:String}",
            {"r": run_id},
        )[0][0]
    if not has_results:
        started = time.perf_counter()
        tool_errors.pipeline.run(run_id, mode="local", settings=settings, progress=False)
        print(f"stored tool_errors results of {run_id} in {time.perf_counter() - started:.0f} s")
    print(f"store: {all_traces:,} traces, {spans:,} spans; list run {run_id} ({total:,} traces)")
    print(f"small trace page: {twenty} ({twenty_spans} spans)")
    return run_id, twenty


def server_ms(response: object) -> float:
    header = response.headers["server-timing"]  # type: ignore[attr-defined]
    return float(header.split("dur=")[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--traces", type=int, default=200_000)
    parser.add_argument("--loops", type=int, default=20)
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DIR)
    args = parser.parse_args()

    args.data_dir.mkdir(parents=True, exist_ok=True)
    settings = load_settings(MANTA_DATA_DIR=str(args.data_dir), CLICKHOUSE_URL=None)
    run_id, twenty = ensure_data(settings, args.traces)
    with Store.open(settings) as store:
        count = store.rows(
            "SELECT count() FROM {db}.traces WHERE run_id = {r:String}", {"r": run_id}
        )[0][0]
    pages = {
        "runs page": "/",
        "trace list, 50 rows": f"/traces?run={run_id}&per=50&page=3",
        "list + 2 result cols": f"/traces?run={run_id}&per=50&page=3&{COLS}",
        "search, rare phrase": f"/traces?run={run_id}&per=50&text=Flux+Capacitor",
        "search, common phrase": f"/traces?run={run_id}&per=50&page=3&text=division+by+zero",
        "list sorted by a col": f"/traces?run={run_id}&per=50&page=3&{COLS}"
        "&sort=tool_errors.tool_errors&desc=1",
        "trace page, 20 spans": f"/traces/{twenty}",
        "trace page, 500 spans": f"/traces/{BIG_TRACE}",
        "group page, 16x20": f"/group?run={BIG_RUN}&datapoint={GROUP_DATAPOINT}&step=1"
        f"&a=tr_bench_group_00&b=tr_bench_group_01",
        "live poll (no change)": f"/live?run={run_id}&base={count}&seen={count}",
    }
    modes = {
        "(a) per-request store": TestClient(
            create_app(settings, keep_store_open=False), base_url="http://127.0.0.1"
        ),
        "(b) store kept open": TestClient(
            create_app(settings, keep_store_open=True), base_url="http://127.0.0.1"
        ),
    }
    times: dict[tuple[str, str], list[float]] = {(m, p): [] for m in modes for p in pages}
    first: dict[tuple[str, str], float] = {}
    for mode, client in modes.items():  # warm up: first open, schema check, template compile
        for page, url in pages.items():
            response = client.get(url)
            assert response.status_code in (200, 204), url
            first[(mode, page)] = server_ms(response)
    for _ in range(args.loops):
        for mode, client in modes.items():
            for page, url in pages.items():
                response = client.get(url)
                assert response.status_code in (200, 204), (url, response.status_code)
                times[(mode, page)].append(server_ms(response))
    print(f"server time over {args.loops} requests each (ms)")
    print("first: the warm-up request (cold caches: a result column's values, a sort's order)")
    print(f"{'page':24} {'mode':24} {'first':>8} {'p50':>8} {'p95':>8} {'max':>8}")
    for (mode, page), values in times.items():
        values.sort()
        p95 = values[min(len(values) - 1, round(0.95 * (len(values) - 1)))]
        print(
            f"{page:24} {mode:24} {first[(mode, page)]:8.1f} {statistics.median(values):8.1f} "
            f"{p95:8.1f} {values[-1]:8.1f}"
        )


if __name__ == "__main__":
    main()
