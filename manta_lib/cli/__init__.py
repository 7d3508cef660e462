"""The ``manta`` (alias ``mantis``) command line.

Each sub-module registers its commands on :data:`app`. ``main`` turns every ``MantaError`` into
one line on stderr and exit code 1 (2 for usage errors, from click), never a stack trace.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import sys

import typer
from rich.console import Console
from rich.logging import RichHandler

from manta_lib.errors import MantaError
from manta_lib.settings import log_level

app = typer.Typer(
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    help="Manta: query and analyse AI-agent rollouts stored in ClickHouse.",
)
err_console = Console(stderr=True)


def _register_commands() -> None:
    # Imported here so that each module can import `app` from this package.
    from manta_lib.cli import (
        data_commands,
        explore_commands,
        import_commands,
        llm_commands,
        results_commands,
        runs_commands,
        search_commands,
    )

    data_commands.register(app)
    import_commands.register(app)
    explore_commands.register(app)
    runs_commands.register(app)
    results_commands.register(app)
    llm_commands.register(app)
    search_commands.register(app)
    # Optional command groups (``manta dagster ...``) come from the ``manta.cli`` entry points
    # of installed packages, so the library never imports them itself.
    for entry_point in importlib.metadata.entry_points(group="manta.cli"):
        try:
            register = entry_point.load()
        except ImportError:  # its extra (e.g. [dagster]) is not installed
            continue
        register(app)


def configure_logging() -> None:
    """Log to stderr through rich; ``MANTA_LOG_LEVEL`` sets the level (default INFO).

    Raises :class:`~manta_lib.errors.ConfigError` for a name that is not a log level.
    """
    level = log_level(os.environ.get("MANTA_LOG_LEVEL"))
    logging.basicConfig(
        level=level,
        format="%(message)s",
        handlers=[RichHandler(console=err_console, show_path=False, show_time=False)],
    )


def main() -> None:
    """Entry point of the ``manta`` and ``mantis`` scripts."""
    try:
        configure_logging()
    except MantaError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(1)
    _register_commands()
    try:
        app()
    except MantaError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)
