"""End to end in a real browser: ``dagster dev`` over demo data, one partition launched from the UI.

``dagster dev -w workspace.yaml`` runs as a subprocess (temporary ``DAGSTER_HOME``, 300 demo
traces, runs registered); headless Chromium opens the trace-level asset, the launch dialog
picks ONE ``run|shard`` partition, and the run must succeed (polled through Dagster's GraphQL
API). The run process opens the embedded chDB store while the webserver, daemon and code
server are alive, so the test also shows that none of them holds it. After ``dagster dev`` is
stopped, the store must hold the trace-level rows of exactly that partition. A screenshot of
the asset graph goes to ``artifacts/dagster_asset_graph.png``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest

from manta_lib.settings import MantaSettings
from tests.dagster.cli_helpers import (
    BIN,
    REPO,
    RUN,
    TRACE_COLUMNS,
    busiest_shard,
    expected_entities,
    make_dagster_env,
    run,
    stored,
)

pytestmark = [pytest.mark.serial, pytest.mark.slow, pytest.mark.timeout(420)]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOT = REPO / "artifacts" / "dagster_asset_graph.png"
ASSET = "tool_errors/trace"
LOCATION = "manta_dagster.definitions"
START_TIMEOUT_S = 180  # dagster dev on a loaded 2-core machine can take minutes to start
RUN_TIMEOUT_S = 60
UI_TIMEOUT_MS = 30_000
TERMINAL = {"SUCCESS", "FAILURE", "CANCELED"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class DagsterDev:
    """A ``dagster dev`` process group on a free port, its output in a log file."""

    def __init__(
        self,
        env: dict[str, str],
        log_path: Path,
        *,
        port: int | None = None,
        command: list[str] | None = None,
    ) -> None:
        """``command`` (default: ``dagster dev`` on ``port``) must serve Dagster on ``port``."""
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._log: IO[bytes] = log_path.open("wb")
        self.proc = subprocess.Popen(
            command
            or [
                str(BIN / "dagster"),
                "dev",
                "-w",
                "workspace.yaml",
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
            ],
            cwd=REPO,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stop() reaches every child
        )

    def tail(self, lines: int = 60) -> str:
        """The last lines of the dagster dev log, for failure messages."""
        text = self.log_path.read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def fail(self, message: str) -> None:
        pytest.fail(f"{message}\n--- dagster dev log (tail) ---\n{self.tail()}")

    def graphql(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        """POST a GraphQL query; returns ``data`` (fails on GraphQL errors)."""
        request = urllib.request.Request(
            f"{self.url}/graphql",
            data=json.dumps({"query": query, "variables": variables or {}}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            payload: dict[str, Any] = json.load(response)
        if payload.get("errors"):
            self.fail(f"GraphQL errors: {payload['errors']}")
        data: dict[str, Any] = payload["data"]
        return data

    def wait_until_ready(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Wait for the webserver (``/server_info``) and the loaded code location."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.fail(f"dagster dev exited with code {self.proc.returncode}")
            try:
                with urllib.request.urlopen(f"{self.url}/server_info", timeout=2):
                    pass
                entries = self.graphql(
                    "{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus "
                    "locationOrLoadError { __typename ... on PythonError { message } } } } } }"
                )["workspaceOrError"]["locationEntries"]
                location = next((e for e in entries if e["name"] == LOCATION), None)
                if location and location["loadStatus"] == "LOADED":
                    if location["locationOrLoadError"]["__typename"] != "RepositoryLocation":
                        self.fail(f"code location failed to load: {location}")
                    return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.5)
        self.fail(f"dagster dev not ready within {timeout_s:g} s at {self.url}")

    def runs_of(self, partition: str) -> list[dict[str, Any]]:
        """Runs tagged with ``partition`` (id, status, asset selection)."""
        data = self.graphql(
            """
            query Runs($partition: String!) {
              runsOrError(filter: {tags: [{key: "dagster/partition", value: $partition}]}) {
                __typename
                ... on Runs { results { runId status assetSelection { path } } }
              }
            }
            """,
            {"partition": partition},
        )["runsOrError"]
        if data["__typename"] != "Runs":
            self.fail(f"runsOrError: {data}")
        runs: list[dict[str, Any]] = data["results"]
        return runs

    def wait_for_run(self, partition: str) -> dict[str, Any]:
        """The run of ``partition`` once terminal (the UI queued it; the daemon starts it)."""
        deadline = time.monotonic() + RUN_TIMEOUT_S
        runs: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            runs = self.runs_of(partition)
            if runs and all(r["status"] in TERMINAL for r in runs):
                if len(runs) != 1:
                    self.fail(f"expected one run for {partition}, got {runs}")
                return runs[0]
            time.sleep(1)
        self.fail(f"no finished run for {partition} within {RUN_TIMEOUT_S} s: {runs}")
        raise AssertionError  # unreachable: fail() raises

    def stop(self) -> None:
        """SIGINT the whole group (dagster dev's clean shutdown), SIGKILL after 20 s."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGINT)
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
            except ProcessLookupError:
                pass
        # Children that outlived dagster dev (code server, daemon) would hold their sockets.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self._log.close()


@pytest.fixture
def dagster_dev(
    manta_env: dict[str, str], settings: MantaSettings, tmp_path: Path
) -> Iterator[DagsterDev]:
    """``dagster dev`` over 300 demo traces with the runs registered; stopped after the test."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (CI installs it)")
    env = make_dagster_env(manta_env, settings, tmp_path)
    run(["manta", "dagster", "register-runs"], env, [])
    dev = DagsterDev(env, tmp_path / "dagster_dev.log")
    try:
        dev.wait_until_ready()
        yield dev
    finally:
        dev.stop()


def launch_one_partition(dev: DagsterDev, run_id: str, shard: str, screenshot: Path) -> None:
    """In Chromium: the asset page, Materialize…, pick ``run_id`` and ``shard``, launch; then
    a screenshot of the asset group's graph once the run is done."""
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import Page, expect, sync_playwright

    def pick(page: Page, value: str) -> None:
        # Each dimension is a tag selector whose menu has a filter box and one checkbox item per
        # partition key; the first unfilled selector is the next dimension (run, then shard).
        filter_box = page.get_by_placeholder("Filter partitions")
        # The previous dimension's menu closes asynchronously: two filter boxes would make the
        # strict locator below ambiguous, so wait until none is open before opening the next.
        expect(filter_box).to_have_count(0)
        page.get_by_text("Select a partition or create one").first.click()
        filter_box.fill(value)
        page.get_by_role("menuitem").filter(has_text=value).filter(
            has_not_text="Add partition"
        ).first.click()
        page.keyboard.press("Escape")
        expect(filter_box).to_have_count(0)

    # The first-visit "Join the Dagster community" dialog would cover the page: mark it seen.
    dev.graphql("mutation { setNuxSeen }")
    assert dev.graphql("{ shouldShowNux }") == {"shouldShowNux": False}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.set_default_timeout(UI_TIMEOUT_MS)
        try:
            page.goto(f"{dev.url}/assets/{ASSET}", wait_until="domcontentloaded")
            page.get_by_role("button", name="Materialize…").click()
            dialog = page.get_by_role("dialog").filter(has_text="Launch runs to materialize")
            dialog.get_by_text("Partition selection").wait_for()
            pick(page, run_id)
            pick(page, shard)
            dialog.get_by_text("1 partition", exact=True).wait_for()
            dialog.get_by_role("button", name="Launch 1 run").click()
            dialog.wait_for(state="hidden")

            finished = dev.wait_for_run(f"{run_id}|{shard}")
            assert finished["status"] == "SUCCESS", f"run {finished} did not succeed"
            assert finished["assetSelection"] == [{"path": ASSET.split("/")}], finished

            page.goto(
                f"{dev.url}/locations/{LOCATION}/asset-groups/{ASSET.split('/')[0]}",
                wait_until="domcontentloaded",
            )
            page.get_by_text("Latest event").first.wait_for()
            page.wait_for_timeout(1500)  # let the graph layout settle before the picture
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(screenshot))
        except (PlaywrightError, AssertionError) as exc:
            failure = screenshot.with_name("dagster_ui_failure.png")
            failure.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(failure))
            dev.fail(f"UI step failed ({exc}); screenshot: {failure}")
        finally:
            browser.close()


def test_one_partition_launched_from_the_ui(
    dagster_dev: DagsterDev, settings: MantaSettings, tmp_path: Path
) -> None:
    shard = busiest_shard(settings)
    started = time.perf_counter()
    shot = tmp_path / "dagster_asset_graph.png"
    launch_one_partition(dagster_dev, RUN, f"{shard:02d}", shot)
    ui_seconds = time.perf_counter() - started
    dagster_dev.stop()

    found = stored(settings)
    expected = expected_entities(settings, shard)
    assert set(found) == {(RUN, "trace")}, f"only the launched partition's level: {sorted(found)}"
    assert set(found[(RUN, "trace")]) == expected["trace"]
    assert all(columns >= TRACE_COLUMNS for columns in found[(RUN, "trace")].values())

    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(shot, SCREENSHOT)
    assert SCREENSHOT.stat().st_size > 10_000
    print(f"UI launch to success: {ui_seconds:.1f} s; screenshot {SCREENSHOT}")
