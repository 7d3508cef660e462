"""Import fuzzer: files of valid lines mixed with hostile mutations of them.

For every generated file: no exception escapes, exactly the good lines load (with their
spans), every bad line is reported at its line with its field and reason, nothing else is
reported, nothing is stored twice or without its trace, metacharacters read back byte-exact,
re-importing changes nothing, and ``strict`` stores nothing when a line is bad.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from manta_lib.ingest.loader import ImportReport, import_jsonl
from manta_lib.store import Store
from manta_lib.store.schema import ensure_schema
from tests.robustness.import_mutations import (
    MAX_RECORD_MB,
    MUTATIONS,
    Mutant,
    dumps,
    valid_trace,
)

# Seeded stores or seconds per test: make test runs them, make check leaves them out.
pytestmark = pytest.mark.slow

EXAMPLES = 20


def fresh_store(store: Store) -> Store:
    """A new database on the same connection (opening a connection costs more than a
    whole example)."""
    settings = store.settings.model_copy(update={"database": f"fz_{uuid.uuid4().hex[:12]}"})
    fresh = Store(store.client, settings)
    ensure_schema(fresh)
    return fresh


def table_state(store: Store) -> tuple[int, int, int, int, int]:
    """(traces, distinct trace ids, spans, distinct span keys, spans without a trace)."""
    traces = store.rows("SELECT count(), uniqExact(trace_id) FROM {db}.traces")[0]
    spans = store.rows("SELECT count(), uniqExact(trace_id, span_id) FROM {db}.spans")[0]
    orphans = store.rows(
        "SELECT count() FROM {db}.spans WHERE trace_id NOT IN (SELECT trace_id FROM {db}.traces)"
    )[0][0]
    return traces[0], traces[1], spans[0], spans[1], orphans


def check_errors(report: ImportReport, path: Path, lines: list[Mutant | None]) -> None:
    bad = {number: m for number, m in enumerate(lines, start=1) if m and m.expected}
    assert {e.line for e in report.errors} == set(bad), [str(e) for e in report.errors]
    for error in report.errors:
        assert error.path == str(path)
        assert str(error).startswith(f"{path}:{error.line}: ")
        assert "\n" not in str(error)
    for number, mutant in bad.items():
        assert mutant.expected is not None
        found = [e for e in report.errors if e.line == number]
        assert any(
            (mutant.expected.field is None or e.field == mutant.expected.field)
            and mutant.expected.reason in e.reason
            for e in found
        ), (mutant.kind, mutant.expected, [str(e) for e in found])


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_hostile_lines_never_cost_a_good_line(
    data: st.DataObject, store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MANTA_IMPORT_MAX_RECORD_MB", str(MAX_RECORD_MB))
    base = store
    count = data.draw(st.integers(min_value=3, max_value=12), label="lines")
    lines: list[Mutant | None] = []
    raws: list[bytes] = []
    for index in range(count):
        obj = valid_trace(f"t{index}")
        if data.draw(st.booleans(), label=f"mutate {index}"):
            mutation = data.draw(st.sampled_from(MUTATIONS), label=f"mutation {index}")
            mutant = mutation(obj, data.draw)
            lines.append(mutant)
            raws.append(mutant.raw)
        else:
            lines.append(None)
            raws.append(dumps(obj))
    path = tmp_path / f"fuzz_{uuid.uuid4().hex[:8]}.jsonl"
    path.write_bytes(b"\n".join(raws) + b"\n")
    good = [i for i, m in enumerate(lines) if m is None or m.expected is None]

    store = fresh_store(base)
    report = import_jsonl([path], store=store, batch_size=data.draw(st.sampled_from([3, 1000])))

    check_errors(report, path, lines)
    assert (report.traces_loaded, report.spans_loaded) == (len(good), 2 * len(good))
    expected_state = (len(good), len(good), 2 * len(good), 2 * len(good), 0)
    assert table_state(store) == expected_state
    stored = dict(store.rows("SELECT trace_id, datapoint_id FROM {db}.traces"))
    assert sorted(stored) == sorted(f"t{i}" for i in good)
    for index in good:
        line = json.loads(raws[index])
        assert stored[f"t{index}"] == line["datapoint_id"]  # byte-exact
        content = store.rows(
            "SELECT content FROM {db}.spans WHERE trace_id = {t:String} AND seq = 0",
            {"t": f"t{index}"},
        )
        assert content == [(line["spans"][0]["content"],)]

    again = import_jsonl([path], store=store)

    assert (again.traces_loaded, again.spans_loaded) == (0, 0)
    assert again.traces_already_present == len(good)
    assert [str(e) for e in again.errors] == [str(e) for e in report.errors]
    assert table_state(store) == expected_state

    if report.errors:
        store = fresh_store(base)
        strict = import_jsonl([path], store=store, strict=True)
        assert strict.traces_loaded == 0 and len(strict.errors) == len(report.errors)
        assert table_state(store) == (0, 0, 0, 0, 0)
