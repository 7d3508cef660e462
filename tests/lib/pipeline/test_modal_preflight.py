"""Modal mode refuses to start, before any work or image build, when it could not work."""

from __future__ import annotations

import pytest

from manta_lib.errors import ConfigError
from manta_lib.pipeline.modal import preflight
from manta_lib.settings import load_settings
from tests.lib import driver_defs

TOKENS = {"MODAL_TOKEN_ID": "ak-test", "MODAL_TOKEN_SECRET": "as-test"}
REMOTE = "https://ch.example.com:8443"
TRY_LOCAL = (
    "To run on this machine instead, use mode='local' (try a subset first: "
    "pipeline.run(run_id, mode='local', limit_traces=10))."
)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, manta_env: dict[str, str]) -> pytest.MonkeyPatch:
    """manta_env without CLICKHOUSE_URL: each test sets exactly what it checks."""
    monkeypatch.delenv("CLICKHOUSE_URL", raising=False)
    return monkeypatch


def _error(monkeypatch: pytest.MonkeyPatch, **env: str) -> str:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as info:
        preflight(load_settings())
    return str(info.value)


def test_reachable_server_and_tokens_pass(clean_env: pytest.MonkeyPatch) -> None:
    for name, value in {**TOKENS, "CLICKHOUSE_URL": REMOTE}.items():
        clean_env.setenv(name, value)
    preflight(load_settings())


def test_missing_tokens_name_both_variables(clean_env: pytest.MonkeyPatch) -> None:
    message = _error(clean_env, CLICKHOUSE_URL=REMOTE)
    assert message == (
        "mode='modal' cannot start: MODAL_TOKEN_ID and MODAL_TOKEN_SECRET are not set: create a "
        "token with `modal token new` (or at https://modal.com/settings/tokens) and export "
        "MODAL_TOKEN_ID and MODAL_TOKEN_SECRET. " + TRY_LOCAL
    )


def test_one_missing_token_is_named(clean_env: pytest.MonkeyPatch) -> None:
    message = _error(clean_env, CLICKHOUSE_URL=REMOTE, MODAL_TOKEN_ID="ak-test")
    assert message.startswith("mode='modal' cannot start: MODAL_TOKEN_SECRET is not set: ")
    assert "MODAL_TOKEN_ID is" not in message


def test_unset_clickhouse_url_means_embedded_store(clean_env: pytest.MonkeyPatch) -> None:
    message = _error(clean_env, **TOKENS)
    assert message == (
        "mode='modal' cannot start: CLICKHOUSE_URL is not set, so the store is the embedded chDB "
        "engine on this machine, which Modal workers cannot reach: set "
        "CLICKHOUSE_URL=https://host:8443 (a ClickHouse server reachable from the internet) with "
        "CLICKHOUSE_USER and CLICKHOUSE_PASSWORD. " + TRY_LOCAL
    )


def test_chdb_url_is_refused(clean_env: pytest.MonkeyPatch) -> None:
    message = _error(clean_env, CLICKHOUSE_URL="chdb:///data/manta", **TOKENS)
    assert message == (
        "mode='modal' cannot start: CLICKHOUSE_URL=chdb:///data/manta is an embedded chDB store "
        "on this machine, which Modal workers cannot reach: set CLICKHOUSE_URL to a ClickHouse "
        "server reachable from the internet (https://host:8443) with CLICKHOUSE_USER and "
        "CLICKHOUSE_PASSWORD. " + TRY_LOCAL
    )


@pytest.mark.parametrize(
    "url",
    [
        "http://localhost:8123",
        "http://127.0.0.1:8123",
        "http://[::1]:8123",
        "http://0.0.0.0:8123",
        "http://192.168.1.20:8123",
        "http://10.0.0.5:8123",
        "http://clickhouse.localhost:8123",
    ],
)
def test_local_and_private_hosts_are_refused(clean_env: pytest.MonkeyPatch, url: str) -> None:
    message = _error(clean_env, CLICKHOUSE_URL=url, **TOKENS)
    assert message == (
        f"mode='modal' cannot start: CLICKHOUSE_URL={url} points at this machine or a private "
        f"network, which Modal workers (in Modal's cloud) cannot reach: set CLICKHOUSE_URL to a "
        f"ClickHouse server reachable from the internet (https://host:8443). " + TRY_LOCAL
    )


def test_all_problems_come_in_one_message(clean_env: pytest.MonkeyPatch) -> None:
    message = _error(clean_env)
    assert message.count("mode='modal' cannot start") == 1
    assert "MODAL_TOKEN_ID and MODAL_TOKEN_SECRET are not set" in message
    assert "CLICKHOUSE_URL is not set" in message
    assert message.endswith(TRY_LOCAL)


def test_default_mode_fails_in_preflight_before_any_work(
    clean_env: pytest.MonkeyPatch, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pipeline.run() (mode="modal") on the embedded store stops before touching anything."""
    import manta_lib.pipeline.modal as modal_module

    def no_build(*args: object, **kwargs: object) -> None:
        raise AssertionError("the Modal app must not be defined when preflight fails")

    monkeypatch.setattr(modal_module, "build_modal_app", no_build)
    with pytest.raises(ConfigError, match="CLICKHOUSE_URL is not set"):
        driver_defs.pipeline.run("run_does_not_exist")
