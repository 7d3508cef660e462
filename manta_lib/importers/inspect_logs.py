"""Inspect AI eval logs (``.eval`` and ``.json``), read with Inspect's own reader.

Needs the ``inspect`` extra (``pip install 'manta[inspect]'``). One trace per sample and
epoch:

- ``trace_id`` = ``<eval_id>:<sample id>:<epoch>`` (prefixed by ``--run-id`` when that
  differs from the eval's run id); ``run_id`` = ``<task>_<eval created, UTC>``, e.g.
  ``browser_2025-05-13T00-27-36`` (``--run-id`` overrides; Inspect's run id is in meta);
  ``env_name`` = the task; ``datapoint_id`` = the sample id (or
  the ``--datapoint`` path into the sample); ``phase`` = ``eval``; ``step_number`` = 0 (or
  ``--step``); ``model_name`` = the eval's model;
- messages and tool calls as chat spans (a tool message's ``error`` makes its call
  ``is_error`` with ``error_type`` = the error's type); tool results no assistant message
  issued stay tool spans, so their errors are kept;
- each score becomes a ``grader`` span named after the scorer: ``content`` = the
  explanation, attributes ``value`` (as logged), ``score`` (the value as Inspect's own
  ``value_to_float`` maps it: C=1, I=0, P=0.5, N=0, numbers, yes/no; null for lists and
  dicts), ``passed`` (for C/I and booleans), ``answer``, ``explanation``, ``metadata``;
- the trace ``score`` is the first scorer of the log's results (``--score`` path into the
  sample overrides, e.g. ``scores.match.value``);
- one ``llm`` span per model call of the solver (Inspect's model events: model, tokens, cost,
  timing, finish reason), or per model of the sample's usage when the log has no events; model
  calls made inside a scorer go to that scorer's grader span (model, tokens, cost, and its
  conversation as ``attributes.messages``);
- ``status``: ``error`` when the sample errored, ``<type>_limit`` when it hit a limit;
  ``duration_ms`` = total time; tokens and cost = the sums of the ``llm`` spans; a call
  without a logged cost is priced from the maintained price table (genai-prices) by its
  model and tokens and marked ``cost_estimated`` (span attributes, trace ``meta``); a cost
  that cannot be known is null, and so is a sum that includes one; ``created_at`` = the
  sample's start, else the eval's creation time;
  ``meta.inspect`` = the eval's task, ids, model, dataset,
  task arguments and metadata; ``meta.sample_metadata``, ``meta.target``.
"""

from __future__ import annotations

import json
import re
import struct
import zipfile
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from manta_lib.errors import ConfigError
from manta_lib.importers.base import (
    Hierarchy,
    Problems,
    known_or_estimated_cost,
    score_number,
    total_cost,
)
from manta_lib.importers.chat import chat_spans
from manta_lib.ingest.lines import max_record_bytes, too_large
from manta_lib.ingest.loader import SourceRecord

_SAMPLES_DIR = "samples/"
_INFLATE_CHUNK = 1 << 20
# What reading a damaged log raises: Inspect's parse and validation errors (ValueError),
# missing members, a damaged zip or deflate stream, JSON nested past Python's recursion limit.
_READ_ERRORS = (
    ValueError,
    KeyError,
    IndexError,
    OSError,
    EOFError,
    zipfile.BadZipFile,
    zlib.error,
    RecursionError,
)
_JSON_LOG_HEAD = re.compile(rb'\s*\{\s*"version"\s*:\s*\d')
_ROLE_KEYS = ("role", "content", "tool_calls", "tool_call_id", "function", "error")


def _inspect_log_module() -> Any:
    try:
        import inspect_ai.log as inspect_log
    except ImportError:
        raise ConfigError(
            "reading Inspect AI logs needs the inspect extra: pip install 'manta[inspect]'"
        ) from None
    return inspect_log


