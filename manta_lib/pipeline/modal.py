"""Modal mode: the batch mapper with Modal containers as its workers.

``pipeline.run(run_id)`` (``mode="modal"``, the default) comes here. Before any work or image
build, :func:`preflight` checks that Modal credentials are set and that ClickHouse is reachable
from Modal's cloud (not the embedded chDB store, not localhost). Then :func:`build_modal_app`
defines, per computation:

- an :class:`modal.App` named after the judge,
- an Image: ``debian_slim`` + Manta's runtime dependencies + the pipeline's ``pip_install``,
  carrying Manta's source and the pipeline's module (``add_local_python_source``),
- a Secret with the ClickHouse (and Kestrel, when set) settings,
- the worker Function, :func:`manta_lib.pipeline.remote.map_batch`, with a timeout, Modal-level
  retries for lost containers, and more containers when the map function ``uses_llm``
  (latency-bound, so more inputs in flight pay off).

:class:`ModalRunner` maps the worker over the pending batches with
``Function.map(..., return_exceptions=True)`` inside ``app.run()``; the
:class:`~manta_lib.pipeline.batches.BatchMapper` retries failed batches, and the one run path
(:mod:`manta_lib.pipeline.run`) plans and reduces locally.

Example::

    result = pipeline.run("run_xxx")  # needs MODAL_TOKEN_ID/SECRET and a reachable CLICKHOUSE_URL
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
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

from manta_lib.errors import ConfigError
from manta_lib.llm.settings import llm_worker_environment
from manta_lib.models import EntityLevel
from manta_lib.pipeline.batches import MAX_ATTEMPTS, BatchMapper, Outcome, Payload
from manta_lib.pipeline.definition import PipelineDefinition
from manta_lib.pipeline.options import RunOptions
from manta_lib.pipeline.remote import map_batch, pipeline_ref, worker_environment
from manta_lib.settings import MantaSettings

log = logging.getLogger(__name__)

#: Seconds one batch may take in a container (Modal's limit per input).
WORKER_TIMEOUT_S = 1800
LLM_WORKER_TIMEOUT_S = 3600
#: Modal-level retries of one input (a preempted or lost container); the batch mapper retries
#: failed batches itself, ``MAX_ATTEMPTS`` rounds in all.
MODAL_RETRIES = 1
MODAL_MAX_TIMEOUT_S = 24 * 60 * 60
#: Containers at once: LLM map functions wait on the network, so more of them pay off.
MAX_CONTAINERS = 16
LLM_MAX_CONTAINERS = 64
#: Distributions Manta needs locally but not in a worker (Modal provides its own client; the
#: embedded chDB engine is never used remotely, preflight forbids it).
_NOT_IN_IMAGE = {"modal", "chdb"}
_LOCAL_HOSTS = {"localhost", "host.docker.internal"}


def preflight(settings: MantaSettings) -> None:
    """Fail before any work when Modal workers could not run or could not reach the store.

    Raises:
        ConfigError: one message listing everything to set (and suggesting mode="local").
    """
    problems: list[str] = []
    missing = [
        name
        for name, value in (
            ("MODAL_TOKEN_ID", settings.modal_token_id),
            ("MODAL_TOKEN_SECRET", settings.modal_token_secret),
        )
        if value is None or not _secret_text(value).strip()
    ]
    if missing:
        problems.append(
            f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not set: create a "
            f"token with `modal token new` (or at https://modal.com/settings/tokens) and export "
            f"MODAL_TOKEN_ID and MODAL_TOKEN_SECRET"
        )
    url = settings.clickhouse_url
    if url is None:
        problems.append(
            "CLICKHOUSE_URL is not set, so the store is the embedded chDB engine on this "
            "machine, which Modal workers cannot reach: set CLICKHOUSE_URL=https://host:8443 "
            "(a ClickHouse server reachable from the internet) with CLICKHOUSE_USER and "
            "CLICKHOUSE_PASSWORD"
        )
    elif settings.embedded:
        problems.append(
            f"CLICKHOUSE_URL={url} is an embedded chDB store on this machine, which Modal "
            f"workers cannot reach: set CLICKHOUSE_URL to a ClickHouse server reachable from "
            f"the internet (https://host:8443) with CLICKHOUSE_USER and CLICKHOUSE_PASSWORD"
        )
    elif _is_local_host(urlparse(url).hostname or ""):
        problems.append(
            f"CLICKHOUSE_URL={url} points at this machine or a private network, which Modal "
            f"workers (in Modal's cloud) cannot reach: set CLICKHOUSE_URL to a ClickHouse "
            f"server reachable from the internet (https://host:8443)"
        )
    if problems:
        raise ConfigError(
            "mode='modal' cannot start: "
            + "; ".join(problems)
            + ". To run on this machine instead, use mode='local' (try a subset first: "
            "pipeline.run(run_id, mode='local', limit_traces=10))."
        )


def _secret_text(value: object) -> str:
    getter = getattr(value, "get_secret_value", None)
    return str(getter() if getter is not None else value)


def _is_local_host(host: str) -> bool:
    """Loopback, unspecified, link-local or private addresses, and localhost names."""
    host = host.strip("[]").lower()
    if host in _LOCAL_HOSTS or host.endswith(".localhost") or host.endswith(".local"):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return (
        address.is_loopback or address.is_unspecified or address.is_link_local or address.is_private
    )


def manta_requirements() -> list[str]:
    """Manta's runtime dependencies for the worker image (from the installed metadata)."""
    try:
        requires = importlib.metadata.requires("manta") or []
    except importlib.metadata.PackageNotFoundError:
        raise ConfigError(
            "Modal mode installs Manta's dependencies into the worker image from the installed "
            "`manta` distribution, which is not installed here: run `pip install -e .` in the "
            "Manta checkout"
        ) from None
    requirements = []
    for requirement in requires:
        if ";" in requirement and "extra ==" in requirement:
            continue
        name = re.split(r"[\s<>=!~;\[]", requirement.strip(), maxsplit=1)[0]
        if name.lower() not in _NOT_IN_IMAGE:
            requirements.append(requirement.split(";")[0].strip())
    return requirements


