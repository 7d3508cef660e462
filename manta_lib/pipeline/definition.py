"""What a pipeline is: its levels (a map per trace, reduces above), its id and its version.

This module only describes a pipeline; running one is :mod:`manta_lib.pipeline.run`'s job,
and :class:`~manta_lib.pipeline.computation.MapReduceComputation` adds ``run()`` on top.
"""

from __future__ import annotations

import importlib.metadata
import inspect
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Self

from pydantic import BaseModel

from manta_lib.errors import PipelineDefinitionError
from manta_lib.models import EntityLevel
from manta_lib.pipeline.versioning import (
    changed_functions,
    compute_version,
    git_label,
    version_source,
)
from manta_lib.store.result_key import ResultKey


@dataclass(frozen=True)
class LevelSpec:
    """One level of a pipeline: its entity type, compute function and output schema."""

    level: EntityLevel
    fn: Callable[..., Any]
    schema: type[BaseModel]
    uses_llm: bool = False
    description: str = ""

    @property
    def is_map(self) -> bool:
        return self.level is EntityLevel.TRACE


def judge_slug(name: str) -> str:
    """The judge id derived from a pipeline name: ``"Tool errors v2"`` → ``tool_errors_v2``."""
    slug = re.sub(r"[^0-9a-zA-Z]+", "_", name).strip("_").lower()
    if not slug:
        raise PipelineDefinitionError(
            f"pipeline name {name!r} must contain at least one letter or digit"
        )
    return slug


def _positional_arity(fn: Callable[..., Any]) -> tuple[int, int, bool]:
    """(required positional params, max positional params, has *args)."""
    signature = inspect.signature(fn)
    required = maximum = 0
    star = False
    for param in signature.parameters.values():
        if param.kind in (param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD):
            maximum += 1
            if param.default is param.empty:
                required += 1
        elif param.kind is param.VAR_POSITIONAL:
            star = True
        elif param.kind is param.KEYWORD_ONLY and param.default is param.empty:
            raise PipelineDefinitionError(
                f"{_fn_name(fn)} has a required keyword-only parameter {param.name!r}; "
                f"level functions are called with positional arguments only"
            )
    return required, maximum, star


def _fn_name(fn: Callable[..., Any]) -> str:
    return getattr(fn, "__qualname__", None) or repr(fn)


def _check_arity(fn: Callable[..., Any], expected: int, shape: str) -> None:
    try:
        required, maximum, star = _positional_arity(fn)
    except (TypeError, ValueError):
        return  # builtins without a signature: trust the caller
    if required > expected or (maximum < expected and not star):
        raise PipelineDefinitionError(
            f"{_fn_name(fn)} takes {required} required positional argument(s) but a "
            f"{shape} is called with {expected}; define it as {_SIGNATURES[expected]}"
        )


_SIGNATURES = {
    1: "def map_fn(trace: TraceContext) -> OutputSchema",
    2: "def reduce_fn(entity: EntityRef, children: list[ChildSchema]) -> OutputSchema",
}


#: Default thread pool sizes: CPU-bound map functions gain little from more threads than
#: cores, LLM calls wait on the network so many can be in flight.
CPU_MAX_WORKERS = 4
LLM_MAX_WORKERS = 32


