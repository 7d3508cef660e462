"""Judge versions a person can read: each version's label and the source it was hashed from.

A judge version is a hash of its code; ``judge_versions`` keeps, per (project, judge, version),
a readable ``label`` (given with ``version_label=``, or made from the git commit of the judge's
file and the level functions that changed since the previous version) and the ``source`` the
hash covers, so two versions can be diffed long after the code changed.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from manta_lib.store.client import Store


def record_version(
    store: Store, project_id: str, judge: str, version: str, label: str, source: str
) -> None:
    """Keep ``version``'s label and source (a later record of the same version replaces it)."""
    store.insert_columns(
        "judge_versions",
        {
            "project_id": [project_id],
            "judge": [judge],
            "version": [version],
            "label": [label],
            "source": [source],
            "registered_at": [datetime.now(UTC)],
        },
    )


def latest_other_version(
    store: Store, project_id: str, judge: str, version: str
) -> tuple[str, str] | None:
    """``(version, source)`` of the newest recorded version of ``judge`` other than ``version``."""
    rows = store.rows(
        "SELECT version, argMax(source, registered_at), max(registered_at) AS at "
        "FROM {db}.judge_versions WHERE project_id = {p:String} AND judge = {j:String} "
        "AND version != {v:String} GROUP BY version ORDER BY at DESC LIMIT 1",
        {"p": project_id, "j": judge, "v": version},
    )
    return (str(rows[0][0]), str(rows[0][1])) if rows else None


def version_records(
    store: Store, judge: str | None = None, versions: Sequence[str] | None = None
) -> dict[tuple[str, str], tuple[str, str]]:
    """``(judge, version) -> (label, source)`` of the recorded versions (all projects)."""
    where: list[str] = ["1"]
    params: dict[str, Any] = {}
    if judge is not None:
        where.append("judge = {j:String}")
        params["j"] = judge
    if versions is not None:
        where.append("version IN {vs:Array(String)}")
        params["vs"] = list(versions)
    rows = store.rows(
        "SELECT judge, version, argMax(label, registered_at), argMax(source, registered_at) "
        f"FROM {{db}}.judge_versions WHERE {' AND '.join(where)} GROUP BY judge, version",
        params,
    )
    return {(str(r[0]), str(r[1])): (str(r[2]), str(r[3])) for r in rows}


def version_labels(store: Store) -> dict[tuple[str, str, str], str]:
    """``(project, judge, version) -> label`` of every recorded version (no sources read)."""
    rows = store.rows(
        "SELECT project_id, judge, version, argMax(label, registered_at) "
        "FROM {db}.judge_versions GROUP BY project_id, judge, version"
    )
    return {(str(r[0]), str(r[1]), str(r[2])): str(r[3]) for r in rows}
