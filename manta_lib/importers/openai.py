"""OpenAI chat-messages rollouts: one JSON object per line with a ``messages`` list.

```json
{"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}],
 "reward": 1.0, "model": "qwen2.5-7b", "usage": {"prompt_tokens": 12, "completion_tokens": 3},
 "metadata": {"run_id": "grpo_v1", "step": 3, "datapoint_id": "dp_17"}}
```

Messages become spans by the rules of :mod:`manta_lib.importers.chat`. Trace keys:

- ``run_id``: ``--run-id``, else the record's ``run_id``, else ``metadata.run_id``;
- ``step_number``: ``--step``, else ``step_number`` / ``step`` / ``metadata.step``, else 0;
- ``datapoint_id``: the ``--datapoint`` path, else ``datapoint_id`` / ``metadata.datapoint_id``;
- ``score``: the ``--score`` path, else ``reward``, else ``score`` (true/false give 1/0);
- ``phase``: ``--phase``, else ``phase`` / ``metadata.phase``, else ``train``;
- ``trace_id``: ``trace_id`` or ``id``, else a hash of the run, step and the line's bytes
  (so a re-import finds it present);
- ``model_name`` from ``model``; ``tokens_input``/``tokens_output`` from ``usage``
  (``prompt_tokens``/``completion_tokens`` or ``input_tokens``/``output_tokens``);
  ``turn_count`` = the number of assistant messages; ``status``, ``env_name``, ``cost_usd``,
  ``duration_ms`` when given; ``meta`` = ``metadata`` plus every other key.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from manta_lib.importers.base import (
    MISSING,
    Hierarchy,
    Problems,
    canonical_json,
    field_path,
    first_json_line,
    json_line_records,
    no_run_id,
    plain,
    score_number,
    stable_id,
)
from manta_lib.importers.chat import chat_spans
from manta_lib.ingest.loader import SourceRecord

_TRACE_KEYS = frozenset(
    {
        "messages",
        "id",
        "trace_id",
        "run_id",
        "step",
        "step_number",
        "phase",
        "datapoint_id",
        "reward",
        "score",
        "model",
        "usage",
        "metadata",
        "status",
        "env_name",
        "cost_usd",
        "duration_ms",
        "project_id",
    }
)


class OpenAIImporter:
    """``--format openai``: chat-message rollouts, one per JSON line."""

    name = "openai"

    def sniff(self, path: Path) -> bool:
        first = first_json_line(path)
        return isinstance(first, dict) and isinstance(first.get("messages"), list)

    def read_file(self, path: Path, hierarchy: Hierarchy) -> Iterator[SourceRecord]:
        return json_line_records(path, lambda obj, raw: rollout_trace(obj, hierarchy, raw.strip()))

    def map_record(self, record: Any, hierarchy: Hierarchy) -> list[dict[str, Any]]:
        obj = plain(record)
        return [rollout_trace(obj, hierarchy, canonical_json(obj).encode())]


def _get(obj: dict[str, Any], *paths: str) -> Any:
    for path in paths:
        value = field_path(obj, path)
        if value is not MISSING and value is not None:
            return value
    return None


def rollout_trace(obj: Any, hierarchy: Hierarchy, content_key: bytes) -> dict[str, Any]:  # noqa: C901 - one branch per optional rollout field
    """One rollout object -> one trace object (raises :class:`Problems`)."""
    if not isinstance(obj, dict):
        raise Problems([("", f"expected a JSON object, got {type(obj).__name__}")])
    messages = obj.get("messages")
    if not isinstance(messages, list):
        raise Problems([("messages", "missing: expected a list of chat messages")])
    metadata = obj.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise Problems([("metadata", "expected an object")])
    problems: list[tuple[str, str]] = []
    run_id = hierarchy.run_id or _get(obj, "run_id", "metadata.run_id")
    if not run_id:
        raise no_run_id("a run_id (or metadata.run_id) field")
    step: Any = 0
    datapoint: Any = ""
    score: Any = None
    try:
        step = hierarchy.step_value(obj, _get(obj, "step_number", "step", "metadata.step") or 0)
        datapoint = hierarchy.path_value(
            obj, "datapoint", _get(obj, "datapoint_id", "metadata.datapoint_id") or ""
        )
        raw_score = hierarchy.path_value(obj, "score", _get(obj, "reward", "score"))
        score = score_number(raw_score, hierarchy.score or "reward")
    except Problems as exc:
        problems.extend(exc.problems)
    trace_id = obj.get("trace_id") or obj.get("id")
    if not trace_id:
        trace_id = stable_id("oa_", str(run_id), str(step), content_key)
    trace_id = str(trace_id)
    try:
        spans, turns = chat_spans(messages, trace_id)
    except Problems as exc:
        problems.extend(exc.problems)
        spans, turns = [], 0
    if problems:
        raise Problems(problems)
    usage: dict[str, Any] = obj["usage"] if isinstance(obj.get("usage"), dict) else {}
    meta = dict(metadata or {})
    meta.update({k: v for k, v in obj.items() if k not in _TRACE_KEYS})
    if obj.get("usage") is not None and not isinstance(obj.get("usage"), dict):
        meta["usage"] = obj["usage"]
    trace: dict[str, Any] = {
        "trace_id": trace_id,
        "run_id": str(run_id),
        "step_number": step,
        "phase": hierarchy.phase or _get(obj, "phase", "metadata.phase") or "train",
        "datapoint_id": str(datapoint),
        "score": score,
        "model_name": obj.get("model") or "",
        "tokens_input": _first_int(usage, "prompt_tokens", "input_tokens"),
        "tokens_output": _first_int(usage, "completion_tokens", "output_tokens"),
        "turn_count": turns,
        "meta": meta,
        "spans": spans,
    }
    for key in ("status", "env_name", "cost_usd", "duration_ms"):
        if obj.get(key) is not None:
            trace[key] = obj[key]
    project = hierarchy.project or obj.get("project_id")
    if project:
        trace["project_id"] = project
    return trace


def _first_int(usage: dict[str, Any], *keys: str) -> Any:
    for key in keys:
        if usage.get(key) is not None:
            return usage[key]
    return 0
