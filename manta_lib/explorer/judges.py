"""The judges that stored results for a run, as the run page lists them."""

from __future__ import annotations

from dataclasses import dataclass

from manta_lib.explorer import links
from manta_lib.results import JudgeInfo, JudgeVersionInfo


@dataclass(frozen=True)
class JudgeLevel:
    """One level of a judge on one run: its latest version and links."""

    level: str
    latest: JudgeVersionInfo | None
    older_versions: int
    results_url: str
    dagster_url: str


@dataclass(frozen=True)
class RunJudge:
    info: JudgeInfo
    levels: list[JudgeLevel]


def run_judges(judges: list[JudgeInfo], run_id: str, dagster_base: str) -> list[RunJudge]:
    """Each judge with results for ``run_id``, level by level (trace → run)."""
    out = []
    for info in judges:
        levels = []
        for level in info.levels:
            versions = [v for v in info.versions if v.level == level]
            levels.append(
                JudgeLevel(
                    level=level,
                    latest=versions[0] if versions else None,
                    older_versions=max(len(versions) - 1, 0),
                    results_url=links.results_url(info.judge, run_id, level, base=""),
                    dagster_url=links.dagster_asset_url(
                        info.judge,
                        level,
                        partition=links.run_partition(level, run_id),
                        base=dagster_base,
                    ),
                )
            )
        out.append(RunJudge(info, levels))
    return out
