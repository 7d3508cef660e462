"""Deterministic synthetic RL runs for demos, tests and benchmarks (``manta demo seed``).

Four runs of project ``prj_demo``: three GRPO training runs (train steps with periodic eval
phases) and one eval-only baseline. Each train step samples datapoints from a pool (so a
datapoint recurs at several steps) and rolls each one out K times (a GRPO group). A rollout is
a multi-turn tool-use conversation laid out as ``docs/span_conventions.md`` says: system setup,
system prompt, user prompt, 2-5 turns of (llm call, assistant message, tool call, tool
message), a grader span with criteria, a system teardown; some tool calls fail, about 3% of
the traces end in an error and 2% in a timeout (no grader, no score). Scores rise with the
step in training runs.

Everything derives from the seed and counters (ids, timestamps from a fixed base date), so the
same seed gives identical rows. Rows are generated as plain tuples without pydantic and
written as Arrow tables, the next batch generated on a thread while the store writes the last:
a million traces (about 20 million spans) take minutes, not hours.

Example::

    from manta import open_store, seed_demo

    with open_store() as store:
        print(seed_demo(store, traces=10_000))
"""

from __future__ import annotations

import functools
import json
import logging
import math
import random
import sys
import time
from collections.abc import Generator, Iterator, Sequence
from contextlib import ExitStack, closing, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from manta_lib.errors import MantaError
from manta_lib.gc_pacing import relaxed_gc
from manta_lib.models import SPAN_COLUMNS, TRACE_COLUMNS
from manta_lib.read_ahead import read_ahead
from manta_lib.store import Store
from manta_lib.store.trace_writes import (
    demo_trace_counts,
    hold_sigint,
    stored_trace_summaries,
    write_new_trace_tables,
    write_trace_batch,
)

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger(__name__)

__all__ = [
    "DEMO_PROJECT_ID",
    "DEMO_RUN_IDS",
    "DemoBatch",
    "DemoInterrupted",
    "DemoSummary",
    "MAX_DEMO_TRACES",
    "generate_demo",
    "generate_demo_tables",
    "seed_demo",
]

DEMO_PROJECT_ID = "prj_demo"
MAX_DEMO_TRACES = 20_000_000  # about 400 M spans: beyond that a seed runs for hours
_BASE_MS = int(datetime(2025, 1, 6, tzinfo=UTC).timestamp()) * 1000
_STEP_MS = 15 * 60 * 1000
_RUN_OFFSET_MS = 3 * 24 * 3600 * 1000
_GROUP_SIZE = 8  # K rollouts per datapoint at a train step (a GRPO group)
_EVAL_GROUP_SIZE = 4
_ERROR_RATE = 0.03
_TIMEOUT_RATE = 0.02
_TOOL_ERROR_RATE = 0.08
_TIMEOUT_LIMIT_MS = 600_000


@dataclass(frozen=True)
class _RunSpec:
    run_id: str
    env_name: str
    model_name: str
    weight: float  # share of the requested traces
    trains: bool  # False: an eval-only run
    base_skill: float
    gain: float  # skill added from the first to the last train step
    price_in: float  # USD per input token
    price_out: float  # USD per output token


_RUNS: tuple[_RunSpec, ...] = (
    _RunSpec("run_grpo_math_v1", "math", "qwen2.5-7b-instruct", 0.35, True, 0.25, 0.40, 2e-7, 6e-7),
    _RunSpec(
        "run_grpo_math_v2", "math", "qwen2.5-14b-instruct", 0.30, True, 0.40, 0.35, 4e-7, 1.2e-6
    ),
    _RunSpec(
        "run_grpo_code_v1", "code", "llama-3.1-8b-instruct", 0.25, True, 0.20, 0.35, 2e-7, 6e-7
    ),
    _RunSpec(
        "run_eval_gpt4o_mini_math", "math", "gpt-4o-mini", 0.10, False, 0.55, 0.0, 1.5e-7, 6e-7
    ),
)
DEMO_RUN_IDS: tuple[str, ...] = tuple(spec.run_id for spec in _RUNS)

_GRADER_MODEL = "gpt-4o-mini"
_GRADER_PRICE = (1.5e-7, 6e-7)


@dataclass
class DemoBatch:
    """Column-oriented rows ready for ``Store.insert_columns`` (keys: TRACE/SPAN_COLUMNS)."""

    traces: dict[str, Sequence[Any]]
    spans: dict[str, Sequence[Any]]

    @property
    def trace_count(self) -> int:
        return len(self.traces["trace_id"]) if self.traces else 0

    @property
    def span_count(self) -> int:
        return len(self.spans["trace_id"]) if self.spans else 0


@dataclass
class DemoSummary:
    """What :func:`seed_demo` wrote (nothing when ``skipped``)."""

    runs: list[str] = field(default_factory=list)
    traces: int = 0
    spans: int = 0
    seconds: float = 0.0
    skipped: bool = False
    message: str = ""
    already_stored: int = 0  # traces a resumed seed found stored and skipped