class InspectImporter:
    """``--format inspect``: Inspect AI eval logs."""

    name = "inspect"

    def sniff(self, path: Path) -> bool:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                names = set(archive.namelist())
            return "header.json" in names or "_journal/start.json" in names
        with path.open("rb") as handle:
            head = handle.read(4096)
        # Inspect writes "version" as the first key of a JSON log, "eval" soon after
        return bool(_JSON_LOG_HEAD.match(head)) and b'"eval"' in head

    def read_file(self, path: Path, hierarchy: Hierarchy) -> Iterator[SourceRecord]:
        inspect_log = _inspect_log_module()
        source = str(path)
        limit = max_record_bytes()
        try:
            if not zipfile.is_zipfile(path):
                size = path.stat().st_size
                if size > limit:
                    reason = too_large("this JSON log", f"{size:,} bytes", limit)
                    yield SourceRecord(source, 0, None, (("", reason),))
                    return
                header = inspect_log.read_eval_log(str(path), resolve_attachments=True)
                for number, sample in enumerate(header.samples or [], start=1):
                    yield self._record(source, number, header, sample, hierarchy, path.name)
                return
            # .eval: one sample at a time (bounded memory), every sample the file holds; each
            # member is inflated once first, bounded, so a zip bomb or a corrupt member is an
            # error of its sample (or of the file) before Inspect's reader inflates it whole.
            bad = _bad_members(path, limit)
            for name, reason in bad.items():
                if not name.startswith(_SAMPLES_DIR):
                    yield SourceRecord(source, 0, None, (("", f"{name}: {reason}"),))
                    return
            header = inspect_log.read_eval_log(str(path), header_only=True)
            summaries = inspect_log.read_eval_log_sample_summaries(str(path))
        except _READ_ERRORS as exc:
            yield SourceRecord(source, 0, None, (("", f"not a readable Inspect AI log ({exc!r})"),))
            return
        for number, summary in enumerate(summaries, start=1):
            where = f"samples[{number - 1}]"
            member = f"{_SAMPLES_DIR}{summary.id}_epoch_{summary.epoch}.json"
            if member in bad:
                yield SourceRecord(source, number, None, ((where, f"{member}: {bad[member]}"),))
                continue
            try:
                sample = inspect_log.read_eval_log_sample(
                    str(path), id=summary.id, epoch=summary.epoch, resolve_attachments=True
                )
            except _READ_ERRORS as exc:
                reason = f"{member}: not a readable sample ({exc!r})"
                yield SourceRecord(source, number, None, ((where, reason),))
                continue
            yield self._record(source, number, header, sample, hierarchy, path.name)

    def _record(
        self, source: str, number: int, header: Any, sample: Any, hierarchy: Hierarchy, name: str
    ) -> SourceRecord:
        try:
            trace = sample_trace(header, sample, hierarchy, name)
        except Problems as exc:
            where = f"samples[{number - 1}]"
            problems = tuple((f"{where}.{f}" if f else where, r) for f, r in exc.problems)
            return SourceRecord(source, number, None, problems)
        except RecursionError:
            reason = "nested too deeply to map (a message or value holds itself many levels deep)"
            return SourceRecord(source, number, None, ((f"samples[{number - 1}]", reason),))
        return SourceRecord(source, number, trace)

    def map_record(self, record: Any, hierarchy: Hierarchy) -> list[dict[str, Any]]:
        """An ``EvalLog`` object (with its samples) -> its traces."""
        if not hasattr(record, "eval") or not hasattr(record, "samples"):
            raise Problems([("", f"expected an Inspect EvalLog, got {type(record).__name__}")])
        return [sample_trace(record, s, hierarchy, "") for s in record.samples or []]