class PipelineDefinition:
    """A map function per trace, reduce functions up the hierarchy, and their output schemas.

    Args:
        name: human-readable name; the judge id is its slug (``"Tool errors"`` →
            ``tool_errors``).
        project_id: the project the results belong to (``prj_xxx``).
        pip_install: extra packages the functions need (checked importable in local mode,
            installed into the image in Modal mode).
        description: shown in Kestrel and Dagster.
        version: an optional manual version string mixed into the judge version.
        version_label: a readable name for this version (``"stricter rubric"``), stored and
            shown beside the hash; without it the label is made from the git commit of the
            judge's file and the level functions changed since the previous version.
    """

    def __init__(
        self,
        name: str,
        project_id: str = "",
        pip_install: Sequence[str] = (),
        *,
        description: str = "",
        version: str | None = None,
        version_label: str | None = None,
    ) -> None:
        if not isinstance(name, str) or not name.strip():
            raise PipelineDefinitionError("a MapReduceComputation needs a non-empty name")
        self.name = name
        self.judge = judge_slug(name)
        self.project_id = project_id
        self.pip_install = list(pip_install)
        self.description = description
        self.manual_version = version
        self.version_label = version_label
        self.levels: list[LevelSpec] = []

    def __repr__(self) -> str:
        levels = " -> ".join(spec.level.value for spec in self.levels)
        return f"{type(self).__name__}({self.name!r}, levels=[{levels}])"

    def add_level(
        self,
        level: EntityLevel | str,
        fn: Callable[..., Any],
        schema: type[BaseModel],
        uses_llm: bool = False,
        *,
        description: str = "",
    ) -> Self:
        """Add a level; returns ``self`` so calls chain.

        The first level must be ``EntityLevel.TRACE`` with ``map_fn(trace) -> schema``; later
        levels increase (DATAPOINT < STEP < RUN, any may be skipped) with
        ``reduce_fn(entity, children) -> schema``.
        """
        try:
            level = EntityLevel(level)
        except ValueError:
            valid = ", ".join(f"EntityLevel.{m.name}" for m in EntityLevel)
            raise PipelineDefinitionError(
                f"level {level!r} is not an entity level (expected one of: {valid})"
            ) from None
        if not (isinstance(schema, type) and issubclass(schema, BaseModel)):
            raise PipelineDefinitionError(
                f"the output schema of the {level.value} level must be a pydantic BaseModel "
                f"subclass, got {schema!r}"
            )
        if not callable(fn):
            raise PipelineDefinitionError(
                f"the function of the {level.value} level must be callable, got {fn!r}"
            )
        if not self.levels and level is not EntityLevel.TRACE:
            raise PipelineDefinitionError(
                f"the first level must be EntityLevel.TRACE (a map function per trace), got "
                f"EntityLevel.{level.name}"
            )
        if any(spec.level is level for spec in self.levels):
            raise PipelineDefinitionError(
                f"EntityLevel.{level.name} was already added; each level can be added once"
            )
        if self.levels and {level, self.levels[-1].level} == {
            EntityLevel.STEP,
            EntityLevel.DATAPOINT_ACROSS_STEPS,
        }:
            raise PipelineDefinitionError(
                f"EntityLevel.{level.name} cannot follow EntityLevel.{self.levels[-1].level.name}: "
                f"a step's value must come only from that step's traces, and a datapoint across "
                f"steps mixes every step. Feed STEP from DATAPOINT (one datapoint at one step) "
                f"and compute the across-steps view in a second pipeline"
            )
        if self.levels and level.rank <= self.levels[-1].level.rank:
            order = "TRACE < DATAPOINT < STEP or DATAPOINT_ACROSS_STEPS < RUN"
            raise PipelineDefinitionError(
                f"levels must be added in increasing order ({order}): "
                f"EntityLevel.{level.name} cannot follow EntityLevel.{self.levels[-1].level.name}"
            )
        if level is EntityLevel.TRACE:
            _check_arity(fn, 1, "map function")
        else:
            _check_arity(fn, 2, "reduce function")
        self.levels.append(LevelSpec(level, fn, schema, uses_llm, description))
        return self

    @property
    def uses_llm(self) -> bool:
        return any(spec.uses_llm for spec in self.levels)

    @property
    def default_max_workers(self) -> int:
        """Threads of the map when none are given: more when a level waits on an LLM."""
        return LLM_MAX_WORKERS if self.uses_llm else CPU_MAX_WORKERS

    @property
    def judge_version(self) -> str:
        """Hash of the functions' source (and their modules), the schemas and ``version``."""
        self.require_levels()
        return compute_version(
            ((s.level.value, s.fn, s.schema) for s in self.levels), self.manual_version
        )

    def result_key(
        self,
        run_id: str,
        level: EntityLevel = EntityLevel.TRACE,
        *,
        judge_version: str | None = None,
    ) -> ResultKey:
        """Where this pipeline's results of ``level`` on ``run_id`` are stored: of its current
        :attr:`judge_version` unless another is given."""
        return ResultKey(
            project_id=self.project_id,
            run_id=run_id,
            judge=self.judge,
            level=level,
            judge_version=judge_version or self.judge_version,
        )

    @property
    def version_source(self) -> str:
        """The source :attr:`judge_version` hashes, readable (kept to diff two versions)."""
        self.require_levels()
        return version_source(
            ((s.level.value, s.fn, s.schema) for s in self.levels), self.manual_version
        )

    def readable_label(self, previous_source: str | None) -> str:
        """``version_label``, else the git commit of the judge's file and the functions
        changed since ``previous_source`` (the previous version's), joined by `` · ``."""
        if self.version_label:
            return self.version_label
        parts = [label for label in (git_label(self.levels[0].fn),) if label]
        if previous_source is not None:
            changed = changed_functions(previous_source, self.version_source)
            if changed:
                parts.append("changed " + ", ".join(changed))
        return " · ".join(parts)

    def level(self, level: EntityLevel) -> LevelSpec:
        for spec in self.levels:
            if spec.level is level:
                return spec
        raise PipelineDefinitionError(f"{self!r} has no {level.value} level")

    def below(self, level: EntityLevel) -> LevelSpec:
        """The level whose outputs feed ``level``'s reduce function."""
        for previous, spec in zip(self.levels, self.levels[1:], strict=False):
            if spec.level is level:
                return previous
        raise PipelineDefinitionError(f"{self!r} has no level below {level.value}")

    def require_levels(self) -> None:
        if not self.levels:
            raise PipelineDefinitionError(
                f"{self.name!r} has no levels: add one with "
                f".add_level(EntityLevel.TRACE, map_fn, OutputSchema)"
            )

    def check_pip_install(self) -> None:
        """Raise if a ``pip_install`` package is not installed here (local mode never installs)."""
        missing = []
        for requirement in self.pip_install:
            name = re.split(r"[\s<>=!~;\[]", requirement.strip(), maxsplit=1)[0]
            try:
                importlib.metadata.distribution(name)
            except importlib.metadata.PackageNotFoundError:
                missing.append(requirement)
        if missing:
            quoted = " ".join(f"'{m}'" for m in missing)
            raise PipelineDefinitionError(
                f"pip_install package(s) not installed in this environment: "
                f"{', '.join(missing)}. Local mode does not install packages; run "
                f"`pip install {quoted}` first"
            )
