"""The Modal definitions of a computation, and its worker run through ``Function.local()``.

No Modal account is reachable here: nothing is built or started on Modal. The App, Image,
Secret and Function objects are the real SDK's; their settings are checked through the plain
:class:`ModalAppSpec` they are built from, and the worker is the real ``map_batch`` executed
in-process by ``Function.local()`` against chDB.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import modal
import pytest
from pydantic import BaseModel

from manta_lib.context import TraceContext
from manta_lib.errors import PipelineDefinitionError
from manta_lib.models import EntityLevel
from manta_lib.pipeline import MapReduceComputation, RunOptions, plan_scope
from manta_lib.pipeline.modal import (
    LLM_MAX_CONTAINERS,
    LLM_WORKER_TIMEOUT_S,
    MAX_CONTAINERS,
    WORKER_TIMEOUT_S,
    ModalRunner,
    build_modal_app,
)
from manta_lib.pipeline.remote import pipeline_ref
from manta_lib.settings import MantaSettings, load_settings
from manta_lib.store import Store
from tests.lib import driver_defs
from tests.lib.builders import load_traces, trace_line

REMOTE = {
    "CLICKHOUSE_URL": "https://ch.example.com:8443",
    "CLICKHOUSE_USER": "analyst",
    "CLICKHOUSE_PASSWORD": "s3cret",
    "MODAL_TOKEN_ID": "ak-test",
    "MODAL_TOKEN_SECRET": "as-test",
}


@pytest.fixture
def remote_settings(monkeypatch: pytest.MonkeyPatch, manta_env: dict[str, str]) -> MantaSettings:
    for name, value in REMOTE.items():
        monkeypatch.setenv(name, value)
    return load_settings()


def test_image_carries_manta_dependencies_pipeline_packages_and_sources(
    remote_settings: MantaSettings,
) -> None:
    app, function, spec = build_modal_app(driver_defs.pipeline, remote_settings)
    assert isinstance(app, modal.App)
    assert isinstance(function, modal.Function)
    assert app.name == spec.app_name == "manta-driver-test"
    assert spec.python_version == "3.11"
    names = [p.split(">")[0].split("=")[0].split("<")[0] for p in spec.packages]
    for needed in ("clickhouse-connect", "pydantic", "pydantic-settings", "httpx", "tenacity"):
        assert needed in names
    # The pipeline's pip_install, once; no embedded engine nor Modal client in the image.
    assert spec.packages.count("httpx>=0.27") == 1
    assert "chdb" not in names and "modal" not in names
    assert spec.local_sources == ["manta_lib", "manta", "tests"]


def test_secret_carries_store_and_kestrel_settings_but_not_the_modal_token(
    remote_settings: MantaSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, _, spec = build_modal_app(driver_defs.pipeline, remote_settings)
    assert "KESTREL_API_URL" not in spec.secret_keys
    assert spec.secret_env["CLICKHOUSE_URL"] == "https://ch.example.com:8443"
    assert spec.secret_env["CLICKHOUSE_USER"] == "analyst"
    assert spec.secret_env["CLICKHOUSE_PASSWORD"] == "s3cret"
    assert spec.secret_env["MANTA_DATABASE"] == remote_settings.database

    monkeypatch.setenv("KESTREL_API_URL", "https://kestrel.example.com")
    monkeypatch.setenv("KESTREL_API_KEY", "kk")
    _, _, spec = build_modal_app(driver_defs.pipeline, load_settings())
    assert {"KESTREL_API_URL", "KESTREL_API_KEY"} <= set(spec.secret_keys)
    assert not any(key.startswith("MODAL_") for key in spec.secret_keys)
    assert "s3cret" not in repr(spec), "secret values stay out of logs and reprs"


def test_timeouts_retries_and_containers_depend_on_uses_llm(remote_settings: MantaSettings) -> None:
    _, _, plain = build_modal_app(driver_defs.pipeline, remote_settings)
    _, _, llm = build_modal_app(driver_defs.llm_pipeline, remote_settings)
    assert (plain.timeout_s, plain.max_containers) == (WORKER_TIMEOUT_S, MAX_CONTAINERS)
    assert (llm.timeout_s, llm.max_containers) == (LLM_WORKER_TIMEOUT_S, LLM_MAX_CONTAINERS)
    assert llm.max_containers > plain.max_containers
    assert plain.retries == llm.retries == 1
    _, _, custom = build_modal_app(
        driver_defs.pipeline, remote_settings, timeout_s=60, max_containers=3, retries=0
    )
    assert (custom.timeout_s, custom.max_containers, custom.retries) == (60, 3, 0)
    # A per-trace timeout bounds the batch: 100 traces / 4 threads = 25 rounds of 10 s + 120.
    options = RunOptions(batch_size=100, max_workers=4, timeout_s=10)
    _, _, bounded = build_modal_app(driver_defs.pipeline, remote_settings, options=options)
    assert bounded.timeout_s == 25 * 10 + 120


class Out(BaseModel):
    n: int


def _map(trace: TraceContext) -> Out:
    return Out(n=1)


def test_pipeline_outside_an_importable_module_gets_a_clear_error() -> None:
    in_main = MapReduceComputation("In main")
    _map.__module__ = "__main__"
    try:
        in_main.add_level(EntityLevel.TRACE, _map, Out)
        with pytest.raises(PipelineDefinitionError, match="mode='local'") as info:
            pipeline_ref(in_main)
        assert "script or notebook" in str(info.value)
    finally:
        _map.__module__ = __name__

    local = MapReduceComputation("Not module level").add_level(EntityLevel.TRACE, _map, Out)
    with pytest.raises(PipelineDefinitionError, match="not a module-level attribute"):
        pipeline_ref(local)
    assert pipeline_ref(driver_defs.pipeline) == "tests.lib.driver_defs:pipeline"


# ---- the worker Function, run in-process ------------------------------------------------


def _payload(store: Store, attempt: int = 1, **extra: Any) -> dict[str, Any]:
    return {
        "pipeline": pipeline_ref(driver_defs.pipeline),
        "run_id": "run_m",
        "index": 0,
        "trace_ids": plan_scope(store, "run_m").trace_ids,
        "judge_version": driver_defs.pipeline.judge_version,
        "attempt": attempt,
        **extra,
    }


def _worker_function(settings: MantaSettings) -> Any:
    """The real worker Function; chDB here, which is fine for ``.local()`` (no preflight)."""
    _, function, _ = build_modal_app(driver_defs.pipeline, settings)
    return function


def test_worker_function_local_writes_outcomes_and_skips_them_when_redelivered(
    store: Store, settings: MantaSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines = [trace_line(f"m{i}", run_id="run_m", datapoint=f"dp{i % 2}") for i in range(5)]
    load_traces(store, lines, tmp_path)
    monkeypatch.setenv("MANTA_TEST_FAIL_ON", "m3")
    function = _worker_function(settings)
    payload = _payload(store)

    report = function.local(payload)

    assert (report["index"], report["attempt"]) == (0, 1)
    assert (report["mapped"], report["skipped"], report["errors"]) == (5, 0, 1)
    assert report["first_error"].startswith("m3: RuntimeError: cannot analyse m3")
    statuses = dict(
        store.rows(
            "SELECT entity_id, value_string FROM {db}.entity_metadata FINAL "
            "WHERE column = '__status__'"
        )
    )
    assert statuses == {"m0": "ok", "m1": "ok", "m2": "ok", "m3": "error", "m4": "ok"}

    # A second delivery of the same input (a Modal retry) maps only what is not ok yet.
    monkeypatch.delenv("MANTA_TEST_FAIL_ON")
    again = function.local({**payload, "attempt": 2})
    assert (again["mapped"], again["skipped"], again["errors"]) == (1, 4, 0)
    raw = store.rows(
        "SELECT entity_id, count() FROM {db}.entity_metadata WHERE column = 'label' "
        "GROUP BY entity_id ORDER BY entity_id"
    )
    assert raw == [("m0", 1), ("m1", 1), ("m2", 1), ("m3", 1), ("m4", 1)]


def test_worker_function_refuses_a_changed_pipeline(
    store: Store, settings: MantaSettings, tmp_path: Path
) -> None:
    load_traces(store, [trace_line("m0", run_id="run_m")], tmp_path)
    payload = _payload(store, judge_version="0123456789ab")
    with pytest.raises(PipelineDefinitionError, match="judge version mismatch") as info:
        _worker_function(settings).local(payload)
    assert "driver planned version 0123456789ab" in str(info.value)
    assert store.rows("SELECT count() FROM {db}.entity_metadata") == [(0,)]


def test_worker_function_without_persist_returns_outcomes_and_writes_nothing(
    store: Store, settings: MantaSettings, tmp_path: Path
) -> None:
    load_traces(store, [trace_line("m0", run_id="run_m", datapoint="dp9")], tmp_path)
    report = _worker_function(settings).local(_payload(store, persist=False))
    assert [(o["entity_id"], o["output"], o["error"]) for o in report["outputs"]] == [
        ("m0", {"tool_errors": 0, "label": "dp9"}, None)
    ]
    assert store.rows("SELECT count() FROM {db}.entity_metadata") == [(0,)]


# ---- the runner's use of the SDK --------------------------------------------------------


class _RecordingFunction:
    """Stands in for the deployed Function: records how ``map`` is called (no Modal here)."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def map(self, inputs: list[dict[str, Any]], **kwargs: Any) -> list[Any]:
        self.calls.append(kwargs)
        return [RuntimeError("container lost") if p["index"] == 2 else {"ok": 1} for p in inputs]