def _bad_members(path: Path, limit: int) -> dict[str, str]:
    """Members of a ``.eval`` zip that do not inflate, or inflate past ``limit`` bytes: name ->
    reason. Inflates each member's stored bytes in chunks, whatever size the zip declares
    (Inspect's reader trusts the stream, not the declared size)."""
    bad: dict[str, str] = {}
    with zipfile.ZipFile(path) as archive, path.open("rb") as handle:
        for info in archive.infolist():
            if info.is_dir():
                continue
            try:
                size = _inflated_size(handle, info, limit)
            except (zlib.error, zipfile.BadZipFile, NotImplementedError) as exc:
                bad[info.filename] = f"a damaged compressed member ({exc})"
                continue
            if size > limit:
                bad[info.filename] = too_large(
                    "the member", f"over {limit:,} bytes inflated", limit
                )
    return bad


def _inflated_size(handle: Any, info: zipfile.ZipInfo, limit: int) -> int:
    """The inflated size of one member, counted up to ``limit + 1`` bytes."""
    handle.seek(info.header_offset)
    local = handle.read(30)
    if len(local) < 30 or local[:4] != b"PK\x03\x04":
        raise zipfile.BadZipFile("bad local file header")
    name_length, extra_length = struct.unpack("<HH", local[26:30])
    handle.seek(info.header_offset + 30 + name_length + extra_length)
    left = info.compress_size
    if info.compress_type == zipfile.ZIP_STORED:
        return left
    if info.compress_type != zipfile.ZIP_DEFLATED:
        raise NotImplementedError(f"compression method {info.compress_type}")
    inflater = zlib.decompressobj(-15)
    size = 0
    while left > 0 and size <= limit:
        chunk = handle.read(min(_INFLATE_CHUNK, left))
        if not chunk:
            raise zipfile.BadZipFile("truncated member")
        left -= len(chunk)
        while chunk and size <= limit:
            size += len(inflater.decompress(chunk, _INFLATE_CHUNK))
            chunk = inflater.unconsumed_tail
    if size <= limit:
        size += len(inflater.flush())
    return size


def _message_dict(message: Any) -> dict[str, Any]:
    data = message.model_dump(mode="json", exclude_none=True)
    out = {key: data[key] for key in _ROLE_KEYS if key in data}
    out["inspect"] = {k: v for k, v in data.items() if k not in _ROLE_KEYS}
    calls = data.get("tool_calls")
    if calls:
        out["tool_calls"] = [
            {
                "id": call.get("id"),
                "type": "function",
                "function": {
                    "name": call.get("function"),
                    "arguments": json.dumps(call.get("arguments", {}), ensure_ascii=False),
                },
                **({"parse_error": call["parse_error"]} if call.get("parse_error") else {}),
            }
            for call in calls
        ]
    return out


def _grader(name: str, score: Any, to_float: Any, trace_id: str, index: int) -> dict[str, Any]:
    value = score.value
    number = None if isinstance(value, list | dict) else float(to_float(value))
    passed = value == "C" if value in ("C", "I") else (value if isinstance(value, bool) else None)
    attributes: dict[str, Any] = {
        "score": number,
        "value": value,
        "answer": score.answer,
        "explanation": score.explanation,
    }
    if passed is not None:
        attributes["passed"] = passed
    if score.metadata:
        attributes["metadata"] = score.metadata
    return {
        "span_id": f"{trace_id}:g{index}",
        "kind": "grader",
        "name": name,
        "content": score.explanation or "",
        "attributes": attributes,
    }


def _scorer_of_events(events: list[Any]) -> dict[str, str]:
    """Inspect span id -> the scorer it runs under (model calls there are a grader's)."""
    parents: dict[str, tuple[str | None, str, str]] = {}
    for event in events:
        if getattr(event, "event", "") == "span_begin":
            parents[event.id] = (event.parent_id, event.type or "", event.name)
    scorer: dict[str, str] = {}
    for span_id in parents:
        current: str | None = span_id
        while current in parents:
            parent, kind, name = parents[current]
            if kind == "scorer":
                scorer[span_id] = name
                break
            current = parent
    return scorer


