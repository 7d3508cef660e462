"""``manta explore``: serve the explorer web app on 127.0.0.1:8050 by default (read-only;
``--annotate`` turns on the annotation endpoints)."""

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
            help="Allow a non-loopback --host. Without MANTA_EXPLORER_TOKEN or "
            "MANTA_EXPLORER_TOKENS_FILE anyone who can reach the address can read every trace; "
            "with --annotate a token is required.",
        ),
    ] = False,
    annotate: Annotated[
        bool,
        typer.Option(
            "--annotate",
            help="Turn on the write side: annotation queues and label forms (the only writes; "
            "each checked for its origin and CSRF token).",
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
    """Browse runs, traces, curves and stored results in a web browser (read-only unless
    --annotate)."""
    try:
        import uvicorn

        from manta_lib.explorer import create_app
        from manta_lib.explorer.app import default_allowed_hosts
        from manta_lib.explorer.write_guard import access_policy
    except ImportError as exc:
        raise ConfigError(
            f"the explorer needs the 'explorer' extra ({exc.name} is missing): "
            f"pip install 'manta[explorer]'"
        ) from None
    settings = load_settings()
    policy = access_policy(settings, annotate=annotate)
    if not is_loopback_host(host):
        if not allow_remote:
            raise ConfigError(
                f"--host {host} is not a loopback address and the explorer has no "
                f"authentication unless MANTA_EXPLORER_TOKEN is set; add --allow-remote to bind "
                f"it anyway, or use 127.0.0.1"
            )
        if annotate and not policy.needs_token:
            raise ConfigError(
                f"--annotate with --allow-remote needs a token, or anyone who can reach "
                f"{host} could label: set MANTA_EXPLORER_TOKEN (one token, each annotator "
                f"gives a name) or MANTA_EXPLORER_TOKENS_FILE (a JSON object token -> name)"
            )
        if not policy.needs_token:
            console.print(
                f"[bold yellow]warning:[/] binding {host}:{port} with NO authentication: anyone "
                f"who can reach this address can read every trace in the store (set "
                f"MANTA_EXPLORER_TOKEN to require a token).",
                highlight=False,
            )
    hosts = default_allowed_hosts()
    if host in ("0.0.0.0", "::", ""):  # every interface: the machine's own names
        hosts += [socket.gethostname(), socket.getfqdn()]
    else:
        hosts.append(host)
    app = create_app(settings, dagster_url=dagster_url, allowed_hosts=hosts, policy=policy)
    shown = f"[{host}]" if ":" in host else host
    notes = [
        "annotation on" if annotate else "read-only",
        "token required" if policy.needs_token else "no token",
    ]
    console.print(
        f"Manta explorer on http://{shown}:{port}/ ({', '.join(notes)}; Ctrl-C to stop)",
        highlight=False,
    )
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)


def register(app: typer.Typer) -> None:
    app.command("explore")(explore_command)
