"""OpenAI chat-message rollouts: field mapping, round trip, error rule, hierarchy, bad lines."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel
from typer.testing import CliRunner

from manta_lib import MantaService, import_files, import_records
from manta_lib.cli import _register_commands, app
from manta_lib.importers import detect_format
from manta_lib.store import Store


def _call(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def _agent_messages(n: int) -> list[dict[str, Any]]:
    """A tool-using rollout already in the normal form (string contents)."""
    return [
        {"role": "system", "content": "You are a careful math agent."},
        {"role": "user", "content": f"What is {n} * 7? Use the calculator."},
        {
            "role": "assistant",
            "content": "Let me compute both.",
            "tool_calls": [
                _call(f"call_a{n}", "calc", json.dumps({"expr": f"{n}*7"})),
                _call(f"call_b{n}", "search", '{"q": "multiplication"}'),
            ],
        },
        {"role": "tool", "tool_call_id": f"call_a{n}", "content": str(n * 7)},
        {"role": "tool", "tool_call_id": f"call_b{n}", "content": '{"error": "rate limited"}'},
        {"role": "assistant", "content": "Checking once more.", "name": "solver"},
        {"role": "user", "content": "Go on."},
        {"role": "assistant", "content": "", "tool_calls": [_call(f"call_c{n}", "calc", "{}")]},
        {
            "role": "tool",
            "tool_call_id": f"call_c{n}",
            "content": "Traceback (most recent call last):\n  ...\nZeroDivisionError: div by 0",
        },
        {"role": "assistant", "content": f"The answer is {n * 7}."},
    ]


def _rollout(n: int, **extra: Any) -> dict[str, Any]:
    return {
        "messages": _agent_messages(n),
        "reward": 1.0 if n % 2 else 0.0,
        "model": "qwen2.5-7b-instruct",
        "usage": {"prompt_tokens": 100 + n, "completion_tokens": 20 + n},
        "metadata": {"run_id": "grpo_v1", "step": n // 2, "datapoint_id": f"dp_{n}", "seed": n},
        **extra,
    }


def _write(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_round_trip_and_field_mapping(store: Store, tmp_path: Path) -> None:
    source = _write(tmp_path / "rollouts.jsonl", [_rollout(n) for n in range(4)])
    assert detect_format(source) == "openai"
    report = import_files([source], store=store)
    assert report.ok, report.errors
    assert (report.traces_loaded, report.spans_loaded) == (4, 40)

    service = MantaService(store)
    traces = service.get_traces("grpo_v1", order_by="datapoint_id")
    assert [t.datapoint_id for t in traces] == ["dp_0", "dp_1", "dp_2", "dp_3"]
    assert [t.step_number for t in traces] == [0, 0, 1, 1]
    assert [t.score for t in traces] == [0.0, 1.0, 0.0, 1.0]
    first = traces[1]
    assert (first.model_name, first.tokens_input, first.tokens_output) == (
        "qwen2.5-7b-instruct",
        101,
        21,
    )
    assert first.turn_count == 4
    assert first.meta["seed"] == 1
    for trace, context in zip(traces, service.load_contexts(traces), strict=True):
        n = int(trace.datapoint_id.removeprefix("dp_"))
        assert context.conversation().to_openai_messages() == _agent_messages(n)
        calls = context.tools()
        assert [(c.tool_name, c.is_error, c.error_type) for c in calls] == [
            ("calc", False, None),
            ("search", True, "ToolError"),
            ("calc", True, "ZeroDivisionError"),
        ]
        assert calls[0].arguments == {"expr": f"{n}*7"}

    again = import_files([source], store=store)
    assert (again.traces_loaded, again.traces_already_present) == (0, 4)
    assert service.count_traces("grpo_v1") == 4


def test_documented_normalization(store: Store) -> None:
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "look"},
                {"type": "image_url", "image_url": {"url": "x.png"}},
                {"type": "text", "text": "here"},
            ],
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": {"a": 1}}}
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "name": "f", "content": "ok"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c2", "type": "function", "function": {"name": "g", "arguments": "{}"}}
            ],
        },
        {"role": "user", "content": "stop"},
        {"role": "tool", "tool_call_id": "unknown", "content": "late"},
    ]
    report = import_records([{"messages": messages}], store=store, run_id="norm")
    assert report.ok, report.errors
    context = MantaService(store).load_contexts(MantaService(store).get_traces("norm"))[0]
    assert context.conversation().to_openai_messages() == [
        {"role": "user", "content": "look\nhere"},
        {"role": "assistant", "content": "", "tool_calls": [_call("c1", "f", '{"a": 1}')]},
        {"role": "tool", "tool_call_id": "c1", "content": "ok"},
        {"role": "assistant", "content": "", "tool_calls": [_call("c2", "g", "{}")]},
        {"role": "tool", "tool_call_id": "c2", "content": ""},
        {"role": "user", "content": "stop"},
        {"role": "tool", "tool_call_id": "unknown", "content": "late"},
    ]
    user = context.spans("message")[0]
    assert user.attributes["content_parts"][1]["type"] == "image_url"
    unanswered = [s for s in context.spans("tool") if s.tool_name == "g"][0]
    assert unanswered.attributes["no_result"] is True


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ({"content": "fine"}, (False, None)),
        ({"content": "Error: file not found"}, (True, "ToolError")),
        ({"content": '{"error": {"type": "Timeout", "message": "slow"}}'}, (True, "Timeout")),
        ({"content": '{"error": null, "value": 3}'}, (False, None)),
        ({"content": "ok", "is_error": True, "error_type": "Denied"}, (True, "Denied")),
        ({"content": "Error: but flagged fine", "is_error": False}, (False, None)),
        ({"content": "", "error": "sandbox crashed"}, (True, "ToolError")),
        ({"content": "the word Error: inside is fine"}, (False, None)),
    ],
)
def test_tool_error_rule(
    store: Store, message: dict[str, Any], expected: tuple[bool, str | None]
) -> None:
    messages = [
        {"role": "assistant", "content": "", "tool_calls": [_call("c", "t", "{}")]},
        {"role": "tool", "tool_call_id": "c", **message},
    ]
    assert import_records([{"messages": messages}], store=store, run_id="errs").ok
    service = MantaService(store)
    (call,) = service.load_contexts(service.get_traces("errs"))[0].tools()
    assert (call.is_error, call.error_type) == expected


class Rollout(BaseModel):
    messages: list[dict[str, Any]]
    reward: float
    metadata: dict[str, Any]


def test_hierarchy_options_and_pydantic_records(store: Store) -> None:
    rollouts = [
        Rollout(
            messages=_agent_messages(n),
            reward=0.5,
            metadata={"it": n, "pid": f"p{n % 2}", "r": n / 10},
        )
        for n in range(3)
    ]
    report = import_records(
        rollouts,
        store=store,
        run_id="loop",
        phase="eval",
        step="metadata.it",
        datapoint="metadata.pid",
        score="metadata.r",
        project="proj",
    )
    assert report.ok, report.errors
    traces = MantaService(store).get_traces("loop")
    assert [
        (t.step_number, t.datapoint_id, t.score, t.phase.value, t.project_id) for t in traces
    ] == [
        (0, "p0", 0.0, "eval", "proj"),
        (1, "p1", 0.1, "eval", "proj"),
        (2, "p0", 0.2, "eval", "proj"),
    ]
    # the same rollouts at a constant step of another run are other traces
    assert import_records(rollouts, store=store, run_id="loop2", step=7).traces_loaded == 3
    assert import_records(rollouts, store=store, run_id="loop2", step=7).traces_already_present == 3


def test_missing_run_id_and_bad_lines(store: Store, tmp_path: Path) -> None:
    good = _rollout(1)
    no_run = {"messages": [{"role": "user", "content": "hi"}]}
    bad_role = {**good, "messages": [{"role": "robot", "content": "x"}]}
    bad_call = {
        **good,
        "messages": [{"role": "assistant", "content": "", "tool_calls": [{"id": "c"}]}],
    }
    source = _write(
        tmp_path / "mixed.jsonl", [good, no_run, "{not json", bad_role, bad_call, _rollout(3)]
    )
    report = import_files([source], store=store, format="openai")
    assert report.traces_loaded == 2
    errors = [(e.line, e.field) for e in report.errors]
    assert errors == [
        (2, "run_id"),
        (3, ""),
        (4, "messages[0].role"),
        (5, "messages[0].tool_calls[0].function.name"),
    ]
    assert "--run-id" in report.errors[0].reason
    assert str(report.errors[2]).startswith(
        f"{source}:4: messages[0].role: 'robot' is not a chat role"
    )

    missing_step = import_records([good], store=store, run_id="x", step="metadata.nope")
    assert [(e.field, e.reason) for e in missing_step.errors] == [
        ("metadata.nope", "missing (named by --step)")
    ]


def test_cli_import_openai_with_flags(store: Store, tmp_path: Path) -> None:
    _register_commands()
    source = _write(
        tmp_path / "r.jsonl", [{"messages": _agent_messages(n), "reward": n} for n in range(3)]
    )
    store.close()
    cli = CliRunner()
    result = cli.invoke(app, ["import", str(source)])
    assert result.exit_code == 1
    assert "no run id: pass --run-id" in result.stderr
    result = cli.invoke(app, ["import", str(source), "--run-id", "cli_run", "--step", "5"])
    assert result.exit_code == 0, result.output
    assert "3 traces and 30 spans loaded" in result.stdout
    result = cli.invoke(
        app, ["import", "--format", "openai", str(source), "--run-id", "cli_run", "--step", "5"]
    )
    assert result.exit_code == 0 and "3 traces already present" in result.stdout
    assert cli.invoke(app, ["import", "--format", "nope", str(source)]).exit_code == 2
