"""Declarative automation: when level partitions are (re)materialized without anyone asking.

Plain schedules cannot launch backfills, so the nightly catch-up is an ``AutomationCondition``
on each level asset, evaluated by an :class:`~dagster.AutomationConditionSensorDefinition`
that emits backfills (all requested partitions of a tick in one backfill, which the single-run
backfill policy executes as one run per asset range):

- every level: after the daily cron tick, partitions that are **missing** or **outdated**
  (the asset's code version — the judge version — changed, or an upstream partition was
  updated, since the partition was last requested or materialized) and not in progress;
- datapoint, step and run levels also follow their upstream level eagerly: when a trace
  partition is materialized (the discovery sensor requests those for new or growing runs), the
  levels above it are requested once nothing upstream is missing or in progress.

The DuckDB ``wall_time_percentiles`` asset is refreshed daily (``on_cron``).
"""

from __future__ import annotations

import os
from typing import Any

import dagster as dg

DEFAULT_BACKFILL_CRON = "0 3 * * *"
WALL_TIME_CRON = "0 6 * * *"
AUTOMATION_SENSOR_NAME = "manta_automation"
AUTOMATION_ENV = "MANTA_DAGSTER_AUTOMATION"


def sensors_default_status() -> dg.DefaultSensorStatus:
    """RUNNING when ``MANTA_DAGSTER_AUTOMATION=on`` (or 1/true), else STOPPED (toggle in the UI)."""
    value = os.environ.get(AUTOMATION_ENV, "").strip().lower()
    running = value in ("1", "on", "true", "yes", "running")
    return dg.DefaultSensorStatus.RUNNING if running else dg.DefaultSensorStatus.STOPPED


def outdated() -> dg.AutomationCondition[Any]:
    """Code version changed or an upstream partition updated since this one was handled."""
    handled = dg.AutomationCondition.newly_requested() | dg.AutomationCondition.newly_updated()
    return (
        (dg.AutomationCondition.code_version_changed() | dg.AutomationCondition.any_deps_updated())
        .since(handled)
        .with_label("outdated")
    )


def scheduled_backfill(cron: str = DEFAULT_BACKFILL_CRON) -> dg.AutomationCondition[Any]:
    """After each ``cron`` tick (UTC): the missing or outdated partitions not in progress."""
    return (
        dg.AutomationCondition.cron_tick_passed(cron, "UTC")
        & (dg.AutomationCondition.missing() | outdated())
        & ~dg.AutomationCondition.in_progress()
    ).with_label(f"missing or outdated, after {cron} UTC")


def level_condition(
    *, is_map: bool, cron: str = DEFAULT_BACKFILL_CRON
) -> dg.AutomationCondition[Any]:
    """The trace level: the scheduled backfill; the levels above: eager too."""
    if is_map:
        return scheduled_backfill(cron)
    return dg.AutomationCondition.eager() | scheduled_backfill(cron)


def automation_sensor(
    target: dg.AssetSelection,
    *,
    name: str = AUTOMATION_SENSOR_NAME,
    use_user_code_server: bool = False,
    minimum_interval_seconds: int = 60,
) -> dg.AutomationConditionSensorDefinition:
    """The sensor that evaluates the conditions of ``target`` and emits backfills."""
    extra: dict[str, bool] = {"use_user_code_server": True} if use_user_code_server else {}
    return dg.AutomationConditionSensorDefinition(
        name,
        target=target,
        emit_backfills=True,
        **extra,  # type: ignore[arg-type]
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=sensors_default_status(),
        description="Nightly backfills of missing or outdated Manta partitions; levels above "
        "the trace level follow it eagerly. Emits backfills (single run per range).",
    )
