"""What ``pipeline.run()`` returns: a :class:`RunResult`, the outputs of every level.

It behaves like a ``dict[EntityLevel, list[MetadataOutput]]`` (index it by level, ``len``,
iterate). A run that does not persist (a subset) holds its outputs. A persisted run writes each
entity as it is computed and keeps none of them, so its memory does not grow with the run:
each level is read from ``entity_metadata`` only when asked for::

    result = pipeline.run("run_grpo_math_v1")
    result.counts()                        # {EntityLevel.TRACE: 1000000, ...}, no outputs read
    result.errors(EntityLevel.TRACE)       # [(error, traces, first trace id), ...]
    for output in result[EntityLevel.TRACE]:   # streamed, one block of rows in memory
        ...
    result.to_pandas(EntityLevel.STEP)     # the results table of that level
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, overload

from pydantic import BaseModel

from manta_lib.entities import MetadataOutput
from manta_lib.errors import PipelineDefinitionError
from manta_lib.models import EntityLevel
from manta_lib.settings import MantaSettings
from manta_lib.store.client import Store
from manta_lib.store.metadata import (
    count_entities,
    error_summary,
    iter_entities,
    outputs_from_stored,
)
from manta_lib.store.result_key import ResultKey

if TYPE_CHECKING:
    import pandas as pd


@dataclass(frozen=True)
class StoredRun:
    """Where a run's outputs are: the store, the results' key, each level's schema."""

    settings: MantaSettings
    key: ResultKey
    schemas: dict[EntityLevel, type[BaseModel]]

    def at(self, level: EntityLevel) -> ResultKey:
        """Where the outputs of ``level`` are stored."""
        return self.key.at(level)


class LevelOutputs(Sequence[MetadataOutput]):
    """The outputs of one level of a run: held in memory (a run that does not persist), or
    read from the store (a persisted run).

    For a persisted run, ``len()`` is the count taken when the run ended; iterating streams
    the level in the store's order (traces by id, other levels by step as a number, phase,
    datapoint) with one block of rows in memory. Indexing loads the whole level once (fine for
    the levels above traces; for millions of traces iterate).
    """

    def __init__(
        self,
        run: StoredRun | None,
        level: EntityLevel,
        count: int,
        loaded: list[MetadataOutput] | None = None,
    ) -> None:
        if run is None and loaded is None:
            raise ValueError("LevelOutputs needs a stored run or the outputs themselves")
        self._run = run
        self.level = level
        self._count = count
        self._loaded = loaded

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[MetadataOutput]:
        if self._loaded is not None:
            yield from self._loaded
            return
        run = self._stored()
        with Store.open(run.settings, ensure_schema=False) as store:
            for entity in iter_entities(store, run.at(self.level)):
                yield from self._outputs([entity])

    def _stored(self) -> StoredRun:
        assert self._run is not None  # set whenever the outputs are not held
        return self._run

    def _outputs(self, stored: Any) -> list[MetadataOutput]:
        run = self._stored()
        return outputs_from_stored(stored, run.at(self.level), run.schemas[self.level])

    def _all(self) -> list[MetadataOutput]:
        if self._loaded is None:
            run = self._stored()
            with Store.open(run.settings, ensure_schema=False) as store:
                outputs = self._outputs(iter_entities(store, run.at(self.level)))
            self._loaded = outputs
        return self._loaded

    @overload
    def __getitem__(self, index: int) -> MetadataOutput: ...

    @overload
    def __getitem__(self, index: slice) -> list[MetadataOutput]: ...

    def __getitem__(self, index: int | slice) -> MetadataOutput | list[MetadataOutput]:
        return self._all()[index]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, LevelOutputs | list | tuple):
            return list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        where = "stored" if self._run is not None else "in memory"
        return f"LevelOutputs({self.level.value}, {self._count} {where})"


