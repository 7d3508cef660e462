"""A bad environment is one line naming the variable, its value and the fix; the default store
is the same for every process of a user; an idle service never holds the embedded store."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from manta_lib.errors import ConfigError
from manta_lib.settings import default_data_dir, load_settings, log_level
from manta_lib.store import Store
from manta_lib.store.client import describe_store

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for name in list(os.environ):
        if name.startswith(("CLICKHOUSE_", "KESTREL_", "MODAL_", "MANTA_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    return tmp_path


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("MANTA_CONNECT_TIMEOUT_S", "-1", "MANTA_CONNECT_TIMEOUT_S='-1': Input should be greater"),
        (
            "MANTA_CONNECT_TIMEOUT_S",
            "nan",
            "MANTA_CONNECT_TIMEOUT_S='nan': Input should be a finite",
        ),
        ("MANTA_CONNECT_TIMEOUT_S", "0", "MANTA_CONNECT_TIMEOUT_S='0': Input should be greater"),
        ("MANTA_LOCK_TIMEOUT_S", "inf", "MANTA_LOCK_TIMEOUT_S='inf': Input should be a finite"),
        ("MANTA_LOCK_TIMEOUT_S", "-3", "MANTA_LOCK_TIMEOUT_S='-3': Input should be greater"),
        ("MANTA_FLUSH_SECONDS", "nan", "MANTA_FLUSH_SECONDS='nan': Input should be a finite"),
        ("MANTA_DATA_DIR", "/etc/passwd", "MANTA_DATA_DIR='/etc/passwd': /etc/passwd is a file"),
        ("MANTA_DATA_DIR", "/etc/passwd/sub", "/etc/passwd is a file, not a directory"),
        ("MANTA_RUNS_LOG_DIR", "/etc/passwd", "MANTA_RUNS_LOG_DIR='/etc/passwd': /etc/passwd is"),
        ("CLICKHOUSE_URL", "chdb:///etc/passwd", "/etc/passwd is a file, not a directory: the"),
    ],
)
def test_a_bad_variable_is_one_config_error(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, variable: str, value: str, message: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as excinfo:
        load_settings()
    assert message in str(excinfo.value)
    assert "another process" not in str(excinfo.value)


def test_log_level_names_the_choices() -> None:
    assert log_level(None) == logging.INFO
    assert log_level(" debug ") == logging.DEBUG
    with pytest.raises(ConfigError, match="MANTA_LOG_LEVEL='bogus' is not a log level; use one"):
        log_level("bogus")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("MANTA_LOG_LEVEL", "bogus", "error: MANTA_LOG_LEVEL='bogus' is not a log level"),
        ("MANTA_DATA_DIR", "/etc/passwd", "MANTA_DATA_DIR='/etc/passwd': /etc/passwd is a file"),
        ("CLICKHOUSE_URL", "chdb:///etc/passwd", "/etc/passwd is a file, not a directory"),
        ("MANTA_CONNECT_TIMEOUT_S", "nan", "MANTA_CONNECT_TIMEOUT_S='nan'"),
    ],
)
def test_the_cli_prints_one_line_and_exits_1(
    clean_env: Path, variable: str, value: str, message: str
) -> None:
    env = {**os.environ, variable: value, "COLUMNS": "500"}
    result = subprocess.run(
        [sys.executable, "-m", "manta_lib.cli", "runs-overview"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert message in result.stderr


def test_the_default_store_is_the_per_user_data_dir_whatever_the_cwd(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = clean_env / "xdg" / "manta"
    assert default_data_dir() == expected
    for cwd in (clean_env, Path("/")):
        monkeypatch.chdir(cwd)
        settings = load_settings()
        assert settings.data_dir == expected
        assert settings.chdb_path == expected / "clickhouse"
        assert settings.runs_log_dir == expected / "runs_log"


def test_the_store_says_where_it_is_and_why(
    clean_env: Path, chdb_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="manta_lib.store.client")
    database = f"env_{uuid.uuid4().hex[:10]}"
    settings = load_settings(clickhouse_url=f"chdb://{chdb_path}", database=database)
    with Store.open(settings) as store:
        described = store.describe()
    assert described == (
        f"embedded chDB at {chdb_path} (CLICKHOUSE_URL=chdb://{chdb_path}), database {database}"
    )
    announced = [r for r in caplog.records if "Manta store" in r.getMessage()]
    # one short line at INFO (it fits a terminal), the settings that chose it at DEBUG
    assert [(r.levelno, r.getMessage()) for r in announced] == [
        (logging.INFO, f"Manta store: {chdb_path}, database {database}, 0 traces"),
        (logging.DEBUG, f"Manta store details: {described}"),
    ]
    assert "CLICKHOUSE_URL is unset" not in caplog.text  # it is set
    with Store.open(settings):
        pass
    assert len([r for r in caplog.records if "Manta store:" in r.getMessage()]) == 1  # once

    unset = load_settings(database=database)  # CLICKHOUSE_URL unset: the per-user store
    assert describe_store(unset) == (
        f"embedded chDB at {clean_env / 'xdg' / 'manta' / 'clickhouse'} "
        f"(MANTA_DATA_DIR={clean_env / 'xdg' / 'manta'}; CLICKHOUSE_URL is unset), "
        f"database {database}"
    )


CHILD = textwrap.dedent(
    """
    from manta import MantaService
    from manta_lib.settings import load_settings
    from manta_lib.store.client import lock_holder

    path = load_settings().chdb_path
    svc = MantaService()
    print(svc.count_traces(), lock_holder(path))   # released after the call
    with MantaService() as held:
        held.count_traces()
        print(lock_holder(path))                    # held for the block
    print(lock_holder(path))
    """
)


@pytest.mark.slow
def test_an_idle_service_does_not_hold_the_embedded_store(clean_env: Path) -> None:
    env = {**os.environ, "MANTA_DATA_DIR": str(clean_env / "data")}
    result = subprocess.run(
        [sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.split("\n")
    assert lines[0] == "0 None"
    assert lines[1].startswith("process ")
    assert lines[2] == "None"
