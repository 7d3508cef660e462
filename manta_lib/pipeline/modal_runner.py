"""``mode="modal"``: the batch driver with Modal containers as its workers.

One ephemeral Modal App per computation (``manta-<judge>``) with one Function, the batch
worker :func:`~manta_lib.pipeline.remote.run_batch`, mapped over the pending batches with
``Function.map(payloads, return_exceptions=True)``. Its Image is Debian slim with Manta's
runtime dependencies and the pipeline's ``pip_install`` packages, and carries Manta's source
and the pipeline's package; a Secret carries the ClickHouse (and Kestrel) settings, because
workers read their traces and write their results themselves. Batching, checkpointing, retries
and the reduce levels are the driver's (:mod:`manta_lib.pipeline.driver`).

:func:`preflight` runs before any work, image build or network call: Modal tokens must be set
and ClickHouse must be a server Modal's cloud can reach.

Example::

    result = pipeline.run(run_id="run_xxx")               # mode="modal" is the default
    result = pipeline.run(run_id="run_xxx", mode="local", limit_traces=10)   # try first
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import ipaddress
import logging
import math
import re
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import modal

from manta_lib.entities import MetadataOutput
from manta_lib.errors import ConfigError
from manta_lib.models import EntityLevel
from manta_lib.pipeline.computation import MapReduceComputation
from manta_lib.pipeline.driver import MAX_ATTEMPTS, Outcome, Payload, run_with_executor
from manta_lib.pipeline.engine import RunOptions
from manta_lib.pipeline.remote import pipeline_ref, run_batch, worker_environment
from manta_lib.settings import MantaSettings

log = logging.getLogger(__name__)

#: Containers at most: CPU-bound maps scale out; LLM maps run ``max_workers`` calls per
#: container already, and the provider's rate limit is the real ceiling.
MAX_CONTAINERS_CPU = 100
MAX_CONTAINERS_LLM = 20
#: Modal-level retries of one input (a preempted or crashed container); the driver's own
#: rounds (``MAX_ATTEMPTS``) come on top, recorded in ``progress``.
CONTAINER_RETRIES = 1
#: Per-batch time limit without a per-trace ``timeout_s``.
DEFAULT_TIMEOUT_S = {False: 15 * 60, True: 60 * 60}
#: Distributions Modal workers do not install: Modal brings its own client, and workers never
#: use the embedded engine (preflight rejects it).
NOT_IN_IMAGE = frozenset({"modal", "chdb"})

_TRY_LOCAL = (
    "To try the pipeline without Modal first, run it locally on a subset: "
    'pipeline.run(run_id, mode="local", limit_traces=10)'
)
_SET_SERVER = (
    "set CLICKHOUSE_URL to a ClickHouse server reachable from the internet "
    "(e.g. https://clickhouse.example.com:8443) with CLICKHOUSE_USER and CLICKHOUSE_PASSWORD"
)


def preflight(pipeline: MapReduceComputation, settings: MantaSettings) -> str:
    """Check what Modal mode needs before any work; return the pipeline's import reference.

    Raises:
        ConfigError: Modal tokens are missing or ClickHouse is not reachable from Modal (all
            problems in one message, each saying what to set).
        PipelineDefinitionError: the pipeline is not importable by workers (a script or
            notebook).
    """
    problems = []
    missing = [
        name
        for name, value in (
            ("MODAL_TOKEN_ID", settings.modal_token_id),
            (
                "MODAL_TOKEN_SECRET",
                settings.modal_token_secret.get_secret_value()
                if settings.modal_token_secret is not None
                else None,
            ),
        )
        if not value
    ]
    if missing:
        problems.append(
            f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not set: create a "
            f"token with `modal token new` (or in the Modal dashboard under Settings > API "
            f"Tokens) and export MODAL_TOKEN_ID and MODAL_TOKEN_SECRET"
        )
    unreachable = clickhouse_unreachable_reason(settings)
    if unreachable:
        problems.append(f"{unreachable}, which Modal workers cannot reach: {_SET_SERVER}")
    if problems:
        listed = "\n".join(f"  - {problem}" for problem in problems)
        raise ConfigError(f'mode="modal" cannot start:\n{listed}\n{_TRY_LOCAL}')
    return pipeline_ref(pipeline)


def clickhouse_unreachable_reason(settings: MantaSettings) -> str | None:
    """Why Modal's cloud cannot reach ``CLICKHOUSE_URL`` (None when it plausibly can)."""
    url = settings.clickhouse_url
    if url is None:
        return (
            f"CLICKHOUSE_URL is not set, so Manta uses the embedded chDB store at "
            f"{settings.chdb_path} on this machine"
        )
    if url.startswith("chdb:"):
        return f"CLICKHOUSE_URL={url} is an embedded chDB store on this machine"
    host = (urlparse(url).hostname or "").lower()
    if host == "localhost" or host.endswith((".localhost", ".local", ".internal")):
        return f"CLICKHOUSE_URL={url} names {host}, a host only this machine or network knows"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    if address.is_loopback or address.is_unspecified:
        return f"CLICKHOUSE_URL={url} is this machine ({host})"
    if address.is_private or address.is_link_local:
        return f"CLICKHOUSE_URL={url} is a private network address ({host})"
    return None


