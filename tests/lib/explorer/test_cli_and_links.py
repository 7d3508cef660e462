"""``manta explore`` as a process, the URL helpers Dagster metadata uses, and chart geometry."""

from __future__ import annotations

import html
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from email.message import Message
from pathlib import Path

import pytest

from manta_lib.errors import QueryError
from manta_lib.explorer import links
from manta_lib.explorer.charts import Series, SeriesPoint, line_chart, nice_ticks
from manta_lib.explorer.pages_results import _row

REPO = Path(__file__).resolve().parents[3]
MANTA = Path(sys.executable).parent / "manta"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def clean_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CLICKHOUSE_", "MANTA_"))}
    env["MANTA_DATA_DIR"] = str(tmp_path / "data")  # its own embedded store
    return env


def test_non_loopback_host_needs_the_explicit_flag(tmp_path: Path) -> None:
    result = subprocess.run(
        [str(MANTA), "explore", "--host", "0.0.0.0", "--port", str(free_port())],
        env=clean_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "--allow-remote" in result.stderr and "no authentication" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
@pytest.mark.serial  # timing-sensitive: run one at a time, after the parallel pass
def test_explore_serves_pages_and_warns_when_bound_beyond_loopback(tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [str(MANTA), "explore", "--host", "0.0.0.0", "--port", str(port), "--allow-remote"],
        env=clean_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
                    body = response.read().decode()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    pytest.fail(
                        f"manta explore did not answer: {proc.stderr.read() if proc.stderr else ''}"
                    )
                time.sleep(0.2)
        assert "The store has no traces yet" in body
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        _, stderr = proc.communicate(timeout=30)
    assert "NO authentication" in stderr


HOLDER = (
    "import sys, time\n"
    "from manta import MantaService\n"
    "with MantaService() as svc:  # a notebook holding the embedded store\n"
    "    svc.count_traces()\n"
    "    print('open', flush=True)\n"
    "    time.sleep(float(sys.argv[1]))\n"
)


def _get(url: str, timeout: float = 60) -> tuple[int, Message, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.headers, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read().decode()


@pytest.mark.slow
@pytest.mark.serial  # timing-sensitive: run one at a time, after the parallel pass
def test_a_held_store_gives_a_503_page_within_seconds_naming_the_holder(tmp_path: Path) -> None:
    env = {**clean_env(tmp_path), "MANTA_LOCK_TIMEOUT_S": "60"}  # the CLI's wait is longer
    port = free_port()
    explorer = subprocess.Popen(
        [str(MANTA), "explore", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    holder = None
    try:
        deadline = time.monotonic() + 60
        while True:  # up, and the store is free: a page answers 200
            try:
                status, _, _ = _get(f"http://127.0.0.1:{port}/", timeout=5)
                break
            except OSError:
                assert time.monotonic() < deadline and explorer.poll() is None
                time.sleep(0.2)
        assert status == 200
        holder = subprocess.Popen(
            [sys.executable, "-c", HOLDER, "120"], env=env, stdout=subprocess.PIPE, text=True
        )
        assert holder.stdout is not None and holder.stdout.readline().strip() == "open"

        started = time.monotonic()
        status, headers, body = _get(f"http://127.0.0.1:{port}/traces")
        waited = time.monotonic() - started
        assert status == 503
        assert 4 < waited < 15  # it waited for the store, then gave up (not after 30 s)
        text = " ".join(html.unescape(body).split())
        assert f"process {holder.pid}: {sys.executable} -c import sys, time" in text
        assert headers.get("Retry-After") == "5"
        assert '<meta http-equiv="refresh" content="5">' in body  # retries by itself
        print(f"503 after {waited:.1f} s")
        # an htmx request (a filter form) gets a fragment that asks for itself again in 5 s
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/traces?run=r", headers={"HX-Request": "true"}
        )
        try:
            urllib.request.urlopen(request, timeout=60)
            pytest.fail("the held store did not give a 503")
        except urllib.error.HTTPError as exc:
            assert exc.code == 503
            fragment = exc.read().decode()
        assert 'hx-trigger="load delay:5s"' in fragment and "<html" not in fragment
        assert 'hx-get="http://127.0.0.1:' in fragment and "/traces?run=r" in fragment

        holder.kill()
        holder.wait()
        status, _, body = _get(f"http://127.0.0.1:{port}/traces")
        assert status == 200 and 'http-equiv="refresh"' not in body  # retried: store free
    finally:
        if holder is not None:
            holder.kill()
            holder.wait()
        os.killpg(explorer.pid, signal.SIGINT)
        explorer.wait(timeout=30)


def test_link_helpers_build_explorer_and_dagster_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MANTA_EXPLORER_URL", "http://explorer.internal:8050/")
    monkeypatch.setenv("MANTA_DAGSTER_URL", "http://dagster.internal:3000")
    assert links.trace_url("tr 1/a") == "http://explorer.internal:8050/traces/tr%201%2Fa"
    assert links.run_url("run_a") == "http://explorer.internal:8050/runs/run_a"
    assert (
        links.results_url("tool_errors", "run_a", "datapoint", shard="07")
        == "http://explorer.internal:8050/results/tool_errors?run=run_a&level=datapoint&shard=7"
    )
    assert links.entity_url("step", "3", "run_a", base="") == (
        "/traces?run=run_a&step_min=3&step_max=3"
    )
    # A datapoint entity is one datapoint at one step; across steps it is all its traces.
    assert links.entity_url("datapoint", "dp_1@4", "run_a", base="") == (
        "/traces?run=run_a&datapoint=dp_1&step_min=4&step_max=4"
    )
    assert links.entity_url("datapoint_across_steps", "dp_1", "run_a", base="") == (
        "/traces?run=run_a&datapoint=dp_1"
    )
    with pytest.raises(QueryError, match="datapoint_across_steps"):
        links.entity_url("datapoint", "dp_1", "run_a", base="")
    assert links.traces_url("run_a", base="", status=["error", "timeout"]) == (
        "/traces?run=run_a&status=error&status=timeout"
    )
    assert links.dagster_asset_url("tool_errors", "step", partition="run_a") == (
        "http://dagster.internal:3000/assets/tool_errors/step?partition=run_a"
    )
    monkeypatch.delenv("MANTA_EXPLORER_URL")
    assert links.trace_url("t") == "http://127.0.0.1:8050/traces/t"


def test_nice_ticks_cover_the_range_with_round_steps() -> None:
    assert nice_ticks(0.13, 0.92) == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert nice_ticks(0, 7, target=8) == [0, 1, 2, 3, 4, 5, 6, 7]
    flat = nice_ticks(5.0, 5.0)
    assert flat[0] < 5.0 < flat[-1]


def test_line_chart_maps_values_into_the_plot_and_skips_missing_means() -> None:
    chart = line_chart(
        [
            Series("a", [SeriesPoint(0, 0.0, 0.0, 0.5, 4), SeriesPoint(10, 1.0, 0.5, 1.0, 4)]),
            Series("b", [SeriesPoint(0, None), SeriesPoint(10, 0.5, None, None, 2)]),
        ],
        y_label="score",
    )
    assert not chart.empty and [s.label for s in chart.series] == ["a", "b"]
    a, b = chart.series
    left, right = chart.left, chart.left + chart.plot_width
    bottom, top = chart.top + chart.plot_height, chart.top
    assert a.line == f"{left},{bottom} {right},{top}"  # (0, 0) bottom-left, (10, 1) top-right
    assert len(b.points) == 1 and b.band == ""
    assert "n=2" in b.points[0].tooltip
    assert line_chart([Series("x", [SeriesPoint(1, None)])]).empty


def test_link_helpers_do_not_load_the_web_stack() -> None:
    code = (
        "import sys; from manta_lib.explorer.links import trace_url; trace_url('t'); "
        "print(sorted(m for m in ('starlette', 'jinja2', 'uvicorn') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_results_rows_link_each_level_to_the_traces_it_covers() -> None:
    def link(level: str, record: dict, by_step: bool = True) -> str:
        keys = [k for k in ("datapoint_id", "step_number") if k in record]
        return _row(record, level, "run_a", keys, [], "judge", by_step).link

    assert link("datapoint", {"datapoint_id": "dp_1", "step_number": 4}) == (
        "/traces?run=run_a&datapoint=dp_1&step_min=4&step_max=4"
    )
    assert link("datapoint_across_steps", {"datapoint_id": "dp_1"}) == (
        "/traces?run=run_a&datapoint=dp_1"
    )
    assert link("step", {"step_number": 4}) == "/results/judge?run=run_a&level=datapoint&step=4"
    assert link("step", {"step_number": 4}, by_step=False) == (
        "/traces?run=run_a&step_min=4&step_max=4"
    )
    assert links.run_partition("datapoint_across_steps", "run_a") == "run_a"
    assert links.run_partition("datapoint", "run_a") is None
