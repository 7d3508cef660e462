"""What is stored: judges, their levels, versions and columns, and name resolution with close
matches (an unknown judge, level, version or column is an error naming the nearest ones)."""

from __future__ import annotations

import difflib
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from manta_lib.errors import QueryError
from manta_lib.models import EntityLevel
from manta_lib.store import Store
from manta_lib.store import results_queries as q
from manta_lib.store.judge_versions import version_labels

log = logging.getLogger(__name__)

ALL_VERSIONS = "all"


def closest(name: str, known: Sequence[str], what: str) -> str:
    """``"; did you mean: a, b"`` or the full list when nothing is close, for messages."""
    if not known:
        return f"; there are no {what}"
    near = difflib.get_close_matches(name, list(known), n=5, cutoff=0.5)
    if near:
        return f"; did you mean: {', '.join(near)}"
    shown = list(known)[:20]
    more = f" (and {len(known) - 20} more)" if len(known) > 20 else ""
    return f"; known {what}: {', '.join(shown)}{more}"


def parse_level(level: EntityLevel | str) -> EntityLevel:
    """An :class:`EntityLevel` from its value; unknown names get the close matches."""
    try:
        return EntityLevel(level)
    except ValueError:
        names = [member.value for member in EntityLevel]
        raise QueryError(
            f"level {level!r} is unknown{closest(str(level), names, 'levels')}"
        ) from None


def as_run_ids(run_id: str | Sequence[str] | None) -> tuple[str, ...]:
    if run_id is None:
        return ()
    runs = (run_id,) if isinstance(run_id, str) else tuple(run_id)
    if not runs or not all(isinstance(r, str) and r for r in runs):
        raise QueryError(f"run_id must be a run id or a non-empty list of run ids, got {run_id!r}")
    return runs


@dataclass(frozen=True)
class ColumnInfo:
    """One output column of a judge at a level: name, type (number/string/boolean/json)."""

    name: str
    level: str
    type: str
    description: str = ""


@dataclass(frozen=True)
class JudgeVersionInfo:
    """One stored version of a judge at one level: how many runs and entities, when."""

    version: str
    level: str
    runs: int
    entities: int
    errors: int
    first_computed_at: datetime
    last_computed_at: datetime
    columns: tuple[str, ...]
    label: str = ""  # readable name of the version ("" when none was recorded)


@dataclass(frozen=True)
class JudgeInfo:
    """A judge with stored results and/or a registration.

    ``registered_version`` and ``columns`` come from the local judge registry (empty when the
    judge was registered with Kestrel only); ``versions`` from the stored results, newest first.
    """

    judge: str
    project_id: str
    description: str = ""
    registered_version: str | None = None
    levels: tuple[str, ...] = ()
    columns: tuple[ColumnInfo, ...] = ()
    versions: tuple[JudgeVersionInfo, ...] = field(default_factory=tuple)

    @property
    def latest_version(self) -> str | None:
        return self.versions[0].version if self.versions else self.registered_version


def list_judges(
    store: Store, *, run_id: str | Sequence[str] | None = None, project_id: str | None = None
) -> list[JudgeInfo]:
    """Every judge with its versions, levels, columns, when computed and entity counts."""
    runs = as_run_ids(run_id)
    stored: dict[tuple[str, str], list[JudgeVersionInfo]] = {}
    labels = version_labels(store)
    for project, judge, version, level, n_runs, n, errors, first, last, columns in q.judge_overview(
        store, project_id=project_id, run_ids=runs
    ):
        label = labels.get((project, judge, version), "")
        stored.setdefault((project, judge), []).append(
            JudgeVersionInfo(version, level, n_runs, n, errors, first, last, tuple(columns), label)
        )
    registered = {
        (project, judge): (version, description, tuple(levels), columns)
        for project, judge, version, description, levels, columns in q.registered_judges(
            store, project_id
        )
    }
    keys = set(stored) if runs else set(stored) | set(registered)
    infos = []
    for project, judge in sorted(keys):
        version, description, levels, columns_json = registered.get(
            (project, judge), (None, "", (), "[]")
        )
        columns = tuple(
            ColumnInfo(c["name"], c["entity_level"], c["type"], c.get("description", ""))
            for c in json.loads(columns_json or "[]")
        )
        versions = tuple(stored.get((project, judge), []))
        if not levels:
            levels = tuple(sorted({v.level for v in versions}, key=level_rank))
        infos.append(JudgeInfo(judge, project, description, version, levels, columns, versions))
    return infos


