"""``manta dagster …``: what the Dagster CLI cannot do for Manta.

``manta dagster register-runs`` adds the run ids found in ClickHouse ``traces`` as partitions
of the ``manta_runs`` dynamic partitions definition in the Dagster instance of
``$DAGSTER_HOME`` (Dagster has no CLI for that, and ``dagster asset materialize --partition``
rejects unknown dynamic partitions). Idempotent: runs already registered are left alone.
"""

from __future__ import annotations

import os
from typing import Annotated

import typer

from manta_lib import ConfigError
from manta_lib.store import Store


def register_runs(store: Store, instance: object) -> tuple[list[str], list[str], list[str]]:
    """Add the store's run ids to the instance; returns ``(added, already there, invalid)``."""
    from manta_dagster.partitions import RUNS_PARTITIONS_NAME, is_valid_run_id
    from manta_dagster.sensors import run_trace_counts

    runs = sorted(run_trace_counts(store))
    known = set(instance.get_dynamic_partitions(RUNS_PARTITIONS_NAME))  # type: ignore[attr-defined]
    invalid = [r for r in runs if not is_valid_run_id(r)]
    added = [r for r in runs if r not in known and is_valid_run_id(r)]
    if added:
        instance.add_dynamic_partitions(RUNS_PARTITIONS_NAME, added)  # type: ignore[attr-defined]
    return added, sorted(known & set(runs)), invalid


def register(app: typer.Typer) -> None:
    """Add the ``dagster`` sub-command group to the ``manta`` CLI."""
    dagster_app = typer.Typer(
        no_args_is_help=True, help="Dagster helpers (partitions the Dagster CLI cannot add)."
    )

    @dagster_app.command("register-runs")
    def register_runs_command(
        dry_run: Annotated[
            bool, typer.Option("--dry-run", help="List the runs without registering them.")
        ] = False,
    ) -> None:
        """Register every run id in ClickHouse as a partition in $DAGSTER_HOME's instance."""
        import dagster as dg

        from manta_lib import load_settings

        home = os.environ.get("DAGSTER_HOME")
        if not home:
            raise ConfigError(
                "DAGSTER_HOME is not set: partitions would go to a throw-away instance. Set it "
                "to the directory holding dagster.yaml (the Makefile uses ./.dagster_home)."
            )
        if not os.path.isdir(home):
            raise ConfigError(
                f"DAGSTER_HOME={home!r} is not an existing directory; create it or point it at "
                "the directory holding dagster.yaml (the Makefile uses ./.dagster_home)."
            )
        with Store.open(load_settings()) as store:
            if dry_run:
                from manta_dagster.sensors import run_trace_counts

                for run_id, count in sorted(run_trace_counts(store).items()):
                    typer.echo(f"{run_id}\t{count} traces")
                return
            with dg.DagsterInstance.get() as instance:
                added, known, invalid = register_runs(store, instance)
        for run_id in added:
            typer.echo(f"registered {run_id}")
        typer.echo(
            f"{len(added)} run(s) registered, {len(known)} already registered"
            + (f", {len(invalid)} skipped (invalid partition keys)" if invalid else "")
        )

    app.add_typer(dagster_app, name="dagster")
