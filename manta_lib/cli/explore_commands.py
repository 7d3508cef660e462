"""``manta explore``: serve the explorer web app (read-only) on 127.0.0.1:8050 by default."""

from __future__ import annotations

import logging
import socket
from typing import Annotated

import typer
from rich.console import Console

from manta_lib.errors import ConfigError
from manta_lib.settings import is_loopback_host, load_settings

console = Console(stderr=True)
log = logging.getLogger(__name__)


def explore_command(
    host: Annotated[
        str, typer.Option("--host", help="Address to bind (loopback unless --allow-remote).")
    ] = "127.0.0.1",
    port: Annotated[
        int, typer.Option("--port", min=1, max=65535, help="Port to listen on.")
    ] = 8050,
    allow_remote: Annotated[
        bool,
        typer.Option(
            "--allow-remote",
            help="Allow a non-loopback --host. The explorer has no authentication: anyone who "
            "can reach the address can read every trace.",
        ),
    ] = False,
    dagster_url: Annotated[
        str | None,
        typer.Option(
            "--dagster-url",
            help="Dagster UI the explorer links judges to (default: MANTA_DAGSTER_URL or "
            "http://127.0.0.1:3000).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Browse runs, traces, curves and stored results in a web browser (read-only)."""
    try:
        import uvicorn

        from manta_lib.explorer import create_app
        from manta_lib.explorer.app import default_allowed_hosts
    except ImportError as exc:
        raise ConfigError(
            f"the explorer needs the 'explorer' extra ({exc.name} is missing): "
            f"pip install 'manta[explorer]'"
        ) from None
    if not is_loopback_host(host):
        if not allow_remote:
            raise ConfigError(
                f"--host {host} is not a loopback address and the explorer has no "
                f"authentication; add --allow-remote to bind it anyway, or use 127.0.0.1"
            )
        console.print(
            f"[bold yellow]warning:[/] binding {host}:{port} with NO authentication: anyone "
            f"who can reach this address can read every trace in the store.",
            highlight=False,
        )
    settings = load_settings()
    hosts = default_allowed_hosts()
    if host in ("0.0.0.0", "::", ""):  # every interface: the machine's own names
        hosts += [socket.gethostname(), socket.getfqdn()]
    else:
        hosts.append(host)
    app = create_app(settings, dagster_url=dagster_url, allowed_hosts=hosts)
    shown = f"[{host}]" if ":" in host else host
    console.print(f"Manta explorer on http://{shown}:{port}/ (Ctrl-C to stop)", highlight=False)
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)


def register(app: typer.Typer) -> None:
    app.command("explore")(explore_command)
