"""What every importer shares: the hierarchy options, field paths, stable ids, plain values.

An importer turns its format into trace objects of the JSON Lines trace format (trace keys
plus ``spans``, see ``docs/import_format.md``) and hands them to the one validated loader,
:func:`manta_lib.ingest.load_records`. :class:`Hierarchy` holds the options that place a
trace in the Run > Step / Datapoint hierarchy; each format has defaults and the options
override them.
"""

from __future__ import annotations

import codecs
import dataclasses
import hashlib
import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel

from manta_lib.errors import ValidationError
from manta_lib.ingest.lines import LineProblems, decode_line, read_lines, source_of
from manta_lib.ingest.loader import SourceRecord
from manta_lib.llm.prices import estimate_cost
from manta_lib.models import Phase

MISSING: Any = object()
"""What :func:`field_path` returns for a path that is not there."""


_MAPPINGS = (dict, Mapping)  # dict first: isinstance checks it before the slower ABC


class Problems(Exception):
    """Raised by a mapper: the ``(field, reason)`` pairs that make a record unusable."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        super().__init__(problems)
        self.problems = problems


@dataclass(frozen=True)
class Hierarchy:
    """Where imported traces go: ``--run-id``, ``--phase``, ``--step``, ``--datapoint``,
    ``--score``, ``--project``.

    ``run_id``, ``phase`` and ``project`` are constants. ``step`` is an integer constant or a
    field path (``"metadata.step"``); ``datapoint`` and ``score`` are field paths. A field path
    names a value of the source record by dotted keys (``metadata.problem_id``); a key that
    itself holds dots (an OpenTelemetry attribute such as ``manta.step``) is looked up whole
    first. ``None`` keeps the format's default.
    """

    run_id: str | None = None
    phase: str | None = None
    step: int | str | None = None
    datapoint: str | None = None
    score: str | None = None
    project: str | None = None

    def __post_init__(self) -> None:
        if self.phase is not None and self.phase not in {p.value for p in Phase}:
            expected = ", ".join(p.value for p in Phase)
            raise ValidationError(f"--phase {self.phase!r} is not a phase (expected {expected})")
        if self.run_id is not None and not self.run_id:
            raise ValidationError("--run-id must not be empty")
        if isinstance(self.step, str):
            text = self.step.strip()
            if text.lstrip("-").isdigit():
                object.__setattr__(self, "step", int(text))
            elif not text:
                raise ValidationError("--step must be an integer or a field path, got ''")

    def step_value(self, record: Any, default: Any) -> Any:
        """The step: the constant, the value at the field path, or ``default``."""
        if self.step is None:
            return default
        if isinstance(self.step, int):
            return self.step
        return required_path(record, self.step, "--step")

    def path_value(self, record: Any, option: str, default: Any) -> Any:
        """The value at the field path of ``--datapoint`` / ``--score``, or ``default``."""
        path = getattr(self, option)
        if path is None:
            return default
        return required_path(record, path, f"--{option}")


class Importer(Protocol):
    """One input format: detect it, read its files, map records held in memory."""

    name: str

    def sniff(self, path: Path) -> bool:
        """True when the file's content looks like this format."""
        ...

    def read_file(self, path: Path, hierarchy: Hierarchy) -> Iterator[SourceRecord]:
        """The trace objects of one file (bad records carry their problems)."""
        ...

    def map_record(self, record: Any, hierarchy: Hierarchy) -> list[dict[str, Any]]:
        """The trace objects of one in-memory record; raises :class:`Problems`."""
        ...


def field_path(record: Any, path: str) -> Any:
    """The value at a dotted ``path`` of ``record`` (dicts, lists by index), or ``MISSING``."""
    if isinstance(record, _MAPPINGS) and path in record:
        return record[path]
    if "." not in path:
        return MISSING
    current = record
    parts = path.split(".")
    index = 0
    while index < len(parts):
        # The longest run of parts that is itself a key wins ("attributes.manta.step").
        for end in range(len(parts), index, -1):
            key = ".".join(parts[index:end])
            if isinstance(current, _MAPPINGS) and key in current:
                current = current[key]
                index = end
                break
            if end == index + 1 and isinstance(current, list) and key.lstrip("-").isdigit():
                position = int(key)
                if -len(current) <= position < len(current):
                    current = current[position]
                    index = end
                    break
                return MISSING
        else:
            return MISSING
    return current