def runtime_requirements() -> list[str]:
    """Manta's own runtime dependencies (from its installed metadata), minus NOT_IN_IMAGE."""
    try:
        requires = importlib.metadata.requires("manta") or []
    except importlib.metadata.PackageNotFoundError:
        raise ConfigError(
            "Modal mode installs Manta's dependencies into the worker image from the installed "
            "`manta` distribution, which is not installed here; run `pip install -e .` in the "
            "Manta checkout (or `pip install manta`)"
        ) from None
    kept = []
    for requirement in requires:
        if "extra" in requirement.partition(";")[2]:
            continue  # optional extras (dagster, dev)
        name = re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0].lower()
        if name not in NOT_IN_IMAGE:
            kept.append(requirement)
    return kept


@dataclass(frozen=True)
class WorkerSpec:
    """Everything the Modal definitions are built from (plain data, easy to inspect)."""

    app_name: str
    python_version: str
    packages: tuple[str, ...]
    source_modules: tuple[str, ...]
    environment: dict[str, str]
    timeout_s: int
    container_retries: int
    max_containers: int


def worker_spec(
    pipeline: MapReduceComputation, settings: MantaSettings, options: RunOptions
) -> WorkerSpec:
    """The image, secret and function settings for ``pipeline``."""
    module = pipeline.level(EntityLevel.TRACE).fn.__module__
    sources = ["manta_lib", "manta"]
    top = module.split(".")[0]
    if top not in sources and top != "__main__":
        sources.append(top)
    uses_llm = pipeline.uses_llm
    if options.timeout_s is not None:
        rounds = math.ceil(options.batch_size / max(options.max_workers, 1))
        timeout = int(rounds * options.timeout_s) + 120
    else:
        timeout = DEFAULT_TIMEOUT_S[uses_llm]
    return WorkerSpec(
        app_name=f"manta-{pipeline.judge}".replace("_", "-"),
        python_version=f"{sys.version_info.major}.{sys.version_info.minor}",
        packages=tuple(dict.fromkeys([*runtime_requirements(), *pipeline.pip_install])),
        source_modules=tuple(sources),
        environment=worker_environment(settings),
        timeout_s=min(max(timeout, 60), 24 * 60 * 60),
        container_retries=CONTAINER_RETRIES,
        max_containers=MAX_CONTAINERS_LLM if uses_llm else MAX_CONTAINERS_CPU,
    )


@dataclass
class ModalApp:
    """The Modal objects of one computation and the spec they were built from."""

    app: modal.App
    function: modal.Function
    image: modal.Image
    secret: modal.Secret
    spec: WorkerSpec


def build_modal_app(
    pipeline: MapReduceComputation, settings: MantaSettings, options: RunOptions | None = None
) -> ModalApp:
    """Define (not deploy) the App, Image, Secret and worker Function; no network involved."""
    spec = worker_spec(pipeline, settings, options or RunOptions())
    image = (
        modal.Image.debian_slim(python_version=spec.python_version)
        .pip_install(*spec.packages)
        .add_local_python_source(*spec.source_modules)
    )
    secret = modal.Secret.from_dict(dict(spec.environment))
    # Sources are added explicitly above, so the App does not auto-mount the caller's module.
    app = modal.App(spec.app_name, include_source=False)
    function = app.function(
        image=image,
        secrets=[secret],
        timeout=spec.timeout_s,
        retries=modal.Retries(
            max_retries=spec.container_retries, initial_delay=5.0, backoff_coefficient=2.0
        ),
        max_containers=spec.max_containers,
    )(run_batch)
    return ModalApp(app, function, image, secret, spec)


class ModalExecutor:
    """Runs batches with ``Function.map(..., return_exceptions=True)`` inside ``app.run()``.

    The app starts on the first :meth:`run` (a fully committed run never builds the image)
    and stops in :meth:`close`, which also cancels inputs still queued after Ctrl-C.
    """

    def __init__(self, modal_app: ModalApp, settings: MantaSettings) -> None:
        self.modal_app = modal_app
        self.settings = settings
        self._stack: contextlib.ExitStack | None = None

    def _start(self) -> None:
        assert self.settings.modal_token_id and self.settings.modal_token_secret
        stack = contextlib.ExitStack()
        try:
            stack.enter_context(modal.enable_output())
            client = modal.Client.from_credentials(
                self.settings.modal_token_id, self.settings.modal_token_secret.get_secret_value()
            )
            stack.enter_context(self.modal_app.app.run(client=client))
        except BaseException:
            stack.close()
            raise
        self._stack = stack

    def run(self, payloads: Sequence[Payload]) -> Iterator[tuple[Payload, Outcome]]:
        if not payloads:
            return
        if self._stack is None:
            self._start()
        # Ordered outputs pair each exception with its input (exceptions carry no input).
        outputs: Iterator[Any] = self.modal_app.function.map(
            list(payloads), order_outputs=True, return_exceptions=True
        )
        yield from zip(payloads, outputs, strict=True)

    def close(self) -> None:
        if self._stack is not None:
            stack, self._stack = self._stack, None
            stack.close()


def run_on_modal(
    pipeline: MapReduceComputation,
    run_id: str,
    *,
    options: RunOptions,
    settings: MantaSettings,
) -> dict[EntityLevel, list[MetadataOutput]]:
    """Preflight, then the batch driver with Modal workers; writes the runs-log row."""
    preflight(pipeline, settings)
    modal_app = build_modal_app(pipeline, settings, options)
    log.info(
        "running %s on %s with Modal app %s (up to %d containers, %d s per batch)",
        pipeline.judge,
        run_id,
        modal_app.spec.app_name,
        modal_app.spec.max_containers,
        modal_app.spec.timeout_s,
    )
    return run_with_executor(
        pipeline,
        run_id,
        executor=ModalExecutor(modal_app, settings),
        options=options,
        settings=settings,
        mode="modal",
        max_attempts=MAX_ATTEMPTS,
    )
