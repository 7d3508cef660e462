"""The results catalog: what reads learn about stored versions and columns without scanning the
results. It must stay true when results are written and deleted, and a catalog that went stale
behind Manta's back (results deleted by hand) must never show an empty table or count nothing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import BaseModel

from manta_lib.entities import MetadataOutput
from manta_lib.errors import QueryError
from manta_lib.kestrel import JudgeSpec, columns_from_schema, register_judge
from manta_lib.models import EntityLevel
from manta_lib.service import MantaService
from manta_lib.store import Store
from manta_lib.store.metadata import MetadataWriter
from manta_lib.store.trace_writes import delete_run

# Seeded stores or seconds per test: make test runs them, make check leaves them out.
pytestmark = pytest.mark.slow

T0 = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)


class Flag(BaseModel):
    flagged: int
    ratio: float


def _seed_traces(store: Store, run: str, n: int) -> None:
    store.command(
        "INSERT INTO {db}.traces (project_id, trace_id, run_id, step_number, phase, datapoint_id, "
        "status, cost_usd, duration_ms, turn_count, tokens_input, tokens_output, model_name, "
        "env_name, meta) SELECT 'prj', concat({r:String}, '_t', toString(number)), {r:String}, 0, "
        "'train', 'dp', 'completed', 0, 0, 0, 0, 0, '', '', '{}' FROM numbers({n:UInt64})",
        {"r": run, "n": n},
    )


def _write(store: Store, run: str, version: str, at: datetime, flagged: list[int]) -> None:
    writer = MetadataWriter(store, project_id="prj", judge="flag")
    writer.add(
        [
            MetadataOutput(
                entity_level=EntityLevel.TRACE,
                entity_id=f"{run}_t{i}",
                run_id=run,
                judge="flag",
                judge_version=version,
                output=Flag(flagged=value, ratio=0.5),
                computed_at=at,
                datapoint_id="dp",
                step_number=0,
            )
            for i, value in enumerate(flagged)
        ]
    )
    writer.flush()


def _catalog(store: Store) -> list[tuple]:
    return store.rows(
        "SELECT run_id, judge_version, column, groupUniqArrayArray(value_types) "
        "FROM {db}.entity_metadata_catalog GROUP BY run_id, judge_version, column "
        "ORDER BY run_id, judge_version, column"
    )


def test_writes_fill_the_catalog_and_deleting_a_run_clears_its_rows(store: Store) -> None:
    for run in ("r1", "r2"):
        _seed_traces(store, run, 3)
        _write(store, run, "v1", T0, [1, 0, 1])
    assert ("r1", "v1", "flagged", ["number"]) in _catalog(store)
    assert {row[0] for row in _catalog(store)} == {"r1", "r2"}

    delete_run(store, "r1")

    assert {row[0] for row in _catalog(store)} == {"r2"}
    svc = MantaService(store)
    with pytest.raises(QueryError, match="no results for run r1"):
        svc.results("flag", "r1")
    assert len(svc.results("flag", "r2")) == 3


def test_a_stale_catalog_is_recomputed_instead_of_reading_a_version_without_results(
    store: Store,
) -> None:
    _seed_traces(store, "r", 4)
    _write(store, "r", "v1", T0, [1, 1, 0, 0])
    _write(store, "r", "v2", T0 + timedelta(hours=1), [0, 0, 0, 1])
    svc = MantaService(store)
    assert set(svc.results("flag", "r").judge_version) == {"v2"}
    assert svc.count_traces("r", results="flag.flagged > 0") == 1

    # Results deleted behind Manta's back: the catalog still lists v2 as the latest version.
    store.command("DELETE FROM {db}.entity_metadata WHERE judge_version = 'v2'")
    assert ("r", "v2", "flagged", ["number"]) in _catalog(store)

    # Reads fall back to what is stored (v1), never an empty table or a count of zero.
    assert svc.count_traces("r", results="flag.flagged > 0") == 2
    frame = svc.results("flag", "r")
    assert set(frame.judge_version) == {"v1"} and list(frame.flagged) == [1, 1, 0, 0]
    assert {row[1] for row in _catalog(store)} == {"v1"}, "the catalog was recomputed"
    with pytest.raises(QueryError, match="v2"):
        svc.results("flag", "r", version="v2")


class Whole(BaseModel):
    pass_at_k: float
    attempts: int
    retries: int | None


def _write_whole(store: Store, judge: str, version: str) -> None:
    writer = MetadataWriter(store, project_id="prj", judge=judge)
    writer.add(
        [
            MetadataOutput(
                entity_level=EntityLevel.TRACE,
                entity_id=f"r_t{i}",
                run_id="r",
                judge=judge,
                judge_version=version,
                output=Whole(pass_at_k=1.0, attempts=i + 1, retries=None),
                computed_at=T0,
                datapoint_id="dp",
                step_number=0,
            )
            for i in range(3)
        ]
    )
    writer.flush()


def _register(store: Store, judge: str, version: str) -> None:
    spec = JudgeSpec(name=judge, version=version, levels=["trace"])
    columns = columns_from_schema(Whole, "trace")
    register_judge(spec, columns, project_id="prj", settings=store.settings, store=store)


def test_number_columns_take_int_or_float_from_the_registered_field(store: Store) -> None:
    _seed_traces(store, "r", 3)
    svc = MantaService(store)
    # Registered (the pipeline registers every run): a float field stays float even when every
    # value is whole, an int field is an integer column, also when all of its values are null.
    _write_whole(store, "scored", "v1")
    _register(store, "scored", "v1")
    frame = svc.results("scored", "r")
    assert str(frame.pass_at_k.dtype) == "float64" and list(frame.pass_at_k) == [1.0] * 3
    assert str(frame.attempts.dtype) == "Int64" and list(frame.attempts) == [1, 2, 3]
    assert str(frame.retries.dtype) == "Int64" and frame.retries.isna().all()
    arrow = svc.results_arrow("scored", "r")
    assert str(arrow.schema.field("pass_at_k").type) == "double"
    assert str(arrow.schema.field("attempts").type) == "int64"

    # Without a registration of the version read, the stored values decide.
    _write_whole(store, "unregistered", "v1")
    _write_whole(store, "moved_on", "v1")
    _register(store, "moved_on", "v2")
    for judge in ("unregistered", "moved_on"):
        frame = svc.results(judge, "r")
        assert str(frame.pass_at_k.dtype) == "Int64", judge
        assert str(frame.attempts.dtype) == "Int64", judge