def level_rank(level: str) -> int:
    """Sort key of a level name (unknown names last)."""
    try:
        return EntityLevel(level).rank
    except ValueError:
        return 99


def registered_columns(
    store: Store, judge: str, level: str
) -> tuple[set[str], dict[str, dict[str, Any]]]:
    """``(versions, {column: registry entry})`` of the newest local registration of ``judge``
    at ``level`` (an entry has ``type`` and, for numbers registered by this Manta,
    ``number_type``: ``integer`` or ``number``)."""
    versions: set[str] = set()
    columns: dict[str, dict[str, Any]] = {}
    for _project, name, version, _d, _levels, columns_json in q.registered_judges(store, None):
        if name == judge:
            versions.add(version)
            for column in json.loads(columns_json or "[]"):
                if column.get("entity_level") == level:
                    columns[column["name"]] = column
    return versions, columns


def require_judge(store: Store, judge: str, runs: Sequence[str], level: str) -> None:
    """Raise a :class:`QueryError` with close matches when ``judge`` has nothing at ``level``
    in ``runs``."""
    if not isinstance(judge, str) or not judge:
        raise QueryError(f"judge must be a judge name, got {judge!r}")
    levels = q.judge_levels(store, judge, runs)
    if level in levels:
        return
    known = q.known_judges(store)
    if judge not in known:
        raise QueryError(f"judge {judge!r} is unknown{closest(judge, known, 'judges')}")
    if not q.judge_levels(store, judge, ()):
        raise QueryError(f"judge {judge!r} is registered but has no stored results yet")
    if runs and not levels:
        stored_runs = q.judge_runs(store, judge)
        missing = ", ".join(runs)
        raise QueryError(
            f"judge {judge!r} has no results for run {missing}"
            f"{closest(runs[0], stored_runs, 'runs with results of ' + repr(judge))}"
        )
    raise QueryError(
        f"judge {judge!r} has no results at level {level!r}"
        f"{'' if not levels else '; it has results at: ' + ', '.join(levels)}"
    )


def require_runs(judge: str, level: str, wanted: Sequence[str], present: set[str]) -> None:
    """Raise when some of the ``wanted`` runs have no results of ``judge`` at ``level``."""
    missing = [run for run in wanted if run not in present]
    if missing:
        raise QueryError(
            f"judge {judge!r} has no {level} results for run {', '.join(missing)}"
            f"{closest(missing[0], sorted(present), 'runs with them')}"
        )


@dataclass(frozen=True)
class VersionChoice:
    """The (run, version) pairs a read covers, and how they were chosen."""

    pairs: tuple[tuple[str, str], ...]
    versions: Sequence[str] | str | None


def choose_versions(
    store: Store,
    scope: q.Scope,
    version: str | Sequence[str] | None,
    rows: Sequence[tuple[str, str, Any]] | None = None,
) -> VersionChoice:
    """Resolve ``None`` (each run's latest), a version (or list) or ``"all"`` to stored pairs.

    ``rows``: ``(run, version, last computed_at)`` already read (the caller then confirms the
    choice with :func:`confirm_listed`); else they are read from the catalog and confirmed here.
    """
    if rows is not None:
        return _choose(scope, version, rows)
    choice = _choose(scope, version, q.stored_versions(store, scope))
    listed = [(scope.level, run, ver) for run, ver in choice.pairs]
    if not confirm_listed(store, scope.judge, scope.project_id, listed):
        choice = _choose(scope, version, q.stored_versions(store, scope))
    return choice


