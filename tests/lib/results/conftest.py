"""One demo store per test module with real pipeline results in it (module scope keeps the
suite lean: seeding and computing happen once per test process, each module reads a copy)."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest

from manta_lib.cli import main
from manta_lib.demo import seed_demo
from manta_lib.service import MantaService
from manta_lib.settings import load_settings
from manta_lib.store import Store
from tests.conftest import _ENV_VARS, StoreTemplates, drop_database
from tests.lib.results import defs

EVAL_RUN = "run_eval_gpt4o_mini_math"
TRAIN_RUN = "run_grpo_math_v1"


def _build_results() -> None:
    with Store.open(load_settings()) as store:
        seed_demo(store, traces=600, seed=11)
    for run in (EVAL_RUN, TRAIN_RUN):
        defs.typed.run(run, mode="local", progress=False, max_failures=0.5)
    defs.strict.run(EVAL_RUN, mode="local", progress=False)
    defs.lenient.run(EVAL_RUN, mode="local", progress=False)
    defs.history.run(TRAIN_RUN, mode="local", progress=False)


@pytest.fixture(scope="module")
def results_env(store_templates: StoreTemplates) -> Iterator[dict]:
    """Environment of a fresh database holding 600 demo traces and the test judges' results
    (a copy of one built once per test process)."""
    env = store_templates.copy("results", _build_results, prefix="r")
    with pytest.MonkeyPatch.context() as patch:
        for name in _ENV_VARS:
            patch.delenv(name, raising=False)
        for name, value in env.items():
            patch.setenv(name, value)
        yield env
    drop_database(env["CLICKHOUSE_URL"], env["MANTA_DATABASE"])


@pytest.fixture
def svc(results_env: dict) -> Iterator[MantaService]:
    with MantaService() as service:
        yield service


def run_main(
    args: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["manta", *args])
    code = 0
    try:
        main()
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def cli(results_env: dict, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):
    return lambda *args: run_main(list(args), monkeypatch, capsys)
