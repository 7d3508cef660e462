"""Which stored results a read or a write is about: one typed value instead of five strings.

Results in ``entity_metadata`` are identified by the project, the run, the judge (the
pipeline's slug), the entity level and the judge version. :class:`ResultKey` carries the five
together, from the pipeline that computes them (``PipelineDefinition.result_key``) down to the
SQL that reads them (:meth:`ResultKey.where`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from manta_lib.models import EntityLevel


@dataclass(frozen=True, slots=True)
class ResultKey:
    """The identity of stored results: ``(project_id, run_id, judge, level, judge_version)``.

    ``judge_version`` ``None`` means "any version" where a read allows it (the newest
    version of each entity, ``where(any_version=True)``); reads that count or resume need a
    version (:meth:`versioned`).
    """

    project_id: str
    run_id: str
    judge: str
    level: EntityLevel = EntityLevel.TRACE
    judge_version: str | None = None

    def at(self, level: EntityLevel) -> ResultKey:
        """The same results one level up or down the hierarchy."""
        return dataclasses.replace(self, level=level)

    def versioned(self) -> str:
        """The judge version, for the reads that are about exactly one version."""
        if self.judge_version is None:
            raise ValueError(
                f"results of {self.judge} on {self.run_id} ({self.level.value}): this read "
                f"needs a judge_version"
            )
        return self.judge_version

    def where(
        self, entity_ids: Sequence[str] | None = None, *, any_version: bool = False
    ) -> tuple[str, dict[str, Any]]:
        """``(condition, parameters)`` selecting the key's rows of ``entity_metadata``: of its
        version (raising :class:`ValueError` when it has none), or of every version with
        ``any_version``; of ``entity_ids`` if given."""
        version = None if any_version else self.versioned()
        params: dict[str, Any] = {
            "project": self.project_id,
            "run": self.run_id,
            "judge": self.judge,
            "level": self.level.value,
        }
        where = (
            "project_id = {project:String} AND run_id = {run:String} "
            "AND judge = {judge:String} AND entity_level = {level:String}"
        )
        if version is not None:
            params["version"] = version
            where += " AND judge_version = {version:String}"
        if entity_ids is not None:
            params["ids"] = list(entity_ids)
            where += " AND entity_id IN {ids:Array(String)}"
        return where, params
