"""Reading stored results: the typed table against its Arrow ceiling, and a results filter
against a hand-written count().

    .venv/bin/python benchmarks/bench_results.py [--traces 200000] [--filter-traces 1000000]

(1) ``MantaService.results()`` of ``--traces`` traces x 10 columns (ints, floats, text,
booleans, JSON lists) into a pandas DataFrame, against (a) ``query_arrow`` of the very same
pivot SQL (the ceiling: the pivot in ClickHouse, nothing else). Target: b/a <= 1.5.
(2) ``count_traces(run, results="flag.flagged > 0")`` over a ``--filter-traces`` trace run
(the semi-join with version checks) against (a) a plain ``count()`` with the same condition
written by hand in SQL. Target: b/a <= 2.

Data is generated inside ClickHouse (``numbers()``) into ``benchmarks/.data/results`` and
reused. Each pair alternates ``--repeat`` times and keeps each side's best time.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._data import bench_settings  # noqa: E402
from manta_lib.results.table import ResultsQuery, select_results  # noqa: E402
from manta_lib.service import MantaService  # noqa: E402
from manta_lib.store import Store  # noqa: E402
from manta_lib.store import results_queries as q  # noqa: E402

TABLE_RUN = "run_bench_table"
FILTER_RUN = "run_bench_filter"
PROJECT = "prj_bench"
TRACE_ID = "concat('t_', leftPad(toString(number), 9, '0'))"

# (column, value_type, number, string, bool, json): SQL over numbers()
COLUMNS = [
    ("tool_calls", "number", "toFloat64(number % 13)", "NULL", "NULL", "NULL"),
    ("tool_errors", "number", "toFloat64(number % 3)", "NULL", "NULL", "NULL"),
    ("turns", "number", "toFloat64(number % 29)", "NULL", "NULL", "NULL"),
    ("score", "number", "(number % 1000) / 997", "NULL", "NULL", "NULL"),
    ("latency_s", "number", "(number % 777) / 7", "NULL", "NULL", "NULL"),
    ("cost_usd", "number", "(number % 91) / 10000", "NULL", "NULL", "NULL"),
    ("label", "string", "NULL", "['good', 'bad', 'loop'][number % 3 + 1]", "NULL", "NULL"),
    ("model", "string", "NULL", "concat('m', toString(number % 5))", "NULL", "NULL"),
    ("passed", "boolean", "NULL", "NULL", "number % 2 = 0", "NULL"),
    (
        "tools",
        "json",
        "NULL",
        "NULL",
        "NULL",
        "concat('[\"python\",\"t', toString(number % 4), '\"]')",
    ),
]


def seed_run(store: Store, run_id: str, traces: int, judge: str, columns: list[tuple]) -> None:
    """``traces`` trace rows and one judge's results for them, generated in ClickHouse."""
    have = store.rows(
        "SELECT count() FROM {db}.entity_metadata WHERE run_id = {r:String} AND judge = {j:String} "
        "AND column = '__status__'",
        {"r": run_id, "j": judge},
    )[0][0]
    if have == traces:
        return
    started = time.perf_counter()
    for table in ("traces", "entity_metadata_catalog", "entity_metadata"):
        store.command(
            f"ALTER TABLE {{db}}.{table} DELETE WHERE run_id = {{r:String}}", {"r": run_id}
        )
    # One computed_at for all of an entity's rows, as the pipeline writes them.
    params = {"r": run_id, "n": traces, "p": PROJECT, "j": judge, "at": datetime.now(UTC)}
    store.command(
        f"""
        INSERT INTO {{db}}.traces (project_id, trace_id, run_id, step_number, phase, datapoint_id,
            score, status, cost_usd, duration_ms, turn_count, tokens_input, tokens_output,
            model_name, env_name, meta, created_at)
        SELECT {{p:String}}, {TRACE_ID}, {{r:String}}, intDiv(number, 1000), 'train',
            concat('dp_', toString(number % 500)), (number % 100) / 100, 'completed', 0, 0, 0, 0,
            0, 'm', 'e', '{{}}', now64(3)
        FROM numbers({{n:UInt64}})
        """,
        params,
    )
    bookkeeping = [
        ("__status__", "string", "NULL", "if(number % 50 = 0, 'error', 'ok')", "NULL", "NULL"),
        ("__error__", "string", "NULL", "if(number % 50 = 0, 'ValueError: x', '')", "NULL", "NULL"),
    ]
    for name, kind, number, string, flag, raw in bookkeeping + columns:
        where = "" if name.startswith("__") else " WHERE number % 50 != 0"
        store.command(
            f"""
            INSERT INTO {{db}}.entity_metadata (project_id, run_id, judge, entity_level,
                entity_id, datapoint_id, step_number, phase, column, value_type, value_number,
                value_string, value_bool, value_json, judge_version, computed_at)
            SELECT {{p:String}}, {{r:String}}, {{j:String}}, 'trace', {TRACE_ID},
                   concat('dp_', toString(number % 500)), intDiv(number, 1000), 'train', '{name}',
                   '{kind}', {number}, {string}, {flag}, {raw}, 'v1', {{at:DateTime64(6, 'UTC')}}
            FROM numbers({{n:UInt64}}){where}
            """,
            params,
        )
    store.command("OPTIMIZE TABLE {db}.entity_metadata FINAL")
    store.command("OPTIMIZE TABLE {db}.traces FINAL")
    print(f"seeded {run_id}: {traces:,} traces in {time.perf_counter() - started:.1f} s")


