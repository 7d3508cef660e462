"""What ``pipeline.run()`` returns for a persisted run: the outputs, read from the store on demand.

A persisted run writes each entity as it is computed and keeps none of them, so its memory
does not grow with the run. :class:`RunResult` behaves like the
``dict[EntityLevel, list[MetadataOutput]]`` a subset run returns (index it by level, ``len``,
iterate), but each level is read from ``entity_metadata`` only when asked for::

    result = pipeline.run("run_grpo_math_v1")
    result.counts()                        # {EntityLevel.TRACE: 1000000, ...}, no outputs read
    result.errors(EntityLevel.TRACE)       # [(error, traces, first trace id), ...]
    for output in result[EntityLevel.TRACE]:   # streamed, one block of rows in memory
        ...
    result.to_pandas(EntityLevel.STEP)     # the results table of that level
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, overload

from pydantic import BaseModel

from manta_lib.entities import MetadataOutput
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
    """The outputs of one level of a persisted run, read from the store.

    ``len()`` is the count taken when the run ended; iterating streams the level in the
    store's order (traces by id, other levels by step as a number, phase, datapoint) with one
    block of rows in memory. Indexing loads
    the whole level once (fine for the levels above traces; for millions of traces iterate).
    """

    def __init__(self, run: StoredRun, level: EntityLevel, count: int) -> None:
        self._run = run
        self.level = level
        self._count = count
        self._loaded: list[MetadataOutput] | None = None

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[MetadataOutput]:
        if self._loaded is not None:
            yield from self._loaded
            return
        with Store.open(self._run.settings, ensure_schema=False) as store:
            for entity in iter_entities(store, self._run.at(self.level)):
                yield from self._outputs([entity])

    def _outputs(self, stored: Any) -> list[MetadataOutput]:
        return outputs_from_stored(stored, self._run.at(self.level), self._run.schemas[self.level])

    def _all(self) -> list[MetadataOutput]:
        if self._loaded is None:
            with Store.open(self._run.settings, ensure_schema=False) as store:
                outputs = self._outputs(iter_entities(store, self._run.at(self.level)))
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
        return f"LevelOutputs({self.level.value}, {self._count} stored)"


class RunResult(Mapping[EntityLevel, LevelOutputs]):
    """The outputs of a persisted run by level, read from the store on demand (see the module
    docstring). Counts and error summaries are computed in ClickHouse."""

    def __init__(self, run: StoredRun, counts: Mapping[EntityLevel, tuple[int, int]]) -> None:
        self._run = run
        self._counts = dict(counts)
        self._levels = {
            level: LevelOutputs(run, level, total) for level, (total, _) in counts.items()
        }

    @property
    def run_id(self) -> str:
        return self._run.key.run_id

    @property
    def judge_version(self) -> str:
        return self._run.key.versioned()

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
        with Store.open(self._run.settings, ensure_schema=False) as store:
            return error_summary(store, self._run.at(level), limit=limit)

    def to_pandas(
        self, level: EntityLevel | str = EntityLevel.TRACE, **kwargs: Any
    ) -> pd.DataFrame:
        """The level's results table for this run and version (as ``MantaService.results``;
        ``kwargs`` are its ``where``, ``columns`` and ``limit``)."""
        from manta_lib.results import results_frame

        with Store.open(self._run.settings, ensure_schema=False) as store:
            return results_frame(
                store,
                self._run.key.judge,
                self._run.key.run_id,
                level=level,
                version=self._run.key.versioned(),
                project_id=self._run.key.project_id,
                **kwargs,
            )

    def __repr__(self) -> str:
        body = ", ".join(f"{level.value}: {total}" for level, total in self.counts().items())
        return f"RunResult({self._run.key.run_id}, {body})"


def stored_counts(
    store: Store, run: StoredRun, levels: Sequence[EntityLevel]
) -> dict[EntityLevel, tuple[int, int]]:
    """``(entities, failed)`` of each level as stored now."""
    return {level: count_entities(store, run.at(level)) for level in levels}
