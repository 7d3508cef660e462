"""Shared fixtures: a real embedded ClickHouse (chDB) per test process, one database per test.

chDB allows one store path per process, so every test in a process shares one path and gets
its own database (``MANTA_DATABASE``); tests never see each other's rows. Each database is
dropped after its test (or module): in one process, opening the embedded store gets slower
with every database the store holds, so a worker running hundreds of tests would slow down.
"""

from __future__ import annotations

import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

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


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """With ``--dist loadgroup`` the tests of a module that share a module-scoped fixture (a
    seeded store, a server) run in one worker, so the fixture is built once, not per worker."""
    for item in items:
        info = getattr(item, "_fixtureinfo", None)
        defs = info.name2fixturedefs.values() if info is not None else ()
        if any(d[-1].scope == "module" for d in defs if d):
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::")[0]))


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
