"""Settings and connection errors: each names the setting and the fix, none hangs."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from manta_lib.errors import ConfigError, StoreUnavailableError
from manta_lib.settings import load_settings
from manta_lib.store import Store
from manta_lib.store.client import explain_http_error

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for name in list(os.environ):
        if name.startswith(("CLICKHOUSE_", "KESTREL_", "MODAL_", "MANTA_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("MANTA_DATA_DIR", str(tmp_path / "data"))
    return tmp_path


def test_defaults_use_the_embedded_store_under_the_data_dir(clean_env: Path) -> None:
    settings = load_settings()
    assert settings.embedded
    assert settings.clickhouse_dsn == f"chdb://{(clean_env / 'data' / 'clickhouse').resolve()}"
    assert settings.database == "manta"
    assert settings.runs_log_dir == clean_env / "data" / "runs_log"


def test_seed_environment_variables_are_read(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLICKHOUSE_URL", "https://ch.example.com:8443")
    monkeypatch.setenv("CLICKHOUSE_USER", "analyst")
    monkeypatch.setenv("CLICKHOUSE_PASSWORD", "s3cret")
    monkeypatch.setenv("KESTREL_API_URL", "https://kestrel.example.com")
    monkeypatch.setenv("KESTREL_API_KEY", "k")
    monkeypatch.setenv("MODAL_TOKEN_ID", "ak-1")
    monkeypatch.setenv("MODAL_TOKEN_SECRET", "as-1")
    monkeypatch.setenv("MANTA_DATABASE", "rl_traces")
    settings = load_settings()
    assert not settings.embedded
    assert settings.clickhouse_dsn == "https://ch.example.com:8443"
    assert settings.clickhouse_user == "analyst"
    assert settings.clickhouse_password.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(settings)
    assert settings.kestrel_api_url == "https://kestrel.example.com"
    assert settings.modal_token_id == "ak-1"
    assert settings.database == "rl_traces"


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("localhost:8123", "'localhost:8123' is not an http(s):// or chdb:/// URL"),
        ("ftp://host:21", "'ftp://host:21' is not an http(s):// or chdb:/// URL"),
        ("http://host:port", "'http://host:port' has an invalid port"),
        ("chdb://relative/path", "chdb URL needs an absolute path"),
    ],
)
def test_malformed_clickhouse_url_names_the_variable_and_the_fix(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, url: str, fragment: str
) -> None:
    monkeypatch.setenv("CLICKHOUSE_URL", url)
    with pytest.raises(ConfigError) as excinfo:
        load_settings()
    message = str(excinfo.value)
    assert message.startswith("invalid configuration: CLICKHOUSE_URL: ")
    assert fragment in message
    assert "set CLICKHOUSE_URL to http(s)://host:port" in message


def test_bad_database_name_is_rejected(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MANTA_DATABASE", "manta; DROP TABLE x")
    with pytest.raises(ConfigError, match="MANTA_DATABASE: .*letters, digits and underscores"):
        load_settings()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_unreachable_server_fails_fast_with_the_fix(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"http://127.0.0.1:{_free_port()}"
    monkeypatch.setenv("CLICKHOUSE_URL", url)
    with pytest.raises(StoreUnavailableError) as excinfo:
        Store.open(load_settings())
    assert str(excinfo.value) == (
        f"cannot reach ClickHouse at CLICKHOUSE_URL={url} (connection refused). Start the "
        f"server or fix CLICKHOUSE_URL, or unset it to use the embedded chDB store."
    )


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP server that accepts connections and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield int(server.getsockname()[1])
    stop.set()
    thread.join()
    for conn in accepted:
        conn.close()
    server.close()


def test_server_that_never_answers_times_out_instead_of_hanging(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, silent_server: int
) -> None:
    url = f"http://127.0.0.1:{silent_server}"
    monkeypatch.setenv("CLICKHOUSE_URL", url)
    monkeypatch.setenv("MANTA_CONNECT_TIMEOUT_S", "0.5")
    started = time.monotonic()
    with pytest.raises(StoreUnavailableError) as excinfo:
        Store.open(load_settings())
    assert time.monotonic() - started < 5
    assert (
        f"cannot reach ClickHouse at CLICKHOUSE_URL={url} "
        "(no answer within MANTA_CONNECT_TIMEOUT_S=0.5 s)" in str(excinfo.value)
    )


def test_wrong_password_message_names_user_and_password_settings(clean_env: Path) -> None:
    settings = load_settings(CLICKHOUSE_URL="http://ch:8123", CLICKHOUSE_USER="bob")
    # The text ClickHouse returns for a bad password (error code 516).
    server_text = (
        "HTTPDriver for http://ch:8123 received ClickHouse error code 516\n Code: 516. "
        "DB::Exception: bob: Authentication failed: password is incorrect, or there is no "
        "user with such name. (AUTHENTICATION_FAILED)"
    )
    assert explain_http_error(server_text, settings) == (
        "ClickHouse at CLICKHOUSE_URL=http://ch:8123 rejected user 'bob': wrong CLICKHOUSE_USER "
        "or CLICKHOUSE_PASSWORD. Set them to valid credentials."
    )


HOLDER = textwrap.dedent(
    """
    import sys, time
    from manta_lib.settings import load_settings
    from manta_lib.store import Store
    store = Store.open(load_settings())
    print("open", flush=True)
    time.sleep(float(sys.argv[1]))
    store.close()
    """
)


def _hold_store(env: dict[str, str], seconds: float) -> subprocess.Popen[str]:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(seconds)], env=env, stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout is not None
    assert holder.stdout.readline().strip() == "open"
    return holder


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "manta_lib.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
        cwd=REPO,
    )


@pytest.mark.slow
def test_store_locked_by_another_process_gives_a_clear_error(clean_env: Path) -> None:
    env = {**os.environ, "MANTA_DATA_DIR": str(clean_env / "locked"), "MANTA_LOCK_TIMEOUT_S": "1"}
    holder = _hold_store(env, 30)
    try:
        result = _cli(env, "runs-overview")
    finally:
        holder.kill()
        holder.wait()
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    # chDB's own "Code: 76. DB::Exception: Cannot lock file" line never reaches the user.
    assert "Cannot lock file" not in result.stderr and "Code: 76" not in result.stderr
    path = (clean_env / "locked" / "clickhouse").resolve()
    text = " ".join(result.stderr.split())
    # the holder is named by pid and command line
    holder_text = f"is in use by another process (process {holder.pid}: {sys.executable} -c"
    assert f"the embedded ClickHouse store at {path} {holder_text}" in text
    assert "MANTA_LOCK_TIMEOUT_S=1 s" in text


@pytest.mark.slow
def test_a_second_process_waits_for_the_store_and_says_so(clean_env: Path) -> None:
    env = {**os.environ, "MANTA_DATA_DIR": str(clean_env / "shared"), "MANTA_LOCK_TIMEOUT_S": "120"}
    holder = _hold_store(env, 120)
    cli = subprocess.Popen(
        [sys.executable, "-m", "manta_lib.cli", "runs-overview"],
        env={**env, "COLUMNS": "400"},
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        assert cli.stderr is not None
        first = cli.stderr.readline()  # blocks until the waiting message (or the end)
        holder.kill()  # the holder goes away: the lock is released
        holder.wait()
        rest = cli.stderr.read()
        assert cli.wait(timeout=90) == 0, first + rest
    finally:
        holder.kill()
        cli.kill()
    text = " ".join(first.split())
    assert f"is in use by process {holder.pid}: {sys.executable} -c" in text
    assert "; waiting up to 120 s for it" in text
    assert "waiting up to" not in rest  # said once
    assert "Code: 76" not in first + rest