@dataclass(frozen=True)
class ModalAppSpec:
    """Plain values of what :func:`build_modal_app` defines (inspectable without Modal)."""

    app_name: str
    function_name: str
    python_version: str
    packages: list[str]
    local_sources: list[str]
    secret_keys: list[str]
    timeout_s: int
    retries: int
    max_containers: int
    secret_env: dict[str, str] = field(repr=False, default_factory=dict)


def app_spec(
    pipeline: PipelineDefinition,
    settings: MantaSettings,
    *,
    options: RunOptions | None = None,
    timeout_s: int | None = None,
    max_containers: int | None = None,
    retries: int = MODAL_RETRIES,
) -> ModalAppSpec:
    """What the Modal App, Image, Secret and Function of ``pipeline`` will be.

    The per-batch timeout is ``timeout_s``, else derived from the per-trace ``options.timeout_s``
    (rounds of ``max_workers`` traces per batch, plus start-up), else a default by ``uses_llm``.
    """
    ref = pipeline_ref(pipeline)
    module = ref.split(":")[0]
    uses_llm = pipeline.level(EntityLevel.TRACE).uses_llm
    env = worker_environment(settings)
    if uses_llm:  # the judges in the containers reach the same LLM server with the same knobs
        env.update(llm_worker_environment())
    # The Modal token stays with the driver; workers get the store, Kestrel and LLM settings.
    secret_env = {k: v for k, v in env.items() if v != ""}
    sources = ["manta_lib", "manta", module.split(".")[0]]
    return ModalAppSpec(
        app_name=f"manta-{pipeline.judge.replace('_', '-')}",
        function_name="map_batch",
        python_version=f"{sys.version_info.major}.{sys.version_info.minor}",
        packages=list(dict.fromkeys([*manta_requirements(), *pipeline.pip_install])),
        local_sources=list(dict.fromkeys(sources)),
        secret_keys=sorted(secret_env),
        timeout_s=timeout_s or _batch_timeout(options, uses_llm),
        retries=retries,
        max_containers=max_containers or (LLM_MAX_CONTAINERS if uses_llm else MAX_CONTAINERS),
        secret_env=secret_env,
    )


