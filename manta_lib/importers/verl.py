"""verl rollout dumps: ``trainer.rollout_data_dir`` / ``trainer.validation_data_dir``.

verl's PPO/GRPO trainer writes one JSON Lines file per step, ``{step}.jsonl``, one line per
rollout, when those options are set. Every version writes ``input`` (the decoded prompt),
``output`` (the decoded response), ``score`` (the summed token-level reward) and ``step``; later
versions add ``gts`` (the ground truth, ``reward_model.ground_truth``) and the newest ``uid``;
each key the reward function returned besides the score (``acc``, ``pred``, ``reward`` in
validation dumps, ``request_id`` …) is one more key of the same name, holding a number, a
boolean, a string, a list or null.

One line becomes one trace:

- ``run_id``: ``--run-id`` (required: verl's dumps do not name their experiment);
- ``phase``: ``--phase``, else from the directory name (one naming ``val``, ``test`` or
  ``eval`` holds validation dumps: ``eval``; otherwise ``train``);
- ``step_number``: ``--step``, else ``step``, else the file name's number;
- ``datapoint_id``: ``--datapoint PATH`` (e.g. ``uid``), else ``p_`` + a hash of ``input``, so
  the k rollouts of one prompt (a GRPO group) share a datapoint, and so does the same prompt
  at every step (verl's ``uid`` is a fresh random id per prompt per step; it is kept in meta);
- ``score``: ``--score PATH``, else ``score``;
- ``trace_id``: a hash of the run, the phase, the dump directory's name, the step and the line
  number: importing the directory again finds every line already stored (records held in
  memory: the run, phase, step, the record and its position in the list);
- spans: the prompt as a ``user`` message, the response as an ``assistant`` message and one
  ``grader`` span named ``verl_reward`` (``score``; ``passed`` from ``acc`` when it is a boolean
  or 0/1; ``ground_truth``; one criterion per extra reward field);
- ``meta``: ``gts``, ``uid``, the dump file and line, and every extra field.

A file still being written ends in a line without its newline: that line is skipped (not an
error), and read by the next import once complete.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from manta_lib.errors import ValidationError
from manta_lib.importers.base import (
    Hierarchy,
    Problems,
    canonical_json,
    no_run_id,
    plain,
    score_number,
    stable_id,
)
from manta_lib.ingest.loader import SourceRecord

GRADER_NAME = "verl_reward"
_BASE_KEYS = frozenset({"input", "output", "score", "step", "gts", "uid"})
_STEP_FILE = re.compile(r"^(\d+)\.jsonl$")
_EVAL_DIR = re.compile(r"(^|[^a-z])(val|valid|validation|test|eval)", re.IGNORECASE)
_SNIFF_BYTES = 64 << 20


def dump_files(directory: Path) -> list[Path]:
    """The ``{step}.jsonl`` files of a dump directory, by step."""
    found = [p for p in directory.iterdir() if p.is_file() and _STEP_FILE.match(p.name)]
    return sorted(found, key=lambda p: int(p.name.split(".", 1)[0]))


def dump_dirs(path: Path) -> list[Path]:
    """The dump directories under ``path``: itself when it holds step files, else its
    subdirectories that do (``outputs/`` holding ``rollout/`` and ``validation/``)."""
    if dump_files(path):
        return [path]
    return sorted(sub for sub in path.iterdir() if sub.is_dir() and dump_files(sub))


def phase_of(directory: Path) -> str:
    """``eval`` for a directory whose name says validation/test/eval, else ``train``."""
    return "eval" if _EVAL_DIR.search(directory.name) else "train"


def prompt_datapoint(prompt: str) -> str:
    """The datapoint id of a prompt: the same text always gives the same id."""
    return "p_" + hashlib.blake2b(prompt.encode(), digest_size=8).hexdigest()


def _looks_like_dump_line(obj: Any) -> bool:
    return (
        isinstance(obj, dict)
        and isinstance(obj.get("input"), str)
        and "output" in obj
        and "score" in obj
        and "messages" not in obj
        and "trace_id" not in obj
    )


def _first_line(path: Path) -> Any:
    with path.open("rb") as handle:
        line = handle.readline(_SNIFF_BYTES)
    try:
        return json.loads(line)
    except ValueError:
        return None


class VerlImporter:
    """``--format verl``: a verl rollout/validation dump directory (or one step file)."""

    name = "verl"

    def __init__(self) -> None:
        self._records = 0  # in-memory records mapped so far: identical rollouts differ by it

    def sniff(self, path: Path) -> bool:
        if path.is_dir():
            # a few files: the newest may still be empty or half written
            return any(
                _looks_like_dump_line(_first_line(file))
                for directory in dump_dirs(path)
                for file in dump_files(directory)[:3]
            )
        return bool(_STEP_FILE.match(path.name)) and _looks_like_dump_line(_first_line(path))

    def read_file(self, path: Path, hierarchy: Hierarchy) -> Iterator[SourceRecord]:
        if not hierarchy.run_id:
            raise ValidationError(
                f"{path}: verl dumps carry no run name: pass --run-id RUN "
                "(import_files(run_id=...))"
            )
        if path.is_dir():
            directories = dump_dirs(path)
            if not directories:
                raise ValidationError(
                    f"{path}: no verl dump files ({{step}}.jsonl) in it or in its subdirectories; "
                    "pass the directory set as trainer.rollout_data_dir or validation_data_dir"
                )
            for directory in directories:
                for file in dump_files(directory):
                    yield from self._read_step_file(file, directory, hierarchy)
        else:
            yield from self._read_step_file(path, path.parent, hierarchy)

    def _read_step_file(
        self, path: Path, directory: Path, hierarchy: Hierarchy
    ) -> Iterator[SourceRecord]:
        source = str(path)
        match = _STEP_FILE.match(path.name)
        file_step = int(match.group(1)) if match else None
        with path.open("rb") as handle:
            for number, raw in enumerate(handle, start=1):
                if not raw.endswith(b"\n"):
                    return  # still being written: the next import reads it
                if not raw.strip():
                    continue
                try:
                    obj = json.loads(raw)
                except ValueError as exc:
                    yield SourceRecord(source, number, None, (("", f"invalid JSON ({exc})"),))
                    continue
                where = _Where(directory.name, path.name, number, file_step)
                try:
                    yield SourceRecord(source, number, dump_trace(obj, hierarchy, where, directory))
                except Problems as exc:
                    yield SourceRecord(source, number, None, tuple(exc.problems))

    def map_record(self, record: Any, hierarchy: Hierarchy) -> list[dict[str, Any]]:
        obj = plain(record)
        self._records += 1
        content = f"{self._records}:{canonical_json(obj)}"
        where = _Where("<records>", "", self._records, None, content_key=content)
        return [dump_trace(obj, hierarchy, where, None)]


class _Where:
    """Where a dump line comes from: what its trace id and meta are made of."""

    __slots__ = ("content_key", "directory", "file", "file_step", "line")

    def __init__(
        self, directory: str, file: str, line: int, file_step: int | None, content_key: str = ""
    ) -> None:
        self.directory = directory
        self.file = file
        self.line = line
        self.file_step = file_step
        self.content_key = content_key


def dump_trace(  # noqa: C901 - one branch per optional dump field
    obj: Any, hierarchy: Hierarchy, where: _Where, directory: Path | None
) -> dict[str, Any]:
    """One dump line -> one trace object (raises :class:`Problems`)."""
    if not isinstance(obj, dict):
        raise Problems([("", f"expected a JSON object, got {type(obj).__name__}")])
    problems: list[tuple[str, str]] = []
    prompt = obj.get("input")
    response = obj.get("output")
    if not isinstance(prompt, str):
        problems.append(("input", f"expected the decoded prompt text, got {prompt!r:.80}"))
    if response is not None and not isinstance(response, str):
        problems.append(("output", f"expected the decoded response text, got {response!r:.80}"))
    if not hierarchy.run_id:
        raise no_run_id("nothing else: verl dumps carry no run name")
    step: Any = None
    datapoint: Any = ""
    score: float | None = None
    try:
        step = hierarchy.step_value(obj, obj.get("step", where.file_step))
        if step is None:
            problems.append(("step", "missing, and the file name is not {step}.jsonl: pass --step"))
    except Problems as exc:
        problems.extend(exc.problems)
    try:
        datapoint = hierarchy.path_value(
            obj, "datapoint", prompt_datapoint(prompt) if isinstance(prompt, str) else ""
        )
    except Problems as exc:
        problems.extend(exc.problems)
    try:
        score = score_number(hierarchy.path_value(obj, "score", obj.get("score")), "score")
    except Problems as exc:
        problems.extend(exc.problems)
    if problems:
        raise Problems(problems)
    phase = hierarchy.phase or (phase_of(directory) if directory is not None else "train")
    if where.content_key:
        trace_id = stable_id("verl_", hierarchy.run_id, phase, str(step), where.content_key)
    else:
        trace_id = stable_id(
            "verl_", hierarchy.run_id, phase, where.directory, str(step), str(where.line)
        )
    extras = {k: v for k, v in obj.items() if k not in _BASE_KEYS}
    gts = obj.get("gts")
    meta: dict[str, Any] = {
        "verl": {"dump": where.directory, "file": where.file, "line": where.line}
    }
    if "gts" in obj:
        meta["gts"] = gts
    if obj.get("uid") is not None:
        meta["uid"] = obj["uid"]
    meta.update(extras)
    grader_attributes: dict[str, Any] = {
        "score": score,
        "criteria": [_criterion(key, value) for key, value in extras.items()],
    }
    passed = _passed(extras.get("acc"))
    if passed is not None:
        grader_attributes["passed"] = passed
    if "gts" in obj:
        grader_attributes["ground_truth"] = gts
    spans = [
        {
            "span_id": f"{trace_id}:u",
            "seq": 0,
            "kind": "message",
            "role": "user",
            "content": prompt,
        },
        {
            "span_id": f"{trace_id}:a",
            "seq": 1,
            "kind": "message",
            "role": "assistant",
            "content": response or "",
        },
        {
            "span_id": f"{trace_id}:g",
            "seq": 2,
            "kind": "grader",
            "name": GRADER_NAME,
            "content": "" if gts is None else f"ground truth: {_text(gts)}",
            "attributes": grader_attributes,
        },
    ]
    trace: dict[str, Any] = {
        "trace_id": trace_id,
        "run_id": hierarchy.run_id,
        "step_number": step,
        "phase": phase,
        "datapoint_id": str(datapoint),
        "score": score,
        "turn_count": 1,
        "meta": meta,
        "spans": spans,
    }
    if hierarchy.project:
        trace["project_id"] = hierarchy.project
    return trace


def _passed(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    return None


def _criterion(name: str, value: Any) -> dict[str, Any]:
    """An extra reward field as a grader criterion: numbers are its score, booleans its
    ``passed`` (and score 1/0), anything else (a prediction, a list) its ``reason`` text."""
    if isinstance(value, bool):
        return {"name": name, "score": 1.0 if value else 0.0, "passed": value, "reason": ""}
    if isinstance(value, int | float):
        number = float(value)
        if math.isfinite(number):
            return {"name": name, "score": number, "passed": None, "reason": ""}
        return {"name": name, "score": None, "passed": None, "reason": str(number)}
    return {"name": name, "score": None, "passed": None, "reason": _text(value)}


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, default=str)
