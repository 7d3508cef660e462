"""Micro-benchmark: TraceContext over a 20-span trace built from raw ClickHouse-shaped rows.

Prints µs per construction (what the query service pays per trace) and per construction plus
full accessor use (what a map function that reads everything pays), next to the time
ClickHouse itself needs to stream the 20 rows.

    .venv/bin/python benchmarks/bench_context.py
"""

from __future__ import annotations

import json
import timeit
from datetime import UTC, datetime, timedelta
from typing import Any

from manta_lib.context import TraceContext
from manta_lib.models import SPAN_COLUMNS, TraceRecord

RAW_STREAM_ROWS_PER_S = 1.34e6
TRACE = TraceRecord(trace_id="tr_bench", run_id="run_bench", score=1.0, model_name="gpt-x")


def span_rows() -> list[tuple[Any, ...]]:
    """20 spans laid out by docs/span_conventions.md: 4 tool-using turns, a grader, setup."""
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    spans: list[dict[str, Any]] = [
        {"kind": "system", "name": "setup", "content": "env ready"},
        {"kind": "message", "role": "system", "content": "You are a careful agent. " * 8},
        {"kind": "message", "role": "user", "content": "Solve the task in the repo. " * 4},
    ]
    for turn in range(4):
        call_id = f"call_{turn}"
        spans += [
            {
                "kind": "llm",
                "name": "chat.completions",
                "model_name": "gpt-x",
                "tokens_input": 900 + turn * 300,
                "tokens_output": 80,
                "cost_usd": 0.004,
                "attributes": {"finish_reason": "tool_calls", "turn": turn},
            },
            {
                "kind": "message",
                "role": "assistant",
                "content": f"Step {turn}: let me look at the files.",
                "attributes": {"tool_call_ids": [call_id]},
            },
            {
                "kind": "tool",
                "tool_name": "run_shell",
                "tool_arguments": json.dumps({"cmd": f"grep -rn todo src/{turn}", "timeout": 30}),
                "tool_result": "src/a.py:12: # todo\n" * 5,
                "is_error": turn == 2,
                "attributes": {"call_id": call_id}
                | ({"error_type": "Timeout"} if turn == 2 else {}),
            },
        ]
    spans += [
        {  # the last tool result echoed as a tool message (left out of the conversation)
            "kind": "message",
            "role": "tool",
            "content": "src/a.py:12: # todo\n" * 5,
            "attributes": {"tool_call_id": "call_3"},
        },
        {
            "kind": "llm",
            "name": "chat.completions",
            "model_name": "gpt-x",
            "tokens_input": 2400,
            "tokens_output": 120,
            "cost_usd": 0.006,
            "attributes": {"finish_reason": "stop", "turn": 4},
        },
        {"kind": "message", "role": "assistant", "content": "Done: fixed 3 todos. " * 3},
        {
            "kind": "grader",
            "name": "rubric",
            "content": "Good work.",
            "model_name": "judge",
            "tokens_input": 500,
            "tokens_output": 40,
            "cost_usd": 0.001,
            "attributes": {
                "score": 0.8,
                "passed": True,
                "criteria": [
                    {"name": "correct", "score": 1.0, "passed": True, "reason": "tests pass"},
                    {"name": "efficient", "score": 0.6, "passed": True, "reason": "one retry"},
                ],
                "messages": [
                    {"role": "system", "content": "Grade the rollout."},
                    {"role": "assistant", "content": "0.8"},
                ],
            },
        },
        {"kind": "system", "name": "teardown"},
    ]
    assert len(spans) == 20
    defaults: dict[str, Any] = {
        "trace_id": TRACE.trace_id,
        "run_id": TRACE.run_id,
        "parent_span_id": "",
        "name": "",
        "role": "",
        "content": "",
        "tool_name": "",
        "tool_arguments": "",
        "tool_result": "",
        "is_error": False,
        "model_name": "",
        "tokens_input": 0,
        "tokens_output": 0,
        "cost_usd": 0.0,
    }
    rows = []
    for seq, span in enumerate(spans):
        values = defaults | span
        values |= {
            "span_id": f"sp_{seq:03d}",
            "seq": seq,
            "started_at": t0 + timedelta(seconds=seq),
            "ended_at": t0 + timedelta(seconds=seq, milliseconds=400),
            "attributes": json.dumps(span.get("attributes", {})),
        }
        rows.append(tuple(values[column] for column in SPAN_COLUMNS))
    return rows


def use_everything(trace: TraceContext) -> None:
    trace.messages()
    trace.messages(role="assistant")
    trace.tools()
    trace.tools(errors_only=True)
    trace.grader_result()
    trace.llm_calls()
    trace.system_events()
    conversation = trace.conversation()
    conversation.to_openai_messages()
    conversation.to_text(max_chars=2000)
    _ = (trace.tool_error_count, trace.llm_cost_usd, trace.llm_tokens, trace.has_error)


def best_us(stmt: Any, number: int, repeat: int = 5) -> float:
    return min(timeit.repeat(stmt, number=number, repeat=repeat)) / number * 1e6


def main() -> None:
    rows = span_rows()
    construct = best_us(lambda: TraceContext(TRACE, rows), number=200_000)
    construct_totals = best_us(lambda: TraceContext(TRACE, rows).tool_error_count, number=50_000)
    full = best_us(lambda: use_everything(TraceContext(TRACE, rows)), number=2_000)
    stream = len(rows) / RAW_STREAM_ROWS_PER_S * 1e6
    print(f"20-span trace, raw ClickHouse streaming of its rows: {stream:6.1f} µs")
    print(f"TraceContext construction:                          {construct:6.2f} µs")
    print(f"construction + tool_error_count:                    {construct_totals:6.2f} µs")
    print(f"construction + full accessor use:                   {full:6.1f} µs")


if __name__ == "__main__":
    main()