def _model_calls(
    sample: Any, trace_id: str
) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """``llm`` spans of the sample's own model calls, and the usage of each scorer's calls."""
    events = list(sample.events or [])
    scorer_of = _scorer_of_events(events)
    spans: list[dict[str, Any]] = []
    graders: dict[str, dict[str, Any]] = {}
    for event in events:
        if getattr(event, "event", "") != "model":
            continue
        output = event.output
        usage = output.usage if output else None
        choice = output.choices[0] if output and output.choices else None
        model = (output.model if output and output.model else None) or event.model
        tokens_in = usage.input_tokens if usage else 0
        tokens_out = usage.output_tokens if usage else 0
        cost, estimated = known_or_estimated_cost(
            usage.total_cost if usage else None, model or "", tokens_in, tokens_out
        )
        scorer = scorer_of.get(event.span_id or "")
        if scorer is not None:
            grader = graders.setdefault(
                scorer,
                {"model_name": model, "tokens_input": 0, "tokens_output": 0, "cost_usd": 0.0},
            )
            grader["tokens_input"] += tokens_in
            grader["tokens_output"] += tokens_out
            # one call without a known cost makes the grader's cost unknown
            grader["cost_usd"] = None if cost is None else _plus(grader["cost_usd"], cost)
            if estimated:
                grader["cost_estimated"] = True
            grader.setdefault("messages", []).extend(
                {"role": m.role, "content": m.text}
                for m in [*event.input, *([choice.message] if choice else [])]
            )
            continue
        spans.append(
            {
                "span_id": f"{trace_id}:l{len(spans)}",
                "kind": "llm",
                "name": "generate",
                "model_name": model,
                "tokens_input": tokens_in,
                "tokens_output": tokens_out,
                "cost_usd": cost,
                "started_at": _iso(event.timestamp),
                "ended_at": _iso(getattr(event, "completed", None)),
                "attributes": {
                    "turn": len(spans),
                    "finish_reason": choice.stop_reason if choice else None,
                    "input_tokens_cache_read": usage.input_tokens_cache_read if usage else None,
                    **({"cost_estimated": True} if estimated else {}),
                },
            }
        )
    if spans or graders:
        return spans, graders
    for turn, (model, usage) in enumerate((sample.model_usage or {}).items()):
        cost, estimated = known_or_estimated_cost(
            usage.total_cost, model, usage.input_tokens, usage.output_tokens
        )
        spans.append(
            {
                "span_id": f"{trace_id}:u{turn}",
                "kind": "llm",
                "name": "model_usage",
                "model_name": model,
                "tokens_input": usage.input_tokens,
                "tokens_output": usage.output_tokens,
                "cost_usd": cost,
                "attributes": {
                    "turn": turn,
                    "aggregate": True,
                    **({"cost_estimated": True} if estimated else {}),
                },
            }
        )
    return spans, graders


def _plus(total: float | None, cost: float) -> float | None:
    return None if total is None else total + cost


def inspect_run_id(spec: Any) -> str:
    """The run id of an Inspect eval: its task and the time it was created, readable
    (``browser_2025-05-13T00-27-36``); Inspect's own opaque run id stays in ``meta.inspect``."""
    task = str(spec.task or spec.task_id or "inspect").rsplit("/", 1)[-1]
    created = spec.created
    if isinstance(created, str):
        try:
            created = datetime.fromisoformat(created)
        except ValueError:
            created = None
    if not isinstance(created, datetime):
        return f"{task}_{spec.run_id}"
    if created.tzinfo is not None:
        created = created.astimezone(UTC)
    return f"{task}_{created:%Y-%m-%dT%H-%M-%S}"


def _iso(moment: datetime | str | None) -> str | None:
    if isinstance(moment, datetime):
        return moment.isoformat()
    return moment or None