def confirm_listed(
    store: Store, judge: str, project_id: str | None, listed: Iterable[tuple[str, str, str]]
) -> bool:
    """Whether every ``(level, run, version)`` the catalog listed still has stored results.

    When one has none (its results were deleted without going through Manta), the catalog of
    those runs is recomputed from the stored results and False is returned: the caller reads
    the catalog again instead of showing an empty table or counting nothing.
    """
    missing = q.missing_versions(store, judge, project_id, sorted(set(listed)))
    if not missing:
        return True
    log.warning(
        "the results catalog listed %s of judge %r without stored results; recomputing it "
        "for run(s) %s",
        ", ".join(f"{level} version {version} of run {run}" for level, run, version in missing),
        judge,
        ", ".join(sorted({run for _level, run, _version in missing})),
    )
    q.refresh_catalog(store, judge, [run for _level, run, _version in missing])
    return False


def _choose(
    scope: q.Scope, version: str | Sequence[str] | None, rows: Sequence[tuple[str, str, Any]]
) -> VersionChoice:
    rows = sorted(rows, key=lambda row: (row[0], row[2]))
    if not rows:
        raise QueryError(
            f"judge {scope.judge!r} has no stored results at level {scope.level!r} for "
            f"{', '.join(scope.run_ids) or 'any run'}"
        )
    if version is None:
        latest: dict[str, str] = {}
        for run, ver, *_rest in rows:  # ordered by last computed_at: the last one wins
            latest[run] = ver
        return VersionChoice(tuple(latest.items()), None)
    if version == ALL_VERSIONS:
        return VersionChoice(tuple((run, ver) for run, ver, *_ in rows), ALL_VERSIONS)
    wanted = [version] if isinstance(version, str) else list(version)
    known = sorted({ver for _run, ver, *_ in rows})
    for ver in wanted:
        if ver not in known:
            raise QueryError(
                f"version {ver!r} of judge {scope.judge!r} has no stored results at level "
                f"{scope.level!r}{closest(ver, known, 'versions')}"
            )
    return VersionChoice(tuple((run, ver) for run, ver, *_ in rows if ver in wanted), wanted)


def read_columns(
    store: Store,
    scope: q.Scope,
    choice: VersionChoice,
    names: Sequence[str] | None = None,
    kinds: dict[str, set[str]] | None = None,
) -> list[q.ResultColumn]:
    """The output columns stored under ``choice``, each with its storage kind.

    A column's kind is the one value kind it is stored with (``number``, ``string``,
    ``boolean``, ``json``); several kinds (a union field) read as ``mixed`` (JSON text); a
    column holding only nulls takes its type from the registry (``json`` when unregistered).
    A ``number`` column is an integer or a float column as the registered field declares it
    when the registration is of a version being read (``integral``); else (registered with
    Kestrel only, or by an older Manta) the stored values decide.
    """
    if kinds is None:
        kinds = q.column_kinds(store, scope, choice.pairs, names)
    versions, entries = registered_columns(store, scope.judge, scope.level)
    registered = {name: entry["type"] for name, entry in entries.items()}
    current = bool(versions & {version for _run, version in choice.pairs})
    columns = []
    order = {name: index for index, name in enumerate(registered)}
    ordered = sorted(kinds.items(), key=lambda item: (order.get(item[0], len(order)), item[0]))
    for index, (name, stored) in enumerate(ordered):
        real = stored - {"null"}
        if len(real) == 1:
            kind = real.pop()
        elif real:
            kind = "mixed"
        else:
            kind = registered.get(name, "json")
        number_type = entries.get(name, {}).get("number_type") if current else None
        integral = None if number_type is None else number_type == "integer"
        columns.append(q.ResultColumn(name, f"r{index}", kind, integral))
    return columns


def require_columns(columns: Sequence[q.ResultColumn], wanted: Sequence[str], judge: str) -> None:
    names = [c.name for c in columns]
    for name in wanted:
        if name not in names:
            raise QueryError(
                f"column {name!r} of judge {judge!r} is unknown{closest(name, names, 'columns')}"
            )
