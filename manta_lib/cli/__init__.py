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
from clickhouse_connect.driver.exceptions import ClickHouseError
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
        annotate_commands,
        data_commands,
        explore_commands,
        import_commands,
        llm_commands,
        results_commands,
        runs_commands,
        search_commands,
        trace_commands,
    )

    data_commands.register(app)
    import_commands.register(app)
    explore_commands.register(app)
    runs_commands.register(app)
    results_commands.register(app)
    trace_commands.register(app)
    llm_commands.register(app)
    search_commands.register(app)
    annotate_commands.register(app)
    # Optional command groups (``manta dagster ...``) come from the ``manta.cli`` entry points
    # of installed packages, so the library never imports them itself.
    for entry_point in importlib.metadata.entry_points(group="manta.cli"):
        try:
            register = entry_point.load()
        except ImportError:  # its extra (e.g. [dagster]) is not installed
            continue
        register(app)


_QUIET_LOGGERS = ("alembic", "httpx", "httpcore", "urllib3")


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
    # Libraries' INFO chatter (alembic's migrations of a Dagster instance, one line per HTTP
    # request) is not what a command reports: their warnings only, unless debugging.
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(max(level, logging.WARNING))


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
    except ClickHouseError as exc:
        # a query that failed or got no answer after the store opened
        lines = str(exc).strip().splitlines()
        hint = " (MANTA_QUERY_TIMEOUT_S bounds each query)" if "timeout" in str(exc).lower() else ""
        first = lines[0] if lines else type(exc).__name__
        err_console.print(
            f"[bold red]error:[/] ClickHouse: {first}{hint}", highlight=False, soft_wrap=True
        )
        sys.exit(1)
    except OSError as exc:
        # a file or address the command was given: the reason and the path, no traceback
        where = f": {exc.filename}" if exc.filename else ""
        reason = exc.strerror or str(exc) or type(exc).__name__
        err_console.print(f"[bold red]error:[/] {reason}{where}", highlight=False, soft_wrap=True)
        sys.exit(1)
