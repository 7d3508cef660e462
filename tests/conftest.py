"""Shared fixtures: a real embedded ClickHouse (chDB) per test process, one database per test.

chDB allows one store path per process, so every test in a process shares one path and gets
its own database (``MANTA_DATABASE``); tests never see each other's rows. Each database is
dropped after its test (or module): in one process, opening the embedded store gets slower
with every database the store holds, so a worker running hundreds of tests would slow down.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from clickhouse_connect.driver.exceptions import ClickHouseError

from manta_lib.errors import MantaError
from manta_lib.settings import MantaSettings, load_settings
from manta_lib.store import Store

# A test run started in the background (`nohup ... &` without job control) ignores SIGINT, and
# child processes inherit that: the Ctrl-C tests send it to children that must receive it.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

_ENV_VARS = (
    "CLICKHOUSE_URL",
    "CLICKHOUSE_USER",
    "CLICKHOUSE_PASSWORD",
    "KESTREL_API_URL",
    "KESTREL_API_KEY",
    "MODAL_TOKEN_ID",
    "MODAL_TOKEN_SECRET",
    "MANTA_DATA_DIR",
    "MANTA_DATABASE",
    "MANTA_RUNS_LOG_DIR",
)


def drop_database(clickhouse_url: str, database: str) -> None:
    """Drop a test's database once the test is done with it; skipped (the rows stay, nothing
    fails) when another process still holds the embedded store."""
    path = Path(clickhouse_url.removeprefix("chdb://"))
    if not (path / "metadata" / f"{database}.sql").exists():
        return  # never created: no need to start the engine in this process
    try:
        settings = load_settings(
            CLICKHOUSE_URL=clickhouse_url, MANTA_DATABASE=database, MANTA_LOCK_TIMEOUT_S=0
        )
        with Store.open(settings, ensure_schema=False) as store:
            store.command("DROP DATABASE IF EXISTS {db} SYNC")
    except (MantaError, ClickHouseError):
        pass


def clone_database(settings: MantaSettings, source: str) -> None:
    """Fill ``settings.database`` (created, with the schema) with a copy of every table of
    ``source`` on the same store; the results catalog is refilled by its materialized view."""
    with Store.open(settings) as store:
        tables = store.rows(
            "SELECT name FROM system.tables WHERE database = {s:String} "
            "AND engine != 'MaterializedView' AND name != 'entity_metadata_catalog'",
            {"s": source},
        )
        for (table,) in tables:
            store.command(f"CREATE TABLE IF NOT EXISTS {{db}}.`{table}` AS `{source}`.`{table}`")
            store.command(f"INSERT INTO {{db}}.`{table}` SELECT * FROM `{source}`.`{table}`")


class StoreTemplates:
    """Seeded databases built once per test process and copied for each module that asks for
    one: a copy takes a fraction of a seed plus pipeline runs, and every module still gets a
    database (and data and runs-log directories) of its own to read and write."""

    def __init__(self, chdb_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
        self._chdb_path = chdb_path
        self._tmp = tmp_path_factory
        self._built: dict[str, dict[str, str]] = {}
        self._values: dict[str, Any] = {}

    def _env(self, prefix: str) -> dict[str, str]:
        tmp = self._tmp.mktemp(prefix)
        return {
            "CLICKHOUSE_URL": f"chdb://{self._chdb_path}",
            "MANTA_DATABASE": f"{prefix}_{uuid.uuid4().hex[:12]}",
            "MANTA_DATA_DIR": str(tmp / "data"),
            "MANTA_RUNS_LOG_DIR": str(tmp / "runs_log"),
        }

    def copy(self, name: str, build: Callable[[], Any], prefix: str = "t") -> dict[str, str]:
        """The environment of a new database holding a copy of template ``name``; the template
        is made on first use by ``build()``, run with its environment set (what it returns is
        :meth:`value`)."""
        if name not in self._built:
            env = self._env(f"tpl_{name}")
            with pytest.MonkeyPatch.context() as patch:
                for var in _ENV_VARS:
                    patch.delenv(var, raising=False)
                for var, value in env.items():
                    patch.setenv(var, value)
                self._values[name] = build()
            self._built[name] = env
        template = self._built[name]
        env = self._env(prefix)
        for var in ("MANTA_DATA_DIR", "MANTA_RUNS_LOG_DIR"):
            if Path(template[var]).exists():
                shutil.copytree(template[var], env[var])
        settings = load_settings(
            CLICKHOUSE_URL=env["CLICKHOUSE_URL"], MANTA_DATABASE=env["MANTA_DATABASE"]
        )
        clone_database(settings, template["MANTA_DATABASE"])
        return env

    def value(self, name: str) -> Any:
        """What the ``build()`` of template ``name`` returned."""
        return self._values[name]

    def drop_all(self) -> None:
        for env in self._built.values():
            drop_database(env["CLICKHOUSE_URL"], env["MANTA_DATABASE"])


@pytest.fixture(scope="session")
def store_templates(
    chdb_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[StoreTemplates]:
    """This test process's :class:`StoreTemplates`."""
    templates = StoreTemplates(chdb_path, tmp_path_factory)
    yield templates
    templates.drop_all()


@pytest.fixture(scope="session")
def chdb_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One chDB directory for this test process."""
    return tmp_path_factory.mktemp("chdb")


@pytest.fixture
def manta_env(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, chdb_path: Path
) -> Iterator[dict[str, str]]:
    """A clean environment pointing Manta at the shared chDB path and a fresh database."""
    for name in _ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    env = {
        "CLICKHOUSE_URL": f"chdb://{chdb_path}",
        "MANTA_DATABASE": f"t_{uuid.uuid4().hex[:12]}",
        "MANTA_DATA_DIR": str(tmp_path / "data"),
        "MANTA_RUNS_LOG_DIR": str(tmp_path / "runs_log"),
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    yield env
    drop_database(env["CLICKHOUSE_URL"], env["MANTA_DATABASE"])


@pytest.fixture
def settings(manta_env: dict[str, str]) -> MantaSettings:
    return load_settings()


@pytest.fixture
def store(settings: MantaSettings) -> Iterator[Store]:
    """An open store on a fresh database (schema created), closed after the test."""
    with Store.open(settings) as opened:
        yield opened
        # Dropped while this connection still runs the embedded engine: the drop after the
        # test (``manta_env``) then finds nothing and needs no second engine start.
        if not opened._closed:
            with contextlib.suppress(MantaError, ClickHouseError):
                opened.command("DROP DATABASE IF EXISTS {db} SYNC")


@pytest.fixture(autouse=True)
def _forget_judges_made_by_the_test() -> Iterator[None]:
    """Judges a test created (a reloaded example's module-level judge among them) leave the
    process's live set when it ends: an ``LLMRunScope()`` of a later test in the same worker
    preflights every live judge, and would reach for the earlier test's stopped fake server."""
    from manta_lib.llm.client import LLMJudge

    before = set(map(id, LLMJudge.live()))
    yield
    with LLMJudge._live_lock:
        for judge in list(LLMJudge._live):
            if id(judge) not in before:
                LLMJudge._live.discard(judge)
