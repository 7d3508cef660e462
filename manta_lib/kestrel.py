"""Register judges and their output columns with Kestrel, or locally when it is not configured.

Kestrel is the judge + columns registry behind the trace UI. Its API is two idempotent upserts
(JSON, ``Authorization: Bearer $KESTREL_API_KEY``)::

    PUT {KESTREL_API_URL}/v1/projects/{project_id}/judges/{judge}
        {"name", "description", "version", "levels", "uses_llm"}
    PUT {KESTREL_API_URL}/v1/projects/{project_id}/judges/{judge}/columns
        {"columns": [{"name", "entity_level", "type", "description"}]}

Both are PUTs, so retrying after a timeout or a 5xx cannot register anything twice. With
``KESTREL_API_URL`` unset, :func:`register_judge` writes to the local ``judges`` table instead.

Example::

    spec = JudgeSpec(name="tool_errors", description="Tool failures", version="1",
                     levels=["trace", "run"], uses_llm=False)
    columns = columns_from_schema(TraceMetrics, "trace") + columns_from_schema(RunMetrics, "run")
    where = register_judge(spec, columns, project_id="prj_1", settings=settings, store=store)
"""

from __future__ import annotations

import json
import logging
import types
import uuid
from datetime import UTC, date, datetime
from datetime import time as time_of_day
from decimal import Decimal
from email.utils import parsedate_to_datetime
from enum import Enum
from http import HTTPStatus
from typing import Annotated, Any, Literal, Union, get_args, get_origin
from urllib.parse import quote, urlparse

import httpx
from pydantic import BaseModel, ConfigDict, Field, field_validator
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt
from tenacity.wait import wait_exponential_jitter

from manta_lib.errors import ConfigError, KestrelError
from manta_lib.settings import MantaSettings
from manta_lib.store import Store, open_store

__all__ = [
    "ColumnSpec",
    "ColumnType",
    "JudgeSpec",
    "KestrelClient",
    "columns_from_schema",
    "load_local_judge",
    "parse_retry_after",
    "register_judge",
]

log = logging.getLogger(__name__)

ColumnType = Literal["number", "string", "boolean", "json"]
NumberType = Literal["integer", "number"]

RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})
_MAX_SERVER_MESSAGE = 500


def _plain_str(value: object) -> object:
    """Store an enum member (e.g. ``EntityLevel.TRACE``) as its value, not its repr."""
    return value.value if isinstance(value, Enum) else value


class ColumnSpec(BaseModel):
    """One column a judge writes at one entity level, as Kestrel shows it in the trace UI."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1)
    entity_level: str = Field(min_length=1)
    type: ColumnType
    description: str = ""
    #: For a ``number`` column, its JSON-schema type: ``integer`` (an int field) or ``number``
    #: (a float, Decimal or mixed field), so stored values, all kept as Float64, read back as
    #: the type the field declares. Kept in the local registry; Kestrel's columns API does not
    #: take it, so it is left out of what Kestrel receives.
    number_type: NumberType | None = None

    @field_validator("entity_level", mode="before")
    @classmethod
    def _entity_level_value(cls, value: object) -> object:
        return _plain_str(value)


class JudgeSpec(BaseModel):
    """A judge (one pipeline) as registered with Kestrel."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1)
    description: str = ""
    version: str = Field(min_length=1)
    levels: list[str]
    uses_llm: bool = False

    @field_validator("levels", mode="before")
    @classmethod
    def _levels_as_values(cls, value: object) -> object:
        if isinstance(value, list | tuple):
            return [_plain_str(level) for level in value]
        return value


# --------------------------------------------------------------------------- schema → columns


def columns_from_schema(schema: type[BaseModel], entity_level: str) -> list[ColumnSpec]:
    """Derive Kestrel columns from a pydantic output schema, one per field, in field order.

    Numbers (int, float, Decimal) → ``number``, with ``number_type`` ``integer`` for int-only
    fields and ``number`` otherwise; bool → ``boolean``; str, string enums, string
    literals, dates and times, UUIDs → ``string``; everything else (lists, dicts, nested models,
    unions of different kinds) → ``json``. ``Optional`` / ``X | None`` and ``Annotated`` are
    looked through. The description is the field's ``description`` (or ``""``).

    Example::

        class TraceMetrics(BaseModel):
            n_errors: int = Field(description="failed tool calls")
            tools: list[str] = []

        columns_from_schema(TraceMetrics, "trace")
        # [ColumnSpec(name='n_errors', entity_level='trace', type='number', ...),
        #  ColumnSpec(name='tools', entity_level='trace', type='json', ...)]
    """
    if not (isinstance(schema, type) and issubclass(schema, BaseModel)):
        raise TypeError(f"columns_from_schema needs a pydantic model class, got {schema!r}")
    columns = []
    for name, field in schema.model_fields.items():
        kind = _column_type(field.annotation)
        columns.append(
            ColumnSpec(
                name=name,
                entity_level=entity_level,
                type=kind,
                description=field.description or "",
                number_type=_number_type(field.annotation) if kind == "number" else None,
            )
        )
    return columns


