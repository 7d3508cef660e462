"""Full-text search over what a trace's spans say: the ``text=`` trace filter.

A search phrase matches a span whose ``content`` (messages, grader feedback, system events),
``tool_arguments`` or ``tool_result`` contains it, ignoring case (Unicode lower case on both
sides); a trace matches when one of its spans does. The phrase is literal: spaces,
punctuation, ``%`` and ``_`` mean themselves and a word may be part of a longer one
(``zero`` finds ``ZeroDivisionError``). Several phrases must all occur in the trace, each in
any of its spans.

The condition is written over :data:`~manta_lib.store.schema.SPAN_TEXT_EXPR`, the expression
the spans table's n-gram bloom-filter index is built on (schema version 5), so ClickHouse
reads only the granules whose filter admits every 4-gram of the phrase, then checks the
phrase itself on those rows: the index only skips, the ``LIKE`` decides, so results equal a
full scan's. A phrase of fewer than 4 characters has no 4-gram and scans the spans.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from manta_lib.errors import QueryError
from manta_lib.store import query_args as args
from manta_lib.store.client import Store
from manta_lib.store.schema import SPAN_TEXT_EXPR

#: The columns a search looks in, in the order the indexed expression joins them.
SEARCHED_COLUMNS = ("content", "tool_arguments", "tool_result")

#: Longest phrase accepted (a search box is not a document store).
MAX_PHRASE_CHARS = 1000


def phrases(value: str | Sequence[str] | None) -> list[str] | None:
    """The checked search phrases (``None``: no search)."""
    if value is None:
        return None
    found = args.strings("text", value)
    if not found:
        raise QueryError("text needs at least one phrase, got an empty list")
    for phrase in found:
        if not phrase.strip():
            raise QueryError(
                f"text {phrase!r} is blank: give a phrase to search for, or leave text out"
            )
        if "\x00" in phrase:
            raise QueryError(f"text {phrase!r} contains a NUL character, which no text can match")
        if len(phrase) > MAX_PHRASE_CHARS:
            raise QueryError(
                f"text is {len(phrase):,} characters long: a search phrase has at most "
                f"{MAX_PHRASE_CHARS:,}"
            )
    return found


def like_pattern(phrase: str) -> str:
    """``%phrase%`` with ``LIKE``'s special characters escaped (they are ASCII, so lowering
    the pattern in ClickHouse afterwards keeps the escapes)."""
    escaped = phrase.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def span_match(index: int, phrase: str, params: dict[str, Any]) -> str:
    """The condition on a ``spans`` row: its searched text contains ``phrase``, any case."""
    name = f"f_text{index}"
    params[name] = like_pattern(phrase)
    return f"{SPAN_TEXT_EXPR} LIKE lowerUTF8({{{name}:String}})"


def trace_clause(found: Sequence[str], run_clause: str | None, params: dict[str, Any]) -> str:
    """The condition on a ``traces`` row: every phrase occurs in one of its spans.

    ``run_clause`` (the run filter, already bound in ``params``) narrows each span scan
    through the spans table's sort key.
    """
    scope = f"{run_clause} AND " if run_clause else ""
    clauses = [
        f"(run_id, trace_id) IN (SELECT run_id, trace_id FROM {{db}}.spans "
        f"WHERE {scope}{span_match(index, phrase, params)})"
        for index, phrase in enumerate(found)
    ]
    return " AND ".join(clauses)


@dataclass(frozen=True)
class SpanHit:
    """Where a phrase first occurs in one trace: the span and a window of text around it."""

    run_id: str
    trace_id: str
    span_id: str
    seq: int
    kind: str
    label: str  # the span's role, tool or name
    field: str  # content, tool_arguments or tool_result
    snippet: str  # the match with up to ``context`` characters either side
    cut_before: bool
    cut_after: bool


#: Characters of context a snippet keeps on each side of the match.
SNIPPET_CONTEXT = 60


def first_hits(
    store: Store, phrase: str, keys: Sequence[tuple[str, str]], context: int = SNIPPET_CONTEXT
) -> dict[tuple[str, str], SpanHit]:
    """``{(run_id, trace_id): hit}``: the first span (by ``seq``) of each of the given traces
    that contains ``phrase``, with a snippet, in one query. Traces without a match are left
    out. Only windows of the texts travel, never a whole (possibly huge) tool result."""
    if not keys:
        return {}
    params: dict[str, Any] = {
        "h_runs": sorted({run for run, _ in keys}),
        "h_keys": [tuple(key) for key in keys],
        "h_needle": phrase,
        "h_context": args.integer("context", context, low=0, high=10_000),
    }
    match = span_match(0, phrase, params)
    window = (
        "substringUTF8({col}, greatest(toInt64(at) - {{h_context:Int64}}, 1), "
        "least(toInt64(at) - 1, {{h_context:Int64}}) + lengthUTF8(n) + {{h_context:Int64}})"
    )
    rows = store.rows(
        f"""
        WITH lowerUTF8({{h_needle:String}}) AS n,
             positionUTF8(lowerUTF8(content), n) AS in_content,
             positionUTF8(lowerUTF8(tool_arguments), n) AS in_arguments,
             positionUTF8(lowerUTF8(tool_result), n) AS in_result,
             multiIf(in_content > 0, 'content', in_arguments > 0, 'tool_arguments',
                     'tool_result') AS field,
             multiIf(in_content > 0, in_content, in_arguments > 0, in_arguments,
                     in_result) AS at,
             multiIf(in_content > 0, content, in_arguments > 0, tool_arguments,
                     tool_result) AS hit_text
        SELECT run_id, trace_id, span_id, seq, kind,
               multiIf(kind = 'tool', toString(tool_name), role != '', toString(role), name),
               field, {window.format(col="hit_text")}, at > {{h_context:Int64}} + 1,
               toInt64(at) - 1 + lengthUTF8(n) + {{h_context:Int64}} < lengthUTF8(hit_text)
        FROM {{db}}.spans
        WHERE run_id IN {{h_runs:Array(String)}}
          AND (run_id, trace_id) IN {{h_keys:Array(Tuple(String, String))}}
          AND {match}
        ORDER BY run_id, trace_id, seq, span_id
        LIMIT 1 BY run_id, trace_id
        """,
        params,
    )
    return {
        (row[0], row[1]): SpanHit(
            row[0],
            row[1],
            row[2],
            int(row[3]),
            str(row[4]),
            str(row[5]),
            str(row[6]),
            str(row[7]),
            bool(row[8]),
            bool(row[9]),
        )  # fmt: skip
        for row in rows
    }