def generate_demo(
    *,
    traces: int = 10_000,
    seed: int = 7,
    runs: Sequence[str] | None = None,
    batch_traces: int = 5_000,
) -> Iterator[DemoBatch]:
    """Yield the demo data as column batches of about ``batch_traces`` traces each.

    ``traces`` is the exact number of traces over all runs (steps and datapoints scale with
    it); ``runs`` restricts the output to some of :data:`DEMO_RUN_IDS`. Deterministic: the
    same arguments always yield the same rows.

    Example::

        for batch in generate_demo(traces=1_000, seed=1):
            store.insert_columns("spans", batch.spans)
            store.insert_columns("traces", batch.traces)
    """
    for rows in _row_batches(traces, seed, runs, batch_traces):
        yield rows.columns()


def generate_demo_tables(
    *,
    traces: int = 10_000,
    seed: int = 7,
    runs: Sequence[str] | None = None,
    batch_traces: int = 5_000,
) -> Iterator[tuple[pa.Table, pa.Table]]:
    """The rows of :func:`generate_demo` as Arrow tables ``(traces, spans)`` for
    ``Store.insert_arrow``: the next batch is generated in a background thread while the
    caller inserts this one (an insert runs in the store's C++ code, without the GIL), and
    rows become columns in C rather than value by value in Python.

    Example::

        for trace_table, span_table in generate_demo_tables(traces=100_000, seed=1):
            store.insert_arrow("spans", span_table)
            store.insert_arrow("traces", trace_table)
    """
    with closing(_ready_batches(traces, seed, runs, batch_traces)) as batches:
        for _, tables in batches:
            yield tables


@dataclass
class _Rows:
    """One batch as generated: row tuples in TRACE/SPAN_COLUMNS order."""

    trace_rows: list[tuple[Any, ...]]
    span_rows: list[tuple[Any, ...]]

    def columns(self) -> DemoBatch:
        return DemoBatch(
            _columns(TRACE_COLUMNS, self.trace_rows), _columns(SPAN_COLUMNS, self.span_rows)
        )

    def tables(self) -> tuple[pa.Table, pa.Table]:
        return _table(self.trace_rows, _trace_schema()), _table(self.span_rows, _span_schema())


def _row_batches(
    traces: int, seed: int, runs: Sequence[str] | None, batch_traces: int
) -> Iterator[_Rows]:
    if traces < 1:
        raise MantaError(f"the demo needs at least 1 trace, got traces={traces}")
    specs = _select_runs(runs)
    quotas = _split_quota(traces, [spec.weight for spec in specs])
    gen = _Generator(seed)
    for spec, quota in zip(specs, quotas, strict=True):
        if quota == 0:
            continue
        run_index = DEMO_RUN_IDS.index(spec.run_id)
        rng = random.Random(f"manta-demo:{seed}:{spec.run_id}")
        for group in _schedule(spec, quota, rng):
            for rollout in range(group.size):
                gen.trace(spec, run_index, group, rollout, rng)
            if len(gen.trace_rows) >= batch_traces:
                yield gen.take()
    if gen.trace_rows:
        yield gen.take()


def _ready_batches(
    traces: int, seed: int, runs: Sequence[str] | None, batch_traces: int
) -> Generator[tuple[_Rows, tuple[pa.Table, pa.Table]]]:
    """Each batch's rows with their Arrow tables, both made in a background thread."""
    batches = _row_batches(traces, seed, runs, batch_traces)
    return read_ahead(((rows, rows.tables()) for rows in batches), name="manta-demo-rows")