def _batch_timeout(options: RunOptions | None, uses_llm: bool) -> int:
    if options is None or options.timeout_s is None:
        return LLM_WORKER_TIMEOUT_S if uses_llm else WORKER_TIMEOUT_S
    rounds = math.ceil(options.batch_size / max(options.max_workers, 1))
    return min(max(int(rounds * options.timeout_s) + 120, 60), MODAL_MAX_TIMEOUT_S)


def build_modal_app(
    pipeline: PipelineDefinition,
    settings: MantaSettings,
    *,
    options: RunOptions | None = None,
    timeout_s: int | None = None,
    max_containers: int | None = None,
    retries: int = MODAL_RETRIES,
) -> tuple[Any, Any, ModalAppSpec]:
    """``(modal.App, worker modal.Function, spec)`` for ``pipeline``; defines, builds nothing.

    Nothing is sent to Modal here: the image is built and the app started by ``app.run()``.
    """
    import modal

    spec = app_spec(
        pipeline,
        settings,
        options=options,
        timeout_s=timeout_s,
        max_containers=max_containers,
        retries=retries,
    )
    image = (
        modal.Image.debian_slim(python_version=spec.python_version)
        .pip_install(*spec.packages)
        .add_local_python_source(*spec.local_sources)
    )
    # Sources are added to the image explicitly: no automatic mount of the caller's module.
    app = modal.App(spec.app_name, include_source=False)
    function = app.function(
        image=image,
        secrets=[modal.Secret.from_dict(dict(spec.secret_env))],
        timeout=spec.timeout_s,
        retries=modal.Retries(max_retries=spec.retries, initial_delay=5.0, backoff_coefficient=2.0),
        max_containers=spec.max_containers,
        name=spec.function_name,
    )(map_batch)
    return app, function, spec


class ModalRunner:
    """Runs batches as inputs of the Modal worker Function, inside one ``app.run()``."""

    def __init__(self, app: Any, function: Any, settings: MantaSettings) -> None:
        self.app = app
        self.function = function
        self.settings = settings
        self._running: contextlib.ExitStack | None = None

    def _start(self) -> None:
        """Connect with the settings' token (not whatever ~/.modal.toml holds) and start."""
        import modal

        stack = contextlib.ExitStack()
        try:
            stack.enter_context(modal.enable_output())  # image build and container logs
            client = modal.Client.from_credentials(
                _secret_text(self.settings.modal_token_id),
                _secret_text(self.settings.modal_token_secret),
            )
            stack.enter_context(self.app.run(client=client))
        except BaseException:
            stack.close()
            raise
        self._running = stack

    def run(self, payloads: Sequence[Payload]) -> Iterator[tuple[Payload, Outcome]]:
        if not payloads:
            return
        if self._running is None:
            self._start()
        outcomes = self.function.map(list(payloads), return_exceptions=True, order_outputs=True)
        yield from zip(payloads, outcomes, strict=True)

    def close(self) -> None:
        """Stop the ephemeral app (and its containers)."""
        if self._running is not None:
            running, self._running = self._running, None
            running.close()


def modal_mapper(
    pipeline: PipelineDefinition,
    *,
    options: RunOptions,
    settings: MantaSettings,
    max_attempts: int = MAX_ATTEMPTS,
) -> BatchMapper:
    """Preflight and define the Modal app; the mapper that runs batches on it.

    Nothing is built or started until the first batch: ``app.run()`` starts with it.
    """
    preflight(settings)
    pipeline_ref(pipeline)  # a pipeline in __main__ fails here, before anything is built
    app, function, spec = build_modal_app(pipeline, settings, options=options)
    log.info(
        "running %s on Modal app %s (up to %d containers, %d s per batch)",
        pipeline.judge,
        spec.app_name,
        spec.max_containers,
        spec.timeout_s,
    )
    return BatchMapper(ModalRunner(app, function, settings), max_attempts=max_attempts)