def sample_trace(header: Any, sample: Any, hierarchy: Hierarchy, log_name: str) -> dict[str, Any]:
    """One Inspect sample (one epoch) -> one trace object."""
    from inspect_ai.scorer import value_to_float

    to_float = value_to_float()
    spec = header.eval
    trace_id = f"{spec.eval_id or spec.task_id}:{sample.id}:{sample.epoch}"
    if hierarchy.run_id and hierarchy.run_id != spec.run_id:
        trace_id = f"{hierarchy.run_id}:{trace_id}"  # the same sample in another run
    sample_dict = sample.model_dump(mode="json", exclude={"events", "messages", "attachments"})
    spans, turns = chat_spans(
        [_message_dict(m) for m in sample.messages], trace_id, orphan_tools_as_spans=True
    )
    scorer_order = [s.name for s in (header.results.scores if header.results else [])]
    scores = dict(sample.scores or {})
    names = [n for n in scorer_order if n in scores] + [n for n in scores if n not in scorer_order]
    llm_spans, grader_usage = _model_calls(sample, trace_id)
    seq = len(spans)
    for index, name in enumerate(names):
        grader = _grader(name, scores[name], to_float, trace_id, index)
        usage_of_grader = dict(grader_usage.get(name, {}))
        if "messages" in usage_of_grader:
            grader["attributes"]["messages"] = usage_of_grader.pop("messages")
        if usage_of_grader.pop("cost_estimated", False):
            grader["attributes"]["cost_estimated"] = True
        spans.append({**grader, **usage_of_grader, "seq": seq})
        seq += 1
    for span in llm_spans:
        spans.append({**span, "seq": seq})
        seq += 1
    default_score = None
    if names and not isinstance(scores[names[0]].value, list | dict):
        default_score = float(to_float(scores[names[0]].value))
    raw_score = hierarchy.path_value(sample_dict, "score", default_score)
    score = score_number(raw_score, hierarchy.score or "scores")
    status = "completed"
    if sample.error:
        status = "error"
    elif sample.limit:
        status = f"{sample.limit.type}_limit"
    meta: dict[str, Any] = {
        "inspect": {
            "eval_id": spec.eval_id,
            "run_id": spec.run_id,
            "task": spec.task,
            "task_id": spec.task_id,
            "task_version": spec.task_version,
            "model": spec.model,
            "dataset": spec.dataset.name if spec.dataset else None,
            "created": spec.created,
            "task_args": spec.task_args,
            "metadata": spec.metadata,
            "log_status": header.status,
            "log_file": log_name,
            "epoch": sample.epoch,
        },
        "sample_metadata": sample.metadata,
        "target": sample.target,
    }
    if sample.error:
        meta["error"] = sample.error.message
    cost, estimated = total_cost(llm_spans)
    if estimated:
        meta["cost_estimated"] = True
    trace: dict[str, Any] = {
        "trace_id": trace_id,
        "run_id": hierarchy.run_id or inspect_run_id(spec),
        "phase": hierarchy.phase or "eval",
        "step_number": hierarchy.step_value(sample_dict, 0),
        "datapoint_id": str(hierarchy.path_value(sample_dict, "datapoint", sample.id)),
        "score": score,
        "status": status,
        "model_name": spec.model,
        "env_name": spec.task,
        "turn_count": turns,
        "duration_ms": round((sample.total_time or 0) * 1000),
        "tokens_input": sum(span["tokens_input"] for span in llm_spans),
        "tokens_output": sum(span["tokens_output"] for span in llm_spans),
        "cost_usd": cost,
        "meta": meta,
        "spans": spans,
    }
    if hierarchy.project:
        trace["project_id"] = hierarchy.project
    trace["created_at"] = _started(sample, spec)
    return trace


def _started(sample: Any, spec: Any) -> str | None:
    """The sample's start, else the eval's creation (the eval's date, never the import's)."""
    return _iso(getattr(sample, "started_at", None) or spec.created)