def best_of(repeat: int, a: Callable[[], object], b: Callable[[], object]) -> tuple[float, float]:
    best_a = best_b = float("inf")
    for _ in range(repeat):
        for which, fn in (("a", a), ("b", b)):
            started = time.perf_counter()
            fn()
            elapsed = time.perf_counter() - started
            if which == "a":
                best_a = min(best_a, elapsed)
            else:
                best_b = min(best_b, elapsed)
    return best_a, best_b


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--traces", type=int, default=200_000)
    parser.add_argument("--filter-traces", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    with Store.open(bench_settings("results")) as store:
        seed_run(store, TABLE_RUN, args.traces, "bench", COLUMNS)
        seed_run(
            store,
            FILTER_RUN,
            args.filter_traces,
            "flag",
            [("flagged", "number", "toFloat64(number % 7 = 0)", "NULL", "NULL", "NULL")],
        )
        svc = MantaService(store)

        selection = select_results(store, ResultsQuery("bench", TABLE_RUN))
        sql, params = q.pivot_sql(selection.query(), None, None)
        rows = {}

        def ceiling() -> None:
            rows["a"] = q.query_arrow(store, sql, params).num_rows

        def frame() -> None:
            result = svc.results("bench", TABLE_RUN)
            rows["b"] = len(result)
            ok = result[result.status == "ok"]  # failed entities have no values
            assert str(result.tool_calls.dtype) == "Int64" and ok.tools.iloc[0] is not None

        a, b = best_of(args.repeat, ceiling, frame)
        assert rows["a"] == rows["b"] == args.traces
        print(f"(1) results table, {args.traces:,} traces x {len(COLUMNS)} columns")
        print(f"    a) query_arrow of the pivot (ceiling): {a:.3f} s")
        print(f"    b) svc.results() -> typed DataFrame:   {b:.3f} s")
        print(f"    b/a = {b / a:.2f}x (target <= 1.5x)")

        hand = store.sql(
            """
            SELECT count() FROM {db}.traces WHERE run_id = {r:String} AND trace_id IN (
                SELECT entity_id FROM {db}.entity_metadata FINAL
                WHERE project_id = {p:String} AND run_id = {r:String} AND judge = 'flag'
                  AND entity_level = 'trace' AND column = 'flagged' AND value_number > 0)
            """
        )
        counts = {}

        def by_hand() -> None:
            counts["a"] = store.client.query(
                hand, parameters={"r": FILTER_RUN, "p": PROJECT}
            ).result_rows[0][0]

        def filtered() -> None:
            counts["b"] = svc.count_traces(FILTER_RUN, results="flag.flagged > 0")

        a, b = best_of(args.repeat, by_hand, filtered)
        assert counts["a"] == counts["b"] > 0, counts
        print(f"(2) results filter over {args.filter_traces:,} traces ({counts['b']:,} match)")
        print(f"    a) hand-written count() with IN (...):  {a:.3f} s")
        print(f"    b) count_traces(results=...) semi-join: {b:.3f} s")
        print(f"    b/a = {b / a:.2f}x (target <= 2x)")


if __name__ == "__main__":
    main()