def seed_demo(
    store: Store,
    *,
    traces: int = 10_000,
    seed: int = 7,
    if_empty: bool = False,
    batch_traces: int = 5_000,
    progress: bool | None = None,
) -> DemoSummary:
    """Write the demo runs into ``store`` and say how many rows and how long it took.

    Resumable: a seed that was killed or interrupted is completed by running it again with
    the same ``traces`` and ``seed`` (rows already stored are skipped, none is written twice);
    when everything is stored already, nothing is written (``skipped``). Demo rows from other
    arguments are an error (they would mix two datasets in the same runs): drop them with
    ``manta runs-delete`` or use a fresh database (``MANTA_DATABASE``). With
    ``if_empty=True`` nothing is written when the store holds any trace that this seed would
    not write, and never an error for that. ``progress`` draws a progress bar on stderr
    (default: when stderr is a terminal); Ctrl-C raises :class:`DemoInterrupted`.

    Example::

        with open_store() as store:
            summary = seed_demo(store, traces=50_000, seed=3)
            print(summary.traces, summary.spans, summary.seconds)
    """
    started = time.perf_counter()
    if not 1 <= traces <= MAX_DEMO_TRACES:
        raise MantaError(
            f"--traces must be between 1 and {MAX_DEMO_TRACES:,} (about 20 spans each), "
            f"got {traces:,}"
        )
    total, demo, same_seed = demo_trace_counts(store, DEMO_PROJECT_ID, f"tr_{seed}_")
    others = total - same_seed
    if if_empty and others:
        return _skipped(
            f"the traces table already has {others:,} rows that this demo seed would not "
            f"write: nothing seeded",
            started,
        )
    if demo > same_seed:
        raise MantaError(
            f"database {store.database!r} already holds {demo - same_seed:,} demo traces "
            f"(project {DEMO_PROJECT_ID}) written with another --seed; seeding seed {seed} "
            f"would mix two datasets in the same runs. Drop them with `manta runs-delete RUN "
            f"--yes` for each demo run, use --if-empty to keep them, or set MANTA_DATABASE to a "
            f"fresh database."
        )
    conflict = _other_arguments_message(store, same_seed, traces, seed)
    if same_seed > traces:
        return _conflict(conflict, if_empty, started)
    summary = DemoSummary()
    resume = same_seed > 0  # a partial (or complete) seed with these arguments
    run_ids: set[str] = set()
    try:
        with _progress(progress, traces) as advance, relaxed_gc(), ExitStack() as stack:
            # Closed here, not when collected: its thread must stop before Python exits.
            batches = stack.enter_context(closing(_ready_batches(traces, seed, None, batch_traces)))
            for rows, (trace_table, span_table) in batches:
                batch = rows.columns() if resume else None
                if batch is not None and not _matches_store(store, batch):
                    return _conflict(conflict, if_empty, started)
                with hold_sigint():  # a Ctrl-C during the write is raised once counted
                    if batch is not None:
                        done = write_trace_batch(store, batch.traces, batch.spans)
                    else:
                        done = write_new_trace_tables(store, trace_table, span_table)
                    summary.traces += done.traces_written
                    summary.spans += done.spans_written
                    summary.already_stored += done.traces_present
                # Batches are written in order: after one whose traces were all new, so are
                # the following ones (no need to look them up).
                resume = resume and done.traces_present > 0
                run_ids.update(trace_table.column("run_id").unique().to_pylist())
                advance(trace_table.num_rows)
    except KeyboardInterrupt:
        summary.seconds = time.perf_counter() - started
        raise DemoInterrupted(summary) from None
    summary.runs = [run_id for run_id in DEMO_RUN_IDS if run_id in run_ids]
    summary.seconds = time.perf_counter() - started
    if summary.traces == 0:
        summary.skipped = True
        summary.message = (
            f"all {summary.already_stored:,} demo traces of seed {seed} are already stored: "
            f"nothing seeded"
        )
        return summary
    summary.message = (
        f"seeded {len(summary.runs)} runs, {summary.traces:,} traces and {summary.spans:,} spans "
        f"in {summary.seconds:.1f} s"
    )
    if summary.already_stored:
        summary.message += f" (resumed: {summary.already_stored:,} traces were already stored)"
    log.debug("demo: %s", summary.message)
    return summary


class DemoInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped :func:`seed_demo` between two batches; :attr:`summary` says what was
    written. Running the same seed again completes it."""

    def __init__(self, summary: DemoSummary) -> None:
        self.summary = summary
        super().__init__(self.message())

    def message(self) -> str:
        return (
            f"interrupted: {self.summary.traces:,} demo traces and {self.summary.spans:,} spans "
            f"were written (whole batches only); run the same command again to resume"
        )


def _skipped(message: str, started: float) -> DemoSummary:
    return DemoSummary(skipped=True, message=message, seconds=time.perf_counter() - started)


def _other_arguments_message(store: Store, stored: int, traces: int, seed: int) -> str:
    return (
        f"database {store.database!r} holds {stored:,} demo traces of seed {seed} written with "
        f"another --traces than {traces:,}, so they cannot be completed. Re-run with the "
        f"earlier --traces, drop the demo runs (`manta runs-delete RUN --yes`), use --if-empty "
        f"to keep them, or set MANTA_DATABASE to a fresh database."
    )


def _conflict(message: str, if_empty: bool, started: float) -> DemoSummary:
    if if_empty:
        return _skipped(f"{message.split(', so')[0]}: nothing seeded", started)
    raise MantaError(message)


def _matches_store(store: Store, batch: DemoBatch) -> bool:
    """True when the batch's stored traces are the ones it would write (same arguments)."""
    trace_ids = batch.traces["trace_id"]
    stored = stored_trace_summaries(store, trace_ids, batch.traces["run_id"])
    if not stored:
        return True
    runs, steps, datapoints = (
        batch.traces["run_id"],
        batch.traces["step_number"],
        batch.traces["datapoint_id"],
    )
    return all(
        stored.get(trace_id, (run, step, dp)) == (run, step, dp)
        for trace_id, run, step, dp in zip(trace_ids, runs, steps, datapoints, strict=True)
    )