def _column_type(annotation: Any) -> ColumnType:
    """The Kestrel column type of one annotation (see :func:`columns_from_schema`)."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _column_type(get_args(annotation)[0])
    if origin is Union or origin is types.UnionType:
        members = [arg for arg in get_args(annotation) if arg is not type(None)]
        kinds = {_column_type(member) for member in members}
        return kinds.pop() if len(kinds) == 1 else "json"
    if origin is Literal:
        return _kind_of_values(get_args(annotation))
    supertype = getattr(annotation, "__supertype__", None)  # typing.NewType
    if supertype is not None:
        return _column_type(supertype)
    if not isinstance(annotation, type) or origin is not None:
        return "json"  # Any, TypeVars, list[int], dict[str, X], ...
    if issubclass(annotation, Enum):
        return _kind_of_values([member.value for member in annotation])
    if issubclass(annotation, bool):  # before int: bool is an int subclass
        return "boolean"
    if issubclass(annotation, int | float | Decimal):
        return "number"
    if issubclass(annotation, str | date | time_of_day | uuid.UUID):  # datetime is a date
        return "string"
    return "json"


def _number_type(annotation: Any) -> NumberType:
    """``integer`` when every number a ``number`` annotation admits is an int, else ``number``."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _number_type(get_args(annotation)[0])
    if origin is Union or origin is types.UnionType:
        members = [arg for arg in get_args(annotation) if arg is not type(None)]
        integral = all(_number_type(member) == "integer" for member in members)
        return "integer" if integral else "number"
    if origin is Literal:
        return _number_type_of_values(get_args(annotation))
    supertype = getattr(annotation, "__supertype__", None)  # typing.NewType
    if supertype is not None:
        return _number_type(supertype)
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return _number_type_of_values([member.value for member in annotation])
    if isinstance(annotation, type) and issubclass(annotation, int):
        return "integer"
    return "number"


def _number_type_of_values(values: Any) -> NumberType:
    return "integer" if all(isinstance(v, int) for v in values) else "number"


def _kind_of_values(values: Any) -> ColumnType:
    """Column type of a set of literal / enum values: one kind, or ``json`` when mixed."""
    values = list(values)
    if values and all(isinstance(v, bool) for v in values):
        return "boolean"
    if values and all(isinstance(v, str) for v in values):
        return "string"
    if (
        values
        and all(isinstance(v, int | float | Decimal) for v in values)
        and not any(isinstance(v, bool) for v in values)
    ):
        return "number"
    return "json"


