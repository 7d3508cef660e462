"""Hand-built traces for tests, loaded through the real JSON Lines import path."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from manta_lib.ingest.loader import import_jsonl
from manta_lib.store import Store


def trace_line(
    trace_id: str,
    *,
    run_id: str = "run_a",
    step: int = 0,
    datapoint: str = "dp_a",
    score: float | None = 1.0,
    status: str = "completed",
    phase: str = "train",
    tool_errors: int = 0,
    tool_calls: int = 1,
    meta: dict[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """One trace with a user prompt, an assistant turn, tool calls and a grader span."""
    spans: list[dict[str, Any]] = [
        {"span_id": f"{trace_id}-u", "seq": 0, "kind": "message", "role": "user", "content": "Q?"},
        {
            "span_id": f"{trace_id}-a",
            "seq": 1,
            "kind": "message",
            "role": "assistant",
            "content": "Let me check.",
            "attributes": {"tool_call_ids": [f"c{i}" for i in range(tool_calls)]},
        },
    ]
    for i in range(tool_calls):
        failed = i < tool_errors
        spans.append(
            {
                "span_id": f"{trace_id}-t{i}",
                "parent_span_id": f"{trace_id}-a",
                "seq": 2 + i,
                "kind": "tool",
                "tool_name": "search" if i % 2 == 0 else "python",
                "tool_arguments": {"q": f"x{i}"},
                "tool_result": "boom" if failed else "ok",
                "is_error": failed,
                "attributes": {"call_id": f"c{i}"},
            }
        )
    if score is not None:
        spans.append(
            {
                "span_id": f"{trace_id}-g",
                "seq": 2 + tool_calls,
                "kind": "grader",
                "name": "exact_match",
                "attributes": {"score": score, "passed": score >= 0.5, "criteria": []},
            }
        )
    return {
        "trace_id": trace_id,
        "run_id": run_id,
        "step_number": step,
        "phase": phase,
        "datapoint_id": datapoint,
        "score": score,
        "status": status,
        "meta": meta or {},
        "spans": spans,
        **extra,
    }


def load_traces(store: Store, lines: Iterable[dict[str, Any]], tmp_path: Path) -> None:
    """Write ``lines`` as a JSONL file and import it through :func:`import_jsonl`."""
    path = tmp_path / f"traces_{id(lines)}.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    report = import_jsonl([path], store=store)
    assert not report.errors, report.errors


def hierarchy_run() -> list[dict[str, Any]]:
    """run_h: dp_a at steps 0 and 1, dp_b at step 0 only, dp_c at step 1 only; 2 rollouts each."""
    lines = []
    layout = {("dp_a", 0), ("dp_a", 1), ("dp_b", 0), ("dp_c", 1)}
    for datapoint, step in sorted(layout):
        for k in range(2):
            lines.append(
                trace_line(
                    f"t_{datapoint}_{step}_{k}",
                    run_id="run_h",
                    step=step,
                    datapoint=datapoint,
                    score=float(k),
                    tool_errors=k,
                    tool_calls=2,
                )
            )
    return lines
