"""The explorer against hostile requests and data (issue 26, point 9): a foreign ``Host``
header (DNS rebinding) gets 400, deeply nested result conditions get a 400 naming the limit,
NUL bytes and bidirectional overrides in trace text are shown as visible signs, and span text
links work for ids holding ``/``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from starlette.testclient import TestClient

from manta_lib.explorer import app as explorer_app
from manta_lib.explorer import create_app
from manta_lib.results import expr
from manta_lib.settings import MantaSettings
from manta_lib.store import Store
from tests.lib.builders import load_traces, trace_line
from tests.lib.results import defs

# Seeded stores or seconds per test: make test runs them, make check leaves them out.
pytestmark = pytest.mark.slow

RUN = "run_hostile_x"
SLASHED = "eval/a/b/t_2_2"
TEXT = "before\x00after \u202eevil\u202c end"


@pytest.fixture
def client(store: Store, settings: MantaSettings, tmp_path: Path) -> Iterator[TestClient]:
    plain = trace_line("t_1_1", run_id=RUN)
    slashed = trace_line(SLASHED, run_id=RUN)
    slashed["spans"][0] = {**slashed["spans"][0], "span_id": "span/u/0", "content": TEXT}
    load_traces(store, [plain, slashed], tmp_path)
    with TestClient(create_app(settings), base_url="http://127.0.0.1:8050") as test_client:
        yield test_client


def test_only_served_host_names_are_answered(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert client.get("/").status_code == 200
    for host in ("localhost:8050", "[::1]:8050", "127.0.0.1"):
        assert client.get("/", headers={"Host": host}).status_code == 200, host
    rebound = client.get("/traces", headers={"Host": "attacker.example:8050"})
    assert rebound.status_code == 400 and RUN not in rebound.text
    monkeypatch.setenv("MANTA_EXPLORER_HOSTS", "lab-box.internal, other")
    assert {"lab-box.internal", "other", "localhost"} <= set(explorer_app.default_allowed_hosts())


def test_deeply_nested_condition_is_a_400_naming_the_limit(
    client: TestClient, store: Store
) -> None:
    defs.typed.run(RUN, mode="local", progress=False, max_failures=1.0)
    deep = "(" * 500 + "tool_errors > 0" + ")" * 500
    page = client.get("/results/typed_results", params={"run": RUN, "where": deep})
    assert page.status_code == 400, page.text[:300]
    assert f"nested more than {expr.MAX_NESTING} levels" in page.text


def test_nul_and_bidi_overrides_are_visible_and_slashed_ids_link(client: TestClient) -> None:
    page = client.get(f"/traces/{SLASHED}")
    assert page.status_code == 200
    assert "\x00" not in page.text and "\u202e" not in page.text
    assert "before\u2400after" in page.text and "[U+202E]evil" in page.text
    text = client.get(f"/traces/{quote(SLASHED)}/spans/{quote('span/u/0')}.txt")
    assert text.status_code == 200 and text.text == TEXT  # the raw text, byte-exact
    assert f"/traces/{SLASHED}/spans/span/u/0.txt" in page.text
