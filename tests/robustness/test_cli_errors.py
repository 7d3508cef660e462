"""No traceback reaches a user (issue 26, point 10): bad output paths, a full disk, deep
brackets, impossible collector options, unreadable inputs, a bad DAGSTER_HOME, garbage
MANTA_LLM_PRICES, an over-long MANTA_DATABASE, a pipeline module that does not compile, and a
ClickHouse server that answers /ping but never a query. Each is one ``error:`` line and a
non-zero exit code, through the real entry point."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from manta_lib.errors import ConfigError, QueryError, StoreUnavailableError
from manta_lib.llm.settings import load_llm_settings
from manta_lib.results import expr
from manta_lib.settings import load_settings
from manta_lib.store import Store
from tests.lib.results import defs
from tests.lib.results.conftest import run_main

# Seeded stores or seconds per test: make test runs them, make check leaves them out.
pytestmark = pytest.mark.slow

DEEP = "(" * 5000 + "tool_errors > 0" + ")" * 5000


@pytest.fixture
def cli(
    store: Store, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> object:
    return lambda *args: run_main(list(args), monkeypatch, capsys)


def clean_error(code: int, err: str, *words: str, exit_code: int = 1) -> None:
    assert code == exit_code, err
    assert "Traceback" not in err, err
    for word in words:
        assert word in err, err


@pytest.fixture
def with_results(store: Store, tmp_path: Path) -> str:
    """A run of two traces with results of the ``typed_results`` judge."""
    from tests.lib.builders import load_traces, trace_line

    lines = [trace_line(f"t_{n}", run_id="run_cli") for n in (1, 2)]
    load_traces(store, lines, tmp_path)
    defs.typed.run("run_cli", mode="local", progress=False, max_failures=1.0)
    return "typed_results"


def test_results_output_to_missing_directory_and_full_device(cli, with_results: str) -> None:
    code, _, err = cli("results", with_results, "-o", "/nonexistent-dir/x.csv")
    clean_error(code, err, "No such file or directory", "/nonexistent-dir/x.csv")
    code, _, err = cli("results", with_results, "-f", "csv", "-o", "/dev/full")
    clean_error(code, err, "No space left on device")


def test_export_to_an_impossible_directory(cli) -> None:
    code, _, err = cli("export", "-o", "/proc/nope")
    clean_error(code, err, "/proc/nope")


def test_deep_brackets_name_the_limit(cli) -> None:
    code, _, err = cli("results", "any", "--where", DEEP)
    limit = expr.MAX_NESTING
    with pytest.raises(QueryError, match=f"nested more than {limit} levels"):
        expr.parse_condition(DEEP)
    assert code == 1 and "Traceback" not in err and len(err) < 2000
    assert expr.parse_condition("(" * limit + "a > 0" + ")" * limit) is not None


def test_collect_options_that_cannot_work(cli) -> None:
    code, _, err = cli("collect", "--max-body-mb", "inf", "--port", "0")
    clean_error(code, err, "--max-body-mb", exit_code=2)
    code, _, err = cli("collect", "--host", "999.1.1.1", "--port", "0")
    clean_error(code, err, "999.1.1.1", exit_code=2)


def test_import_of_an_unreadable_file(cli) -> None:
    code, _, err = cli("import", "/proc/self/mem")
    clean_error(code, err, "cannot read /proc/self/mem")


def test_pipeline_module_with_a_syntax_error(
    cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "broken_judge.py").write_text("def judge(:\n    pass\n")
    monkeypatch.chdir(tmp_path)
    code, _, err = cli("llm-estimate", "broken_judge:pipeline", "run_x")
    clean_error(code, err, "broken_judge.py:1", "invalid syntax")


def test_bad_dagster_home(cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "missing"))
    code, _, err = cli("dagster", "register-runs")
    clean_error(code, err, "DAGSTER_HOME=", "not an existing directory")


def test_garbage_llm_prices_and_long_database(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MANTA_LLM_PRICES", "garbage")
    with pytest.raises(ConfigError, match="MANTA_LLM_PRICES: 'garbage' is not JSON"):
        load_llm_settings()
    monkeypatch.setenv("MANTA_DATABASE", "a" * 300)
    with pytest.raises(ConfigError, match="MANTA_DATABASE is 300 characters long"):
        load_settings()


class _PingOnly(BaseHTTPRequestHandler):
    """Answers /ping like ClickHouse, then never answers a query."""

    stop = threading.Event()

    def do_GET(self) -> None:  # noqa: N802 - the http.server API
        if self.path.startswith("/ping"):
            self.send_response(200)
            self.send_header("Content-Length", "4")
            self.end_headers()
            self.wfile.write(b"Ok.\n")
            return
        self.stop.wait(60)

    do_POST = do_GET  # noqa: N815

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def stalling_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _PingOnly)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    _PingOnly.stop.set()
    server.shutdown()
    server.server_close()


def test_server_that_never_answers_a_query_is_bounded_by_the_query_timeout(
    stalling_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLICKHOUSE_URL", stalling_server)
    monkeypatch.setenv("MANTA_QUERY_TIMEOUT_S", "1")
    started = time.monotonic()
    with pytest.raises(StoreUnavailableError, match="MANTA_QUERY_TIMEOUT_S=1 s"):
        Store.open(load_settings())
    assert time.monotonic() - started < 60  # was 300 s before the query timeout was a setting