# --------------------------------------------------------------------------- HTTP client


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP date), or None.

    Fractional seconds are accepted too (not RFC 9110, but harmless). A date in the past
    gives 0; an unparseable value gives None (the caller falls back to its own backoff).
    """
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        return max(seconds, 0.0) if seconds == seconds else None  # NaN is not a delay
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT
        when = when.replace(tzinfo=UTC)
    return max((when - (now or datetime.now(UTC))).total_seconds(), 0.0)


class _RetryableFailure(Exception):
    """One attempt failed in a way worth retrying (429/5xx, connection error, timeout)."""

    def __init__(self, detail: str, retry_after: float | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.retry_after = retry_after


class KestrelClient:
    """A small synchronous client for Kestrel's two upsert endpoints.

    Every request has a ``timeout`` (seconds). 429, 500, 502, 503 and 504 responses,
    connection errors and timeouts are retried up to ``max_attempts`` times in all, waiting
    ``Retry-After`` when the server sends it (at most ``backoff_max`` seconds), otherwise an
    exponential backoff with jitter from ``backoff_base`` up to ``backoff_max``. Any other
    non-2xx answer raises :class:`KestrelError` at once with the server's message and a fix.

    Example::

        with KestrelClient.from_settings(settings) as kestrel:
            kestrel.upsert_judge("prj_1", spec)
            kestrel.upsert_columns("prj_1", spec.name, columns)
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float = 10.0,
        max_attempts: int = 5,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
    ) -> None:
        parsed = urlparse(base_url or "")
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ConfigError(
                f"KESTREL_API_URL={base_url!r} is not an http(s):// URL; set it to the Kestrel "
                f"base URL (e.g. https://kestrel.example.com, without /v1) or unset it to "
                f"register judges in the local registry table"
            )
        if not api_key:
            raise ConfigError(
                "KESTREL_API_KEY is empty; set it to a Kestrel API key (sent as a Bearer token)"
            )
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {max_attempts}")
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.max_attempts = max_attempts
        self.backoff_max = backoff_max
        self._backoff = wait_exponential_jitter(
            initial=backoff_base, max=backoff_max, exp_base=2, jitter=backoff_base
        )
        self._http = httpx.Client(
            timeout=httpx.Timeout(timeout),
            headers={
                "Authorization": f"Bearer {api_key}",
                "Accept": "application/json",
                "User-Agent": "manta-kestrel-client",
            },
        )

    @classmethod
    def from_settings(cls, settings: MantaSettings, **options: Any) -> KestrelClient:
        """Build a client from ``KESTREL_API_URL`` / ``KESTREL_API_KEY`` (both required)."""
        if not settings.kestrel_api_url:
            raise ConfigError(
                "KESTREL_API_URL is not set; set it to the Kestrel base URL to register judges "
                "with Kestrel"
            )
        key = settings.kestrel_api_key.get_secret_value() if settings.kestrel_api_key else ""
        if not key.strip():
            raise ConfigError(
                f"KESTREL_API_KEY is not set but KESTREL_API_URL={settings.kestrel_api_url} is; "
                f"set KESTREL_API_KEY to a Kestrel API key, or unset KESTREL_API_URL to register "
                f"judges in the local registry table"
            )
        return cls(settings.kestrel_api_url, key.strip(), **options)

    def __enter__(self) -> KestrelClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the underlying connection pool."""
        self._http.close()

    def upsert_judge(self, project_id: str, spec: JudgeSpec) -> dict[str, Any]:
        """``PUT /v1/projects/{project_id}/judges/{spec.name}``; returns the JSON answer."""
        return self._put(project_id, ("judges", spec.name), spec.model_dump(mode="json"))

    def upsert_columns(
        self, project_id: str, judge: str, columns: list[ColumnSpec]
    ) -> dict[str, Any]:
        """``PUT /v1/projects/{project_id}/judges/{judge}/columns``; returns the JSON answer."""
        body = {
            "columns": [
                column.model_dump(mode="json", exclude={"number_type"}) for column in columns
            ]
        }
        return self._put(project_id, ("judges", judge, "columns"), body)

    # -- internals

    def _put(self, project_id: str, segments: tuple[str, ...], body: Any) -> dict[str, Any]:
        path = "/".join(quote(part, safe="") for part in ("v1", "projects", project_id, *segments))
        url = f"{self.base_url}/{path}"
        retrying = Retrying(
            stop=stop_after_attempt(self.max_attempts),
            wait=self._wait,
            retry=retry_if_exception_type(_RetryableFailure),
            before_sleep=lambda state: self._log_retry(url, state),
            reraise=True,
        )
        try:
            response = retrying(self._attempt, url, body, project_id)
        except _RetryableFailure as exc:
            raise KestrelError(
                f"Kestrel PUT {url} failed after {self.max_attempts} attempt"
                f"{'s' if self.max_attempts != 1 else ''}; last: {exc.detail}. Kestrel at "
                f"KESTREL_API_URL={self.base_url} is unreachable or overloaded: check the URL "
                f"and that the service is up, then retry"
            ) from None
        if not response.content:
            return {}
        try:
            answer = response.json()
        except ValueError:
            return {}
        return answer if isinstance(answer, dict) else {"result": answer}

    def _attempt(self, url: str, body: Any, project_id: str) -> httpx.Response:
        try:
            response = self._http.put(url, json=body)
        except httpx.TimeoutException:
            raise _RetryableFailure(f"no answer within {self.timeout:g} s (timeout)") from None
        except httpx.TransportError as exc:
            raise _RetryableFailure(
                f"connection failed ({type(exc).__name__}: {exc or 'no detail'})"
            ) from None
        if response.is_success:
            return response
        status = response.status_code
        message = _server_message(response)
        if status in RETRYABLE_STATUSES:
            raise _RetryableFailure(
                f"HTTP {status} ({_reason(status)}): {message}",
                parse_retry_after(response.headers.get("Retry-After")),
            )
        raise KestrelError(
            f"Kestrel rejected PUT {url} with HTTP {status} ({_reason(status)}): {message}. "
            + self._hint(status, project_id)
        )

    def _wait(self, state: RetryCallState) -> float:
        failure = state.outcome.exception() if state.outcome else None
        if isinstance(failure, _RetryableFailure) and failure.retry_after is not None:
            return min(failure.retry_after, self.backoff_max)
        return float(self._backoff(state))

    def _log_retry(self, url: str, state: RetryCallState) -> None:
        failure = state.outcome.exception() if state.outcome else None
        delay = state.next_action.sleep if state.next_action else 0.0
        log.warning(
            "Kestrel PUT %s: %s; retrying in %.2f s (attempt %d of %d)",
            url,
            failure,
            delay,
            state.attempt_number + 1,
            self.max_attempts,
        )

    def _hint(self, status: int, project_id: str) -> str:
        if status == 401:
            return "Check KESTREL_API_KEY: Kestrel did not accept it (missing, wrong or expired)."
        if status == 403:
            return (
                f"Check KESTREL_API_KEY: it is valid but has no write access to project "
                f"{project_id!r}."
            )
        if status == 404:
            return (
                f"Check that project_id {project_id!r} exists in Kestrel and that "
                f"KESTREL_API_URL={self.base_url} is the Kestrel base URL (without /v1)."
            )
        if status in (400, 409, 422):
            return (
                "Kestrel refused the request body: check the judge name, version and levels, "
                "and the output schemas the columns are derived from."
            )
        return "Fix the request or KESTREL_API_URL / KESTREL_API_KEY, then retry."


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "unknown status"


def _server_message(response: httpx.Response) -> str:
    """The error text Kestrel sent: a JSON ``message``/``error``/``detail`` or the raw body."""
    text = response.text.strip()
    if not text:
        return "(empty body)"
    try:
        payload = response.json()
    except ValueError:
        return text[:_MAX_SERVER_MESSAGE]
    message = _find_message(payload)
    return (message if message is not None else text)[:_MAX_SERVER_MESSAGE]


def _find_message(payload: Any) -> str | None:
    if isinstance(payload, str):
        return payload
    if isinstance(payload, dict):
        for key in ("message", "error", "detail", "error_description"):
            if key in payload:
                found = _find_message(payload[key])
                return found if found is not None else json.dumps(payload[key])
    return None


# --------------------------------------------------------------------------- registration


def register_judge(
    spec: JudgeSpec,
    columns: list[ColumnSpec],
    *,
    project_id: str,
    settings: MantaSettings,
    store: Store | None = None,
) -> Literal["kestrel", "local"]:
    """Register ``spec`` and its ``columns``; return where: ``"kestrel"`` or ``"local"``.

    With ``KESTREL_API_URL`` set, both upserts go to Kestrel (``KESTREL_API_KEY`` required).
    Otherwise the judge is written to the local ``judges`` table of ``store`` (or of a store
    opened from ``settings`` when ``store`` is None), and one INFO line says so. Both paths are
    idempotent: registering the same judge again replaces it.

    Example::

        where = register_judge(spec, columns, project_id="prj_1", settings=settings, store=store)
    """
    if settings.kestrel_api_url:
        with KestrelClient.from_settings(settings) as kestrel:
            kestrel.upsert_judge(project_id, spec)
            kestrel.upsert_columns(project_id, spec.name, columns)
        log.info(
            "registered judge %r version %s with %d columns in Kestrel project %r",
            spec.name,
            spec.version,
            len(columns),
            project_id,
        )
        return "kestrel"
    if store is None:
        with open_store(settings) as opened:
            _insert_local(opened, spec, columns, project_id)
            database = opened.database
    else:
        _insert_local(store, spec, columns, project_id)
        database = store.database
    log.info(
        "KESTREL_API_URL is not set: registered judge %r version %s (%d columns) for project %r "
        "in the local registry table %s.judges instead of Kestrel",
        spec.name,
        spec.version,
        len(columns),
        project_id,
        database,
    )
    return "local"


def _insert_local(
    store: Store, spec: JudgeSpec, columns: list[ColumnSpec], project_id: str
) -> None:
    store.insert_columns(
        "judges",
        {
            "project_id": [project_id],
            "judge": [spec.name],
            "version": [spec.version],
            "description": [spec.description],
            "levels": [list(spec.levels)],
            "uses_llm": [spec.uses_llm],
            "columns": [json.dumps([column.model_dump(mode="json") for column in columns])],
            "registered_at": [datetime.now(UTC)],
        },
    )


def load_local_judge(store: Store, project_id: str, judge: str) -> dict[str, Any] | None:
    """The newest local registration of ``judge`` in ``project_id``, or None.

    Returns ``{project_id, judge, version, description, levels, uses_llm, columns,
    registered_at}`` with ``columns`` decoded to a list of column dicts.
    """
    rows = store.rows(
        "SELECT project_id, judge, version, description, levels, uses_llm, columns, "
        "registered_at FROM {db}.judges FINAL "
        "WHERE project_id = {project_id:String} AND judge = {judge:String} "
        "ORDER BY registered_at DESC LIMIT 1",
        {"project_id": project_id, "judge": judge},
    )
    if not rows:
        return None
    project, name, version, description, levels, uses_llm, columns, registered_at = rows[0]
    return {
        "project_id": project,
        "judge": name,
        "version": version,
        "description": description,
        "levels": list(levels),
        "uses_llm": bool(uses_llm),
        "columns": json.loads(columns) if columns else [],
        "registered_at": registered_at,
    }
