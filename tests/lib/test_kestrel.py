"""Kestrel registration: the HTTP contract (against a real loopback server) and the local table."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from datetime import time as time_of_day
from decimal import Decimal
from enum import Enum, IntEnum, StrEnum
from typing import Annotated, Any, Literal, NewType, Optional, Union
from uuid import UUID

import pytest
from pydantic import BaseModel, Field

from manta_lib.errors import ConfigError, KestrelError
from manta_lib.kestrel import (
    ColumnSpec,
    JudgeSpec,
    KestrelClient,
    columns_from_schema,
    load_local_judge,
    parse_retry_after,
    register_judge,
)
from manta_lib.models import EntityLevel
from manta_lib.settings import MantaSettings, load_settings
from manta_lib.store import Store
from tests.lib.http_fixtures import CannedResponse, RecordingHTTPServer

SPEC = JudgeSpec(
    name="tool_errors",
    description="Counts failed tool calls",
    version="3",
    levels=["trace", "run"],
    uses_llm=False,
)
COLUMNS = [
    ColumnSpec(
        name="n_errors",
        entity_level="trace",
        type="number",
        description="failures",
        number_type="integer",
    ),
    ColumnSpec(name="error_rate", entity_level="run", type="number", description=""),
]
JUDGE_PATH = "/v1/projects/prj_1/judges/tool_errors"


@pytest.fixture
def server() -> Iterator[RecordingHTTPServer]:
    with RecordingHTTPServer() as running:
        yield running


def fast_client(server: RecordingHTTPServer, **options: Any) -> KestrelClient:
    """A client with tiny backoffs so retry tests take milliseconds."""
    defaults: dict[str, Any] = {
        "timeout": 2.0,
        "max_attempts": 3,
        "backoff_base": 0.001,
        "backoff_max": 5.0,
    }
    return KestrelClient(server.url, "sk-test", **(defaults | options))


# --------------------------------------------------------------------------- the HTTP contract


def test_upsert_judge_puts_the_spec_with_a_bearer_token(server: RecordingHTTPServer) -> None:
    server.respond(200, json={"id": "jdg_1"})
    with fast_client(server) as kestrel:
        answer = kestrel.upsert_judge("prj_1", SPEC)

    assert answer == {"id": "jdg_1"}
    [request] = server.requests
    assert (request.method, request.path) == ("PUT", JUDGE_PATH)
    assert request.headers["authorization"] == "Bearer sk-test"
    assert request.headers["content-type"] == "application/json"
    assert request.json() == {
        "name": "tool_errors",
        "description": "Counts failed tool calls",
        "version": "3",
        "levels": ["trace", "run"],
        "uses_llm": False,
    }


def test_upsert_columns_puts_the_column_list(server: RecordingHTTPServer) -> None:
    with fast_client(server) as kestrel:
        kestrel.upsert_columns("prj_1", "tool_errors", COLUMNS)

    [request] = server.requests
    assert (request.method, request.path) == ("PUT", JUDGE_PATH + "/columns")
    assert request.headers["authorization"] == "Bearer sk-test"
    # The local registry's number_type is not part of Kestrel's columns API: not sent.
    assert request.json() == {
        "columns": [
            {
                "name": "n_errors",
                "entity_level": "trace",
                "type": "number",
                "description": "failures",
            },
            {"name": "error_rate", "entity_level": "run", "type": "number", "description": ""},
        ]
    }


def test_path_segments_are_url_encoded(server: RecordingHTTPServer) -> None:
    spec = SPEC.model_copy(update={"name": "errors/v2 ?#"})
    with fast_client(server) as kestrel:
        kestrel.upsert_judge("prj 1/a", spec)
        kestrel.upsert_columns("prj 1/a", spec.name, [])

    assert [r.path for r in server.requests] == [
        "/v1/projects/prj%201%2Fa/judges/errors%2Fv2%20%3F%23",
        "/v1/projects/prj%201%2Fa/judges/errors%2Fv2%20%3F%23/columns",
    ]
    assert server.requests[1].json() == {"columns": []}


def test_a_base_url_with_a_path_prefix_and_trailing_slash_is_kept(
    server: RecordingHTTPServer,
) -> None:
    with KestrelClient(server.url + "/kestrel/", "k") as kestrel:
        kestrel.upsert_judge("prj_1", SPEC)
    assert server.requests[0].path == "/kestrel" + JUDGE_PATH


def test_429_waits_for_retry_after_then_succeeds(server: RecordingHTTPServer) -> None:
    server.respond(429, json={"error": "slow down"}, headers={"Retry-After": "0.2"})
    server.respond(200, json={})
    with fast_client(server) as kestrel:
        kestrel.upsert_judge("prj_1", SPEC)

    first, second = server.requests
    assert second.received_at - first.received_at >= 0.2
    assert second.json() == first.json()


def test_retry_after_is_capped_by_backoff_max(server: RecordingHTTPServer) -> None:
    server.respond(503, headers={"Retry-After": "3600"})
    started = time.monotonic()
    with fast_client(server, backoff_max=0.1) as kestrel:
        kestrel.upsert_judge("prj_1", SPEC)

    assert len(server.requests) == 2
    assert time.monotonic() - started < 2


def test_500_twice_then_200_takes_three_requests(server: RecordingHTTPServer) -> None:
    server.respond(500).respond(502, body=b"<html>bad gateway</html>").respond(200, json={})
    with fast_client(server, max_attempts=5) as kestrel:
        kestrel.upsert_columns("prj_1", "tool_errors", COLUMNS)

    assert len(server.requests) == 3
    assert {r.path for r in server.requests} == {JUDGE_PATH + "/columns"}


def test_500_forever_gives_up_after_max_attempts(server: RecordingHTTPServer) -> None:
    server.default = CannedResponse(500, json={"message": "database on fire"})
    with fast_client(server, max_attempts=3) as kestrel, pytest.raises(KestrelError) as caught:
        kestrel.upsert_judge("prj_1", SPEC)

    assert len(server.requests) == 3
    assert str(caught.value) == (
        f"Kestrel PUT {server.url}{JUDGE_PATH} failed after 3 attempts; last: HTTP 500 "
        f"(Internal Server Error): database on fire. Kestrel at KESTREL_API_URL={server.url} "
        f"is unreachable or overloaded: check the URL and that the service is up, then retry"
    )


def test_400_fails_at_once_with_the_server_message(server: RecordingHTTPServer) -> None:
    server.respond(400, json={"error": {"code": "invalid", "message": "levels must not be empty"}})
    with fast_client(server) as kestrel, pytest.raises(KestrelError) as caught:
        kestrel.upsert_judge("prj_1", SPEC)

    assert len(server.requests) == 1
    assert str(caught.value) == (
        f"Kestrel rejected PUT {server.url}{JUDGE_PATH} with HTTP 400 (Bad Request): levels "
        f"must not be empty. Kestrel refused the request body: check the judge name, version "
        f"and levels, and the output schemas the columns are derived from."
    )


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (401, {"detail": "invalid token"}, "invalid token. Check KESTREL_API_KEY"),
        (403, b"forbidden", "forbidden. Check KESTREL_API_KEY: it is valid but has no write"),
        (404, None, "(empty body). Check that project_id 'prj_1' exists in Kestrel"),
        (422, {"detail": [{"loc": ["levels"]}]}, '[{"loc": ["levels"]}]. Kestrel refused'),
        (418, {"message": "teapot"}, "teapot. Fix the request or KESTREL_API_URL"),
    ],
)
def test_other_4xx_explain_what_to_fix(
    server: RecordingHTTPServer, status: int, body: Any, expected: str
) -> None:
    if isinstance(body, bytes):
        server.respond(status, body=body)
    else:
        server.respond(status, json=body)
    with fast_client(server) as kestrel, pytest.raises(KestrelError) as caught:
        kestrel.upsert_judge("prj_1", SPEC)

    assert len(server.requests) == 1
    message = str(caught.value)
    assert f"HTTP {status}" in message and JUDGE_PATH in message
    assert expected in message
    if status == 404:
        assert f"KESTREL_API_URL={server.url} is the Kestrel base URL" in message


def test_timeouts_are_retried_then_reported(server: RecordingHTTPServer) -> None:
    server.default = CannedResponse(200, json={}, delay=1.0)
    with (
        fast_client(server, timeout=0.1, max_attempts=2) as kestrel,
        pytest.raises(KestrelError) as caught,
    ):
        kestrel.upsert_judge("prj_1", SPEC)

    assert len(server.requests) == 2
    assert "failed after 2 attempts; last: no answer within 0.1 s (timeout)" in str(caught.value)


def test_a_slow_answer_then_a_fast_one_succeeds(server: RecordingHTTPServer) -> None:
    server.respond(200, json={}, delay=1.0).respond(200, json={"ok": True})
    with fast_client(server, timeout=0.1) as kestrel:
        assert kestrel.upsert_judge("prj_1", SPEC) == {"ok": True}
    assert len(server.requests) == 2


def test_connection_refused_is_retried_then_reported() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    client = KestrelClient(url, "k", max_attempts=2, backoff_base=0.001)
    with client as kestrel, pytest.raises(KestrelError) as caught:
        kestrel.upsert_judge("prj_1", SPEC)
    assert f"Kestrel PUT {url}{JUDGE_PATH} failed after 2 attempts; last: connection failed (" in (
        str(caught.value)
    )


def test_retries_are_logged_as_warnings(
    server: RecordingHTTPServer, caplog: pytest.LogCaptureFixture
) -> None:
    server.respond(503, json={"message": "maintenance"})
    with caplog.at_level(logging.WARNING, "manta_lib.kestrel"), fast_client(server) as kestrel:
        kestrel.upsert_judge("prj_1", SPEC)
    [record] = [r for r in caplog.records if r.name == "manta_lib.kestrel"]
    assert "HTTP 503 (Service Unavailable): maintenance; retrying in" in record.getMessage()
    assert "(attempt 2 of 3)" in record.getMessage()
    assert "sk-test" not in caplog.text


def test_parse_retry_after_accepts_seconds_and_http_dates() -> None:
    now = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("3", now=now) == 3.0
    assert parse_retry_after(" 0.25 ", now=now) == 0.25
    assert parse_retry_after("Wed, 01 Jan 2025 12:00:07 GMT", now=now) == 7.0
    assert parse_retry_after("Wed, 01 Jan 2025 11:00:00 GMT", now=now) == 0.0
    assert parse_retry_after("-5", now=now) == 0.0
    for unusable in (None, "", "soon", "nan"):
        assert parse_retry_after(unusable, now=now) is None


@pytest.mark.usefixtures("manta_env")
def test_client_configuration_errors_name_the_variable() -> None:
    with pytest.raises(ConfigError, match="KESTREL_API_URL='kestrel.local' is not an http"):
        KestrelClient("kestrel.local", "k")
    with pytest.raises(ConfigError, match="KESTREL_API_KEY is empty"):
        KestrelClient("http://kestrel.local", "")
    no_key = load_settings(KESTREL_API_URL="http://kestrel.local")
    with pytest.raises(ConfigError, match="KESTREL_API_KEY is not set but KESTREL_API_URL="):
        KestrelClient.from_settings(no_key)
    with pytest.raises(ConfigError, match="KESTREL_API_URL is not set"):
        KestrelClient.from_settings(load_settings(KESTREL_API_KEY="k"))


# --------------------------------------------------------------------------- register_judge


def kestrel_settings(url: str, key: str | None = "sk-live") -> MantaSettings:
    """Settings from the test environment (see ``manta_env``) plus the Kestrel variables."""
    overrides = {"KESTREL_API_URL": url} | ({"KESTREL_API_KEY": key} if key else {})
    return load_settings(**overrides)


def test_register_judge_with_kestrel_configured_upserts_judge_then_columns(
    server: RecordingHTTPServer, settings: MantaSettings, store: Store
) -> None:
    configured = kestrel_settings(server.url)
    where = register_judge(SPEC, COLUMNS, project_id="prj_1", settings=configured, store=store)

    assert where == "kestrel"
    assert [(r.method, r.path) for r in server.requests] == [
        ("PUT", JUDGE_PATH),
        ("PUT", JUDGE_PATH + "/columns"),
    ]
    assert {r.headers["authorization"] for r in server.requests} == {"Bearer sk-live"}
    assert load_local_judge(store, "prj_1", "tool_errors") is None


def test_register_judge_without_a_key_fails_before_any_request(
    server: RecordingHTTPServer, settings: MantaSettings, store: Store
) -> None:
    configured = kestrel_settings(server.url, key=None)
    with pytest.raises(ConfigError, match="KESTREL_API_KEY is not set"):
        register_judge(SPEC, COLUMNS, project_id="prj_1", settings=configured, store=store)
    assert server.requests == []


def test_register_judge_locally_when_kestrel_is_not_configured(
    settings: MantaSettings, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, "manta_lib.kestrel"):
        where = register_judge(SPEC, COLUMNS, project_id="prj_1", settings=settings, store=store)

    assert where == "local"
    [record] = [r for r in caplog.records if r.name == "manta_lib.kestrel"]
    assert record.levelno == logging.INFO
    assert record.getMessage().startswith("KESTREL_API_URL is not set: registered judge")
    assert f"{store.database}.judges" in record.getMessage()

    row = load_local_judge(store, "prj_1", "tool_errors")
    assert row is not None
    registered_at = row.pop("registered_at")
    assert abs(registered_at.replace(tzinfo=UTC) - datetime.now(UTC)) < timedelta(minutes=1)
    assert row == {
        "project_id": "prj_1",
        "judge": "tool_errors",
        "version": "3",
        "description": "Counts failed tool calls",
        "levels": ["trace", "run"],
        "uses_llm": False,
        "columns": [c.model_dump() for c in COLUMNS],
    }


def test_local_registration_is_idempotent_and_the_newest_version_wins(
    settings: MantaSettings, store: Store
) -> None:
    register_judge(SPEC, COLUMNS, project_id="prj_1", settings=settings, store=store)
    register_judge(SPEC, COLUMNS, project_id="prj_1", settings=settings, store=store)
    newer = SPEC.model_copy(update={"version": "4", "uses_llm": True})
    register_judge(newer, COLUMNS[:1], project_id="prj_1", settings=settings, store=store)
    register_judge(SPEC, COLUMNS, project_id="prj_other", settings=settings, store=store)

    count = store.rows(
        "SELECT count() FROM {db}.judges FINAL WHERE project_id = {p:String}", {"p": "prj_1"}
    )
    assert count[0][0] == 1
    row = load_local_judge(store, "prj_1", "tool_errors")
    assert row is not None
    assert (row["version"], row["uses_llm"], len(row["columns"])) == ("4", True, 1)
    other = load_local_judge(store, "prj_other", "tool_errors")
    assert other is not None and other["version"] == "3"
    assert load_local_judge(store, "prj_1", "unknown_judge") is None


def test_register_judge_opens_a_store_when_none_is_given(
    settings: MantaSettings, store: Store
) -> None:
    assert register_judge(SPEC, [], project_id="prj_1", settings=settings, store=None) == "local"
    row = load_local_judge(store, "prj_1", "tool_errors")
    assert row is not None and row["columns"] == []


# --------------------------------------------------------------------------- schema → columns


class Colour(Enum):
    RED = "red"
    BLUE = "blue"


class Size(IntEnum):
    SMALL = 1
    LARGE = 2


class Mode(StrEnum):
    FAST = "fast"


class Mixed(Enum):
    A = "a"
    B = 2


class Inner(BaseModel):
    x: int


UserId = NewType("UserId", str)


class EveryType(BaseModel):
    count: int = Field(description="how many")
    ratio: float
    price: Decimal
    flag: bool
    maybe_count: Optional[int] = None  # noqa: UP045 - the typing spelling is what we test
    maybe_ratio: float | None = None
    maybe_flag: bool | None = None
    constrained: Annotated[int, Field(ge=0, description="non-negative")] = 0
    optional_annotated: Annotated[float, "unit: s"] | None = None
    text: str
    colour: Colour
    size: Size
    mode: Mode
    mixed_enum: Mixed
    label: Literal["ok", "error"]
    level: Literal[1, 2, 3]
    on: Literal[True]
    mixed_literal: Literal["a", 1]
    day: date
    at: datetime
    clock: time_of_day
    ident: UUID
    user: UserId
    tags: list[str]
    scores: dict[str, float]
    pair: tuple[int, int]
    inner: Inner
    maybe_inner: Inner | None = None
    either: Union[int, str]  # noqa: UP007 - the typing spelling is what we test
    int_or_float: int | float
    anything: Any = None
    nothing: None = None


def test_columns_from_schema_maps_every_kind_of_field() -> None:
    columns = columns_from_schema(EveryType, "trace")

    assert {c.name: c.type for c in columns} == {
        "count": "number",
        "ratio": "number",
        "price": "number",
        "flag": "boolean",
        "maybe_count": "number",
        "maybe_ratio": "number",
        "maybe_flag": "boolean",
        "constrained": "number",
        "optional_annotated": "number",
        "text": "string",
        "colour": "string",
        "size": "number",
        "mode": "string",
        "mixed_enum": "json",
        "label": "string",
        "level": "number",
        "on": "boolean",
        "mixed_literal": "json",
        "day": "string",
        "at": "string",
        "clock": "string",
        "ident": "string",
        "user": "string",
        "tags": "json",
        "scores": "json",
        "pair": "json",
        "inner": "json",
        "maybe_inner": "json",
        "either": "json",
        "int_or_float": "number",
        "anything": "json",
        "nothing": "json",
    }
    # Numbers say whether the field is an int (read back as integers) or a float.
    assert {c.name: c.number_type for c in columns if c.type == "number"} == {
        "count": "integer",
        "ratio": "number",
        "price": "number",
        "maybe_count": "integer",
        "constrained": "integer",
        "optional_annotated": "number",
        "size": "integer",
        "maybe_ratio": "number",
        "level": "integer",
        "int_or_float": "number",
    }
    assert {c.number_type for c in columns if c.type != "number"} == {None}
    assert [c.name for c in columns] == list(EveryType.model_fields)  # field order kept
    assert {c.entity_level for c in columns} == {"trace"}
    described = {c.name: c.description for c in columns if c.description}
    assert described == {"count": "how many", "constrained": "non-negative"}


def test_columns_from_schema_accepts_an_entity_level_enum() -> None:
    [column] = columns_from_schema(Inner, EntityLevel.STEP)
    assert column == ColumnSpec(name="x", entity_level="step", type="number", number_type="integer")
    assert column.model_dump()["entity_level"] == "step"
    assert JudgeSpec(name="j", version="1", levels=[EntityLevel.TRACE]).levels == ["trace"]


def test_columns_from_schema_rejects_a_non_model() -> None:
    with pytest.raises(TypeError, match="needs a pydantic model class"):
        columns_from_schema(dict, "trace")  # type: ignore[arg-type]