class _RecordingApp:
    def __init__(self) -> None:
        self.entered = 0
        self.exited = 0
        self.clients: list[Any] = []

    def run(self, client: Any = None) -> _RecordingApp:
        self.clients.append(client)
        return self

    def __enter__(self) -> _RecordingApp:
        self.entered += 1
        return self

    def __exit__(self, *exc: object) -> None:
        self.exited += 1


def test_modal_runner_maps_with_return_exceptions_inside_one_app_run(
    remote_settings: MantaSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    credentials: list[tuple[str, str]] = []

    def from_credentials(token_id: str, token_secret: str) -> str:
        credentials.append((token_id, token_secret))
        return "client"

    monkeypatch.setattr(modal.Client, "from_credentials", from_credentials)
    app, function = _RecordingApp(), _RecordingFunction()
    runner = ModalRunner(app, function, remote_settings)
    first = list(runner.run([{"index": 1}, {"index": 2}]))
    second = list(runner.run([{"index": 2}]))
    runner.close()

    assert first[0] == ({"index": 1}, {"ok": 1})
    assert isinstance(first[1][1], RuntimeError)
    assert second[0][0] == {"index": 2}
    assert function.calls == [{"return_exceptions": True, "order_outputs": True}] * 2
    assert (app.entered, app.exited) == (1, 1), "one ephemeral app for all rounds"
    assert credentials == [("ak-test", "as-test")] and app.clients == ["client"]