class RunResult(Mapping[EntityLevel, LevelOutputs]):
    """The outputs of a run by level (see the module docstring): what ``pipeline.run()``
    returns, persisted or not.

    A persisted run's levels are read from the store on demand, and its counts and error
    summaries are computed in ClickHouse; a run that does not persist holds its outputs.
    """

    def __init__(
        self,
        run_id: str,
        judge_version: str,
        levels: dict[EntityLevel, LevelOutputs],
        counts: Mapping[EntityLevel, tuple[int, int]],
        stored: StoredRun | None = None,
    ) -> None:
        self._run_id = run_id
        self._judge_version = judge_version
        self._levels = levels
        self._counts = dict(counts)
        self._stored = stored

    @classmethod
    def from_store(cls, run: StoredRun, counts: Mapping[EntityLevel, tuple[int, int]]) -> RunResult:
        """A persisted run: each level read from the store when asked."""
        levels = {level: LevelOutputs(run, level, total) for level, (total, _) in counts.items()}
        return cls(run.key.run_id, run.key.versioned(), levels, counts, run)

    @classmethod
    def in_memory(
        cls, run_id: str, judge_version: str, outputs: Mapping[EntityLevel, list[MetadataOutput]]
    ) -> RunResult:
        """A run that does not persist: the outputs themselves."""
        levels = {
            level: LevelOutputs(None, level, len(outs), outs) for level, outs in outputs.items()
        }
        counts = {
            level: (len(outs), sum(1 for o in outs if o.error is not None))
            for level, outs in outputs.items()
        }
        return cls(run_id, judge_version, levels, counts)

    @property
    def run_id(self) -> str:
        return self._run_id

    @property
    def judge_version(self) -> str:
        return self._judge_version

    @property
    def persisted(self) -> bool:
        """Whether the outputs are in the store (else only in this object)."""
        return self._stored is not None

    def __getitem__(self, level: EntityLevel) -> LevelOutputs:
        return self._levels[level]

    def __iter__(self) -> Iterator[EntityLevel]:
        return iter(self._levels)

    def __len__(self) -> int:
        return len(self._levels)

    def counts(self) -> dict[EntityLevel, int]:
        """Entities per level (ok and failed)."""
        return {level: total for level, (total, _) in self._counts.items()}

    def failed(self) -> dict[EntityLevel, int]:
        """Failed entities per level."""
        return {level: failed for level, (_, failed) in self._counts.items()}

    def failed_counts(self) -> dict[EntityLevel, tuple[int, int]]:
        """``(entities, failed)`` per level."""
        return dict(self._counts)

    def errors(
        self, level: EntityLevel = EntityLevel.TRACE, *, limit: int = 20
    ) -> list[tuple[str, int, str]]:
        """``(error, entities, first entity id)`` per distinct error, most frequent first."""
        if self._stored is None:
            return _error_summary(self._levels.get(level, []), limit)
        with Store.open(self._stored.settings, ensure_schema=False) as store:
            return error_summary(store, self._stored.at(level), limit=limit)

    def to_pandas(
        self, level: EntityLevel | str = EntityLevel.TRACE, **kwargs: Any
    ) -> pd.DataFrame:
        """The level's results table for this run and version (as ``MantaService.results``;
        ``kwargs`` are its ``where``, ``columns`` and ``limit``). A persisted run only."""
        from manta_lib.results import ResultsQuery, results_frame

        if self._stored is None:
            raise PipelineDefinitionError(
                f"this run of {self._run_id} did not persist its results (a subset or "
                f"persist_results=False), so there is no results table to read; use its "
                f"outputs (result[EntityLevel.TRACE]) or run with persist_results=True"
            )
        key = self._stored.key
        with Store.open(self._stored.settings, ensure_schema=False) as store:
            query = ResultsQuery(
                key.judge, key.run_id, level, key.versioned(), project_id=key.project_id, **kwargs
            )
            return results_frame(store, query)

    def __repr__(self) -> str:
        body = ", ".join(f"{level.value}: {total}" for level, total in self.counts().items())
        return f"RunResult({self._run_id}, {body})"


def _error_summary(outputs: Iterable[MetadataOutput], limit: int) -> list[tuple[str, int, str]]:
    """:meth:`RunResult.errors` of outputs held in memory, in the store's order of ties."""
    found: dict[str, list[str]] = {}
    for output in outputs:
        if output.error:
            found.setdefault(output.error, []).append(output.entity_id)
    ranked = sorted(found.items(), key=lambda item: (-len(item[1]), item[0]))
    return [(error, len(ids), min(ids)) for error, ids in ranked[:limit]]


def stored_counts(
    store: Store, run: StoredRun, levels: Sequence[EntityLevel]
) -> dict[EntityLevel, tuple[int, int]]:
    """``(entities, failed)`` of each level as stored now."""
    return {level: count_entities(store, run.at(level)) for level in levels}
