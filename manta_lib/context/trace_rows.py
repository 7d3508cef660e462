"""A stored trace row (``TRACE_COLUMNS`` order) to its :class:`TraceRecord`, and the
positions of the row's fields a context reads without building the record."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from pydantic_core import from_json

from manta_lib.models import TRACE_COLUMNS, Phase, TraceRecord, fast_construct

PHASES = {phase.value: phase for phase in Phase}
TRACE_INDEX = {name: index for index, name in enumerate(TRACE_COLUMNS)}

_decode_json = json.JSONDecoder().decode


def decode_meta(text: str) -> Any:
    """A stored meta object (JSON we wrote), parsed by pydantic-core's JSON parser (about
    twice as fast as the standard library's per object); text it refuses (a lone surrogate,
    a number out of range) goes to the standard decoder, which decodes it or raises its
    usual error."""
    try:
        return from_json(text)
    except ValueError:
        return _decode_json(text)


def trace_from_row(row: Sequence[Any]) -> TraceRecord:
    """Build a TraceRecord from a row in ``TRACE_COLUMNS`` order without re-validation."""
    values = dict(zip(TRACE_COLUMNS, row, strict=True))
    values["phase"] = PHASES.get(values["phase"], values["phase"])
    meta = values["meta"]
    values["meta"] = decode_meta(meta) if meta else {}
    return fast_construct(TraceRecord, values)