def required_path(record: Any, path: str, option: str) -> Any:
    value = field_path(record, path)
    if value is MISSING or value is None:
        raise Problems([(path, f"missing (named by {option})")])
    return value


def stable_id(prefix: str, *parts: bytes | str) -> str:
    """A deterministic id from content, so importing the same input twice finds it present."""
    digest = hashlib.blake2b(digest_size=12)
    for part in parts:
        digest.update(part.encode() if isinstance(part, str) else part)
        digest.update(b"\0")
    return f"{prefix}{digest.hexdigest()}"


def plain(value: Any) -> Any:
    """Pydantic models and dataclasses as dicts (recursively), the rest unchanged."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", exclude_none=True)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, Mapping):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [plain(item) for item in value]
    return value


def first_json_line(path: Path, limit: int = 64 << 20) -> Any:
    """The first JSON object among the first 100 non-blank lines of a file, or ``None``.

    A line that does not parse (truncated, nested too deep, not an object) is passed over, so
    one bad first line does not hide the format of the rest; the importer then reports it.
    """
    with path.open("rb") as handle:
        for _ in range(100):
            line = handle.readline(limit)
            if not line:
                return None
            if line.strip():
                try:
                    value = decode_line(line.removeprefix(codecs.BOM_UTF8).rstrip(b"\r\n"))
                except LineProblems:
                    continue
                if isinstance(value, dict):
                    return value
    return None


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)


def score_number(value: Any, where: str) -> float | None:
    """A trace score: numbers as is, booleans as 1/0, ``None`` stays ``None``."""
    if value is None:
        return None
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    raise Problems([(where, f"expected a number or true/false for the score, got {value!r}")])


def no_run_id(where: str) -> Problems:
    return Problems(
        [("run_id", f"no run id: pass --run-id RUN (import_records(run_id=...)) or {where}")]
    )


def known_or_estimated_cost(
    given: float | None, model: str, input_tokens: int, output_tokens: int
) -> tuple[float | None, bool]:
    """``(cost, estimated)`` of one model call: the source's own cost when it has one; else the
    maintained price table's price of the call's model and tokens (``estimated``); else
    ``(None, False)``: unknown, never 0."""
    if given is not None:
        return float(given), False
    if not model or (not input_tokens and not output_tokens):
        return None, False
    for name in (model, model.rsplit("/", 1)[-1]):  # "openai/gpt-4o-mini" as Inspect names it
        priced = estimate_cost(name, input_tokens, output_tokens)
        if priced is not None:
            return priced, True
    return None, False


def total_cost(spans: list[dict[str, Any]]) -> tuple[float | None, bool]:
    """``(sum, estimated)`` of the spans' ``cost_usd``: None when one is unknown (a sum of
    the known ones would read as the whole), estimated when one was."""
    costs: list[Any] = [span.get("cost_usd") for span in spans]
    if not costs or any(cost is None for cost in costs):
        return None, False
    estimated = any(span.get("attributes", {}).get("cost_estimated") for span in spans)
    return float(sum(float(cost) for cost in costs)), estimated


def json_line_records(path: Path, convert: Callable[[Any, bytes], Any]) -> Iterator[SourceRecord]:
    """The records of a JSON Lines file, each line decoded and passed to ``convert``.

    The reader of ``import_jsonl``: stdin and pipes, byte-order marks, over-long lines and
    hostile lines (deep nesting, lone surrogates, NaN) are that line's errors, and so is a
    :class:`Problems` raised by ``convert(obj, raw_line)``.
    """
    source = source_of(path)
    for number, raw in read_lines(source, lambda _n: None):
        try:
            if isinstance(raw, LineProblems):
                raise raw
            obj = decode_line(raw)
        except LineProblems as exc:
            yield SourceRecord(source.name, number, None, tuple(exc.problems))
            continue
        try:
            yield SourceRecord(source.name, number, convert(obj, raw))
        except Problems as exc:
            yield SourceRecord(source.name, number, None, tuple(exc.problems))
