"""Import fuzzer of the other formats: OpenAI rollout lines (a hostile line anywhere, the first
included), OTLP JSON requests with overflowing numbers, and Inspect ``.eval`` files with a
damaged, bomb or too-deep sample, mixed with good files. Whatever the mix: no exception
escapes, every good record loads, every bad one is an error at its place."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from manta_lib import import_files
from manta_lib.store import Store
from tests.lib.importers.otlp_builders import genai_agent_trace, request
from tests.robustness.hostile_files import (
    GOOD_EVALS,
    LOGS,
    bomb_second,
    corrupt_member,
    deep_second,
    rewrite_eval,
    two_samples,
)
from tests.robustness.test_import_fuzz import fresh_store

# Seeded stores or seconds per test: make test runs them, make check leaves them out.
pytestmark = pytest.mark.slow

MAX_MB = 1
GOOD = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]


def rollout(name: str) -> bytes:
    return json.dumps({"messages": GOOD, "id": name, "run_id": "r"}).encode()


def openai_line(kind: str, name: str) -> bytes:
    good = rollout(name)
    if kind == "deep":
        depth = 3000
        return good[:-1] + b', "x": ' + b"{" * depth + b"}" * depth + b"}"
    if kind == "truncated":
        return good[: len(good) // 2]
    if kind == "oversized":
        return good[:-1] + b', "pad": "' + b"x" * (MAX_MB << 20) + b'"}'
    if kind == "not an object":
        return b"[1, 2]"
    return good


def otlp_line(kind: str, trace: int) -> bytes:
    text = json.dumps(request(genai_agent_trace(trace)))
    if kind == "overflow time":
        text = text.replace('"startTimeUnixNano": "', '"startTimeUnixNano": 1e400, "x": "', 1)
    elif kind == "overflow int":
        text = text.replace('"intValue": "', '"intValue": -1e999, "x": "', 1)
    return text.encode()


LINE_KINDS = ["good", "good", "deep", "truncated", "oversized", "not an object"]
OTLP_KINDS = ["good", "good", "overflow time", "overflow int"]


@settings(
    max_examples=12,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_hostile_rollout_and_otlp_lines_cost_no_good_line(
    data: st.DataObject, store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MANTA_IMPORT_MAX_RECORD_MB", str(MAX_MB))
    kinds = data.draw(st.lists(st.sampled_from(LINE_KINDS), min_size=2, max_size=6), label="oa")
    if all(kind != "good" for kind in kinds):
        kinds.append("good")  # a file with no good line cannot be detected as rollouts
    otlp = data.draw(st.lists(st.sampled_from(OTLP_KINDS), min_size=2, max_size=5), label="ot")
    tag = uuid.uuid4().hex[:8]
    rollouts = tmp_path / f"rollouts_{tag}.jsonl"
    rollouts.write_bytes(b"\n".join(openai_line(k, f"oa{i}") for i, k in enumerate(kinds)))
    export = tmp_path / f"export_{tag}.jsonl"
    export.write_bytes(b"\n".join(otlp_line(k, i + 1) for i, k in enumerate(otlp)) + b"\n")
    fresh = fresh_store(store)

    report = import_files([rollouts, export], store=fresh, run_id="fz")

    bad_oa = [i + 1 for i, k in enumerate(kinds) if k != "good"]
    bad_ot = [i + 1 for i, k in enumerate(otlp) if k != "good"]
    assert sorted((e.path, e.line) for e in report.errors) == sorted(
        [(str(rollouts), n) for n in bad_oa] + [(str(export), n) for n in bad_ot]
    )
    good_traces = kinds.count("good") + otlp.count("good")
    assert report.traces_loaded == good_traces
    stored = {row[0] for row in fresh.rows("SELECT trace_id FROM {db}.traces")}
    assert {f"oa{i}" for i, k in enumerate(kinds) if k == "good"} <= stored


EVAL_KINDS = ["good", "corrupt", "deep", "bomb"]


@pytest.mark.slow
@settings(
    max_examples=3,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(kinds=st.lists(st.sampled_from(EVAL_KINDS), min_size=3, max_size=3))
def test_hostile_eval_files_cost_only_their_bad_sample(
    kinds: list[str], store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MANTA_IMPORT_MAX_RECORD_MB", "8")
    files: list[Path] = []
    for index, kind in enumerate(kinds):
        source = LOGS / GOOD_EVALS[index]
        target = tmp_path / f"{uuid.uuid4().hex[:8]}_{kind}.eval"
        edit = {"good": two_samples, "corrupt": two_samples, "deep": deep_second}.get(
            kind, bomb_second
        )
        rewrite_eval(source, target, edit)
        if kind == "corrupt":
            corrupt_member(target)
        files.append(target)
    fresh = fresh_store(store)

    report = import_files(files, store=fresh, run_id="fz")

    bad = [str(f) for f, k in zip(files, kinds, strict=True) if k != "good"]
    assert sorted((e.path, e.line, e.field) for e in report.errors) == sorted(
        (path, 2, "samples[1]") for path in bad
    )
    # every good sample: two per good file, the first of each hostile one
    assert report.traces_loaded == 2 * kinds.count("good") + len(bad)