@contextmanager
def _progress(enabled: bool | None, total: int) -> Iterator[Any]:
    """Yield ``advance(n_traces)``; a rich progress bar on stderr when enabled."""
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        yield lambda _n: None
        return
    columns = (
        TextColumn("[bold]seeding"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("seeding", total=total)
        yield lambda n: bar.advance(task, n)


# ---- the plan: runs -> steps -> datapoint groups ----------------------------------------


@dataclass(frozen=True)
class _Group:
    step: int
    phase: str
    datapoint_id: str
    difficulty: float
    skill: float
    size: int


def _select_runs(runs: Sequence[str] | None) -> list[_RunSpec]:
    if runs is None:
        return list(_RUNS)
    unknown = sorted(set(runs) - set(DEMO_RUN_IDS))
    if unknown:
        raise MantaError(
            f"unknown demo run(s) {', '.join(unknown)} (expected some of: "
            f"{', '.join(DEMO_RUN_IDS)})"
        )
    return [spec for spec in _RUNS if spec.run_id in runs]


def _split_quota(total: int, weights: list[float]) -> list[int]:
    """Split ``total`` by ``weights`` into integers that sum to ``total`` exactly."""
    scale = sum(weights)
    quotas = [int(total * w / scale) for w in weights]
    for index in range(total - sum(quotas)):
        quotas[index % len(quotas)] += 1
    return quotas


def _schedule(spec: _RunSpec, quota: int, rng: random.Random) -> Iterator[_Group]:
    """Datapoint groups of one run in time order, ``quota`` rollouts in all (the last group
    may be cut short)."""
    groups = _train_schedule(spec, quota, rng) if spec.trains else _eval_only_schedule(spec, quota)
    remaining = quota
    for group in groups:
        if remaining <= 0:
            return
        if group.size > remaining:
            group = _Group(
                group.step,
                group.phase,
                group.datapoint_id,
                group.difficulty,
                group.skill,
                remaining,
            )
        remaining -= group.size
        yield group


def _train_schedule(spec: _RunSpec, quota: int, rng: random.Random) -> Iterator[_Group]:
    steps = max(3, round(math.sqrt(quota / _GROUP_SIZE)))
    per_step = max(1, math.ceil(quota * 0.85 / (_GROUP_SIZE * steps)))
    pool = max(per_step + 1, 2 * per_step)  # every datapoint recurs at about steps/2 steps
    eval_every = max(1, steps // 5)
    eval_steps = {s for s in range(steps) if s % eval_every == 0} | {steps - 1}
    eval_size = max(1, math.ceil(quota * 0.15 / (_EVAL_GROUP_SIZE * len(eval_steps))))
    train_difficulty = _difficulties(spec.env_name, "train", pool)
    eval_difficulty = _difficulties(spec.env_name, "eval", eval_size)
    step = 0
    while True:  # past the planned steps only if rounding left the quota unfilled
        progress = min(1.0, step / max(1, steps - 1))
        skill = spec.base_skill + spec.gain * progress
        for index in sorted(rng.sample(range(pool), per_step)):
            yield _Group(
                step, "train", f"dp_{index:05d}", train_difficulty[index], skill, _GROUP_SIZE
            )
        if step in eval_steps:
            for index in range(eval_size):
                yield _Group(
                    step,
                    "eval",
                    f"dp_eval_{index:05d}",
                    eval_difficulty[index],
                    skill,
                    _EVAL_GROUP_SIZE,
                )
        step += 1


def _eval_only_schedule(spec: _RunSpec, quota: int) -> Iterator[_Group]:
    checkpoints = 3  # the same eval set evaluated at three checkpoints of a fixed model
    eval_size = max(1, math.ceil(quota / (_EVAL_GROUP_SIZE * checkpoints)))
    difficulty = _difficulties(spec.env_name, "eval", eval_size)
    step = 0
    while True:
        for index in range(eval_size):
            yield _Group(
                step,
                "eval",
                f"dp_eval_{index:05d}",
                difficulty[index],
                spec.base_skill,
                _EVAL_GROUP_SIZE,
            )
        step += 1


def _difficulties(env_name: str, split: str, count: int) -> list[float]:
    """A fixed difficulty per datapoint (independent of the seed: the dataset is fixed)."""
    rng = random.Random(f"manta-demo-dataset:{env_name}:{split}")
    return [rng.betavariate(2.0, 2.0) for _ in range(count)]


# ---- one rollout -> one trace row and its span rows --------------------------------------


class _Generator:
    """Appends trace rows and span rows (tuples in TRACE/SPAN_COLUMNS order)."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.counter = 0
        self.trace_rows: list[tuple[Any, ...]] = []
        self.span_rows: list[tuple[Any, ...]] = []

    def take(self) -> _Rows:
        batch = _Rows(self.trace_rows, self.span_rows)
        self.trace_rows, self.span_rows = [], []
        return batch

    # fmt: off
    # (one tuple literal per span row: the hot loop of the generator, kept compact)
    def trace(
        self, spec: _RunSpec, run_index: int, group: _Group, rollout: int, rng: random.Random
    ) -> None:
        rand = rng.random
        env = _ENVS[spec.env_name]
        self.counter += 1
        trace_id = f"tr_{self.seed}_{run_index}_{self.counter:08d}"
        run_id = spec.run_id
        model = spec.model_name
        add = self.span_rows.append
        start = (
            _BASE_MS
            + run_index * _RUN_OFFSET_MS
            + group.step * _STEP_MS
            + int(rand() * _STEP_MS * 0.8)
        )
        clock = start
        seq = 0
        cost = 0.0
        tokens_in = 0
        tokens_out = 0

        fate = rand()
        status = (
            "error" if fate < _ERROR_RATE else "timeout" if fate < _ERROR_RATE + _TIMEOUT_RATE
            else "completed"
        )
        turns = 2 + int(rand() * 4)
        stop_turn = int(rand() * turns) if status != "completed" else turns

        # setup, system prompt, user prompt
        took = 200 + int(rand() * 1800)
        add((trace_id, run_id, f"{trace_id}.{seq}", "", seq, "system", "setup", "",
             env.setup_content, "", "", "", False, "", 0, 0, 0.0, clock, clock + took,
             env.setup_attributes))
        clock += took
        seq += 1
        add((trace_id, run_id, f"{trace_id}.{seq}", "", seq, "message", "", "system",
             env.system_prompt, "", "", "", False, "", 0, 0, 0.0, clock, clock, "{}"))
        seq += 1
        add((trace_id, run_id, f"{trace_id}.{seq}", "", seq, "message", "", "user",
             env.prompt(group.datapoint_id), "", "", "", False, "", 0, 0, 0.0, clock, clock,
             "{}"))
        seq += 1

        context_tokens = 250 + int(rand() * 400)
        turns_done = 0
        tool_errors = 0
        for turn in range(stop_turn):
            final = turn == turns - 1
            out = 40 + int(rand() * 360)
            call_cost = context_tokens * spec.price_in + out * spec.price_out
            took = 300 + out * (8 + int(rand() * 12))
            add((trace_id, run_id, f"{trace_id}.{seq}", "", seq, "llm", "chat.completions", "",
                 "", "", "", "", False, model, context_tokens, out, call_cost, clock,
                 clock + took, f'{{"finish_reason":"tool_calls","turn":{turn}}}'))
            seq += 1
            clock += took
            tokens_in += context_tokens
            tokens_out += out
            cost += call_cost
            context_tokens += out

            calls = 1 if final or rand() >= 0.15 else 2
            tools = ["submit"] if final else [env.pick_tool(rand()) for _ in range(calls)]
            call_ids = [f"call_{self.counter:x}_{turn}_{n}" for n in range(len(tools))]
            assistant_id = f"{trace_id}.{seq}"
            text = env.final_text[int(rand() * len(env.final_text))] if final else (
                env.turn_text[tools[0]][int(rand() * len(env.turn_text[tools[0]]))]
            )
            add((trace_id, run_id, assistant_id, "", seq, "message", "", "assistant", text, "",
                 "", "", False, "", 0, 0, 0.0, clock, clock,
                 '{"tool_call_ids":["' + '","'.join(call_ids) + '"]}'))
            seq += 1
            for tool, call_id in zip(tools, call_ids, strict=True):
                arguments, result = env.call(tool, rand())
                is_error = tool != "submit" and rand() < _TOOL_ERROR_RATE
                if is_error:
                    error_type, result = env.failure(tool, rand())
                    attributes = f'{{"call_id":"{call_id}","error_type":"{error_type}"}}'
                    tool_errors += 1
                else:
                    attributes = f'{{"call_id":"{call_id}"}}'
                took = 20 + int(rand() * env.tool_ms[tool])
                add((trace_id, run_id, f"{trace_id}.{seq}", assistant_id, seq, "tool", tool, "",
                     "", tool, arguments, result, is_error, "", 0, 0, 0.0, clock, clock + took,
                     attributes))
                seq += 1
                clock += took
                add((trace_id, run_id, f"{trace_id}.{seq}", "", seq, "message", tool, "tool",
                     result, "", "", "", False, "", 0, 0, 0.0, clock, clock,
                     f'{{"tool_call_id":"{call_id}"}}'))
                seq += 1
                context_tokens += 30 + len(result) // 4
            turns_done += 1

        score: float | None = None
        if status == "completed":
            score, grade_cost, grade_in, grade_out, took = self._grade(
                env, trace_id, run_id, seq, clock, group, tool_errors, rand
            )
            seq += 1
            clock += took
            cost += grade_cost
            tokens_in += grade_in
            tokens_out += grade_out
        elif status == "timeout":
            clock = max(clock, start + _TIMEOUT_LIMIT_MS)
            add((trace_id, run_id, f"{trace_id}.{seq}", "", seq, "system", "timeout", "",
                 "episode exceeded its 600 s wall-clock limit and was stopped", "", "", "",
                 True, "", 0, 0, 0.0, clock, clock, '{"limit_s":600}'))
            seq += 1
        else:
            error_type, message = _EPISODE_ERRORS[int(rand() * len(_EPISODE_ERRORS))]
            add((trace_id, run_id, f"{trace_id}.{seq}", "", seq, "system", "error", "",
                 message, "", "", "", True, "", 0, 0, 0.0, clock, clock,
                 f'{{"error_type":"{error_type}"}}'))
            seq += 1
        took = 50 + int(rand() * 400)
        add((trace_id, run_id, f"{trace_id}.{seq}", "", seq, "system", "teardown", "",
             "sandbox released", "", "", "", False, "", 0, 0, 0.0, clock, clock + took, "{}"))
        clock += took

        eval_phase = group.phase == "eval"
        meta = (
            f'{{"temperature":{0.6 if eval_phase else 1.0},"seed":{int(rand() * 2**31)},'
            f'"group_id":"{run_id}/{group.step}/{group.datapoint_id}","rollout_index":{rollout},'
            f'"policy_version":{group.step}}}'
        )
        self.trace_rows.append((
            DEMO_PROJECT_ID, trace_id, run_id, group.step, group.phase, group.datapoint_id,
            score, status, cost, clock - start, turns_done, tokens_in, tokens_out, model,
            spec.env_name, meta, start,
        ))
    # fmt: on

    def _grade(
        self,
        env: _Env,
        trace_id: str,
        run_id: str,
        seq: int,
        clock: int,
        group: _Group,
        tool_errors: int,
        rand: Any,
    ) -> tuple[float, float, int, int, int]:
        """Append the grader span; return (score, cost, tokens in, tokens out, duration)."""
        noise = (rand() + rand() - 1.0) * 0.25
        chance = min(0.97, max(0.03, group.skill + 0.45 - group.difficulty * 0.8 + noise))
        chance = max(0.03, chance - 0.05 * tool_errors)
        if env.name == "code":
            passed_tests = sum(rand() < chance for _ in range(10))
            style = round(0.5 + rand() * 0.5, 3)
            score = round(0.8 * passed_tests / 10 + 0.2 * style, 4)
            passed = passed_tests == 10
            criteria = [
                {
                    "name": "unit_tests",
                    "score": passed_tests / 10,
                    "passed": passed,
                    "reason": f"{passed_tests}/10 hidden tests pass",
                },
                {
                    "name": "style",
                    "score": style,
                    "passed": style >= 0.7,
                    "reason": "ruff clean" if style >= 0.7 else "long functions, unused names",
                },
            ]
            feedback = f"{passed_tests} of 10 tests pass."
            attributes = {"score": score, "passed": passed, "criteria": criteria, "messages": []}
            took = 1500 + int(rand() * 6000)
            row = (trace_id, run_id, f"{trace_id}.{seq}", "", seq, "grader", "unit_tests", "",
                   feedback, "", "", "", False, "", 0, 0, 0.0, clock, clock + took,
                   json.dumps(attributes))  # fmt: skip
            self.span_rows.append(row)
            return score, 0.0, 0, 0, took
        correct = rand() < chance
        reasoning = round(min(1.0, max(0.0, group.skill + 0.2 + (rand() - 0.5) * 0.5)), 3)
        formatted = rand() < 0.92
        score = round(0.7 * correct + 0.2 * reasoning + 0.1 * formatted, 4)
        verdict = "equivalent" if correct else "not equivalent"
        feedback = (
            f"The submitted answer is {verdict} to the reference; "
            f"reasoning quality {reasoning:.2f}."
        )
        criteria = [
            {
                "name": "correctness",
                "score": 1.0 if correct else 0.0,
                "passed": correct,
                "reason": f"final answer {verdict} to the reference",
            },
            {
                "name": "reasoning",
                "score": reasoning,
                "passed": reasoning >= 0.5,
                "reason": "steps justified" if reasoning >= 0.5 else "unjustified leaps",
            },
            {
                "name": "format",
                "score": 1.0 if formatted else 0.0,
                "passed": formatted,
                "reason": "answer given via submit" if formatted else "answer not simplified",
            },
        ]
        messages = [
            {"role": "system", "content": "You grade math answers against a reference."},
            {"role": "user", "content": f"Reference and submission for {group.datapoint_id}."},
            {"role": "assistant", "content": feedback},
        ]
        tokens_in = 400 + int(rand() * 300)
        tokens_out = 60 + int(rand() * 80)
        cost = tokens_in * _GRADER_PRICE[0] + tokens_out * _GRADER_PRICE[1]
        took = 600 + int(rand() * 2400)
        attributes = {"score": score, "passed": correct, "criteria": criteria, "messages": messages}
        self.span_rows.append((
            trace_id, run_id, f"{trace_id}.{seq}", "", seq, "grader", "math_equivalence", "",
            feedback, "", "", "", False, _GRADER_MODEL, tokens_in, tokens_out, cost, clock,
            clock + took, json.dumps(attributes),
        ))  # fmt: skip
        return score, cost, tokens_in, tokens_out, took


def _columns(names: tuple[str, ...], rows: list[tuple[Any, ...]]) -> dict[str, Sequence[Any]]:
    if not rows:
        return {}
    return dict(zip(names, zip(*rows, strict=True), strict=True))


def _table(rows: list[tuple[Any, ...]], schema: pa.Schema) -> pa.Table:
    """Row tuples -> an Arrow table in one pass in C (the tuples as a struct array)."""
    import pyarrow as pa

    return pa.Table.from_struct_array(pa.array(rows, type=pa.struct(schema)))


def _arrow_schema(names: tuple[str, ...], types: dict[str, str]) -> pa.Schema:
    """Strings unless ``types`` says otherwise (the types the store's columns take)."""
    import pyarrow as pa

    kinds = {
        "int": pa.int64(),
        "float": pa.float64(),
        "bool": pa.bool_(),
        "ms": pa.timestamp("ms", tz="UTC"),
    }
    return pa.schema(
        [(name, kinds[types[name]] if name in types else pa.string()) for name in names]
    )


@functools.cache
def _trace_schema() -> pa.Schema:
    ints = ("step_number", "duration_ms", "turn_count", "tokens_input", "tokens_output")
    types = {name: "int" for name in ints} | {
        "score": "float",
        "cost_usd": "float",
        "created_at": "ms",
    }
    return _arrow_schema(TRACE_COLUMNS, types)


@functools.cache
def _span_schema() -> pa.Schema:
    types = {name: "int" for name in ("seq", "tokens_input", "tokens_output")} | {
        "is_error": "bool",
        "cost_usd": "float",
        "started_at": "ms",
        "ended_at": "ms",
    }
    return _arrow_schema(SPAN_COLUMNS, types)


# ---- the environments: text pools, tools and their failures -------------------------------


_EPISODE_ERRORS = (
    ("sandbox_crash", "sandbox crashed: process killed (out of memory)"),
    ("model_server_error", "model server returned HTTP 503 three times in a row"),
    ("env_exception", "environment raised RuntimeError: reference answer missing"),
)


@dataclass
class _Env:
    name: str
    system_prompt: str
    setup_content: str
    setup_attributes: str
    prompt_template: str
    tool_weights: tuple[tuple[str, float], ...]
    turn_text: dict[str, tuple[str, ...]]
    final_text: tuple[str, ...]
    arguments: dict[str, tuple[str, ...]]
    results: dict[str, tuple[str, ...]]
    failures: dict[str, tuple[tuple[str, str], ...]]
    tool_ms: dict[str, int]
    _prompts: dict[str, str] = field(default_factory=dict)

    def pick_tool(self, draw: float) -> str:
        for tool, cumulative in self.tool_weights:
            if draw < cumulative:
                return tool
        return self.tool_weights[-1][0]

    def prompt(self, datapoint_id: str) -> str:
        text = self._prompts.get(datapoint_id)
        if text is None:
            number = int(datapoint_id.rsplit("_", 1)[1])
            text = self.prompt_template.format(
                dp=datapoint_id, a=17 + number % 83, b=3 + number % 11, c=2 + number % 7
            )
            self._prompts[datapoint_id] = text
        return text

    def call(self, tool: str, draw: float) -> tuple[str, str]:
        arguments, results = self.arguments[tool], self.results[tool]
        index = int(draw * len(arguments))
        return arguments[index], results[index % len(results)]

    def failure(self, tool: str, draw: float) -> tuple[str, str]:
        options = self.failures[tool]
        return options[int(draw * len(options))]


def _args(key: str, values: Sequence[str]) -> tuple[str, ...]:
    return tuple(json.dumps({key: value}) for value in values)


_FAILURES: dict[str, tuple[tuple[str, str], ...]] = {
    "python": (
        (
            "runtime_error",
            'Traceback (most recent call last):\n  File "<stdin>", line 3, in <module>\n'
            "ZeroDivisionError: division by zero",
        ),
        ("timeout", "execution timed out after 30 s"),
    ),
    "search": (
        ("rate_limited", "429 Too Many Requests: retry after 2 s"),
        ("timeout", "search backend did not answer within 10 s"),
    ),
    "read_file": (
        ("not_found", "FileNotFoundError: [Errno 2] No such file or directory: 'data/input.txt'"),
        ("permission_denied", "PermissionError: [Errno 13] Permission denied: '/etc/shadow'"),
    ),
}

_ENVS: dict[str, _Env] = {
    "math": _Env(
        name="math",
        system_prompt=(
            "You are a careful competition-math assistant. Use the tools to check your work "
            "and call submit with the final answer only."
        ),
        setup_content="math sandbox ready (python 3.11, sympy 1.13)",
        setup_attributes='{"image":"manta/math-sandbox:1.4","cpu":1}',
        prompt_template=(
            "[{dp}] Find the sum of all positive integers n <= {a} such that n^2 + {b} is "
            "divisible by {c}."
        ),
        tool_weights=(("python", 0.6), ("search", 0.9), ("read_file", 1.0)),
        turn_text={
            "python": (
                "Let me enumerate the candidates with a quick script.",
                "I'll verify the modular condition in Python before going further.",
                "Computing the sum directly to double-check my algebra.",
            ),
            "search": (
                "I recall an identity for quadratic residues; let me look it up.",
                "Searching for the divisibility criterion to be sure.",
            ),
            "read_file": ("The problem mentions a data file; let me read it.",),
        },
        final_text=(
            "The enumeration and the algebra agree, so I'll submit.",
            "Both methods give the same value; submitting the answer.",
            "I'm confident in this result.",
        ),
        arguments={
            "python": _args(
                "code",
                (
                    "print(sum(n for n in range(1, 101) if (n*n + 5) % 3 == 0))",
                    "import sympy as sp\nprint(sp.factorint(2024))",
                    "print([n for n in range(1, 50) if (n**2 + 7) % 4 == 0])",
                ),
            ),
            "search": _args(
                "query",
                ("quadratic residues modulo small primes", "sum of arithmetic progression"),
            ),
            "read_file": _args("path", ("data/problem_notes.txt",)),
            "submit": _args("answer", ("1683", "42", "612", "2550", "7")),
        },
        results={
            "python": ("1683", "{2: 3, 11: 1, 23: 1}", "[1, 3, 5, 7, 9, 11]"),
            "search": (
                "A quadratic residue q mod p satisfies x^2 = q (mod p) for some x ...",
                "The sum of an arithmetic progression is n(a1 + an)/2.",
            ),
            "read_file": ("Note: n ranges over positive integers only.",),
            "submit": ("answer recorded",),
        },
        failures=_FAILURES,
        tool_ms={"python": 2500, "search": 1200, "read_file": 80, "submit": 30},
    ),
    "code": _Env(
        name="code",
        system_prompt=(
            "You are a software engineer in a sandbox. Read the task files, run code, and call "
            "submit with your final solution."
        ),
        setup_content="code sandbox ready (repo checked out, pytest available)",
        setup_attributes='{"image":"manta/code-sandbox:2.1","cpu":2}',
        prompt_template=(
            "[{dp}] Implement `solve(xs)` in solution.py: return the length of the longest "
            "run of values divisible by {c} in xs (at most {a} elements). Hidden tests "
            "check {b} edge cases."
        ),
        tool_weights=(("python", 0.55), ("read_file", 0.9), ("search", 1.0)),
        turn_text={
            "python": (
                "Let me run the tests on my draft.",
                "I'll try the edge cases in the interpreter.",
            ),
            "read_file": (
                "First I'll read the existing solution stub.",
                "Checking the README for the expected signature.",
            ),
            "search": ("Looking up the itertools.groupby semantics.",),
        },
        final_text=(
            "All visible tests pass; submitting the solution.",
            "The implementation handles the empty list too. Submitting.",
        ),
        arguments={
            "python": _args(
                "code",
                (
                    "import subprocess; print(subprocess.run(['pytest', '-q']).returncode)",
                    "from solution import solve; print(solve([3, 6, 1, 9, 12, 15]))",
                ),
            ),
            "read_file": _args("path", ("solution.py", "README.md", "tests/x.py")),
            "search": _args("query", ("itertools groupby consecutive runs",)),
            "submit": _args(
                "answer",
                (
                    "def solve(xs, k=3):\n    best = run = 0\n    for x in xs:\n"
                    "        run = run + 1 if x % k == 0 else 0\n        best = max(best, run)\n"
                    "    return best\n",
                ),
            ),
        },
        results={
            "python": ("4 passed, 1 failed in 0.12s", "3"),
            "read_file": (
                "def solve(xs):\n    raise NotImplementedError\n",
                "# Task\nImplement solve(xs) ...",
                "def test_empty():\n    assert solve([]) == 0\n",
            ),
            "search": ("groupby(iterable, key) makes an iterator of consecutive keys ...",),
            "submit": ("solution recorded",),
        },
        failures=_FAILURES,
        tool_ms={"python": 4000, "search": 1200, "read_file": 60, "submit": 30},
    ),
}
