"""OTLP trace payloads (``ExportTraceServiceRequest`` as protobuf or JSON) -> :class:`OtelSpan`.

Both encodings give the same flat span objects; ids are checked (16-byte trace id, 8-byte
span id, not all zero) and any problem names its place in the request
(``resourceSpans[0].scopeSpans[1].spans[3].traceId``), so a bad request is refused whole.
The protobuf side needs the ``otlp`` extra (``opentelemetry-proto``).
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from manta_lib.errors import ConfigError
from manta_lib.importers.base import Problems

_MAX_PROBLEMS = 20
_MAX_NANOS = 2**63  # Unix nanoseconds up to the year 2262


@dataclass(slots=True)  # no __dict__: fewer objects for the garbage collector per buffered span
class OtelSpan:
    """One OpenTelemetry span, attributes and event attributes as plain Python values."""

    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    resource: dict[str, Any]
    events: Sequence[tuple[str, int, dict[str, Any]]] = ()
    status_code: int = 0  # 0 unset, 1 ok, 2 error
    status_message: str = ""
    scope: str = ""


def proto_module() -> Any:
    try:
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
    except ImportError:
        raise ConfigError("OTLP protobuf needs the otlp extra: pip install 'manta[otlp]'") from None
    return trace_service_pb2


# ---- JSON ----------------------------------------------------------------------------------


def _get(obj: dict[str, Any], camel: str, snake: str, default: Any = None) -> Any:
    value = obj.get(camel, _NONE)
    if value is _NONE:
        value = obj.get(snake, default)
    return value


_NONE = object()


def json_value(value: Any) -> Any:
    """An OTLP JSON ``AnyValue`` as a Python value."""
    if not isinstance(value, dict):
        return value
    for camel, snake in (
        ("stringValue", "string_value"),
        ("boolValue", "bool_value"),
        ("doubleValue", "double_value"),
    ):
        if camel in value or snake in value:
            return _get(value, camel, snake)
    if "intValue" in value or "int_value" in value:
        return otlp_integer(_get(value, "intValue", "int_value"))
    if "arrayValue" in value or "array_value" in value:
        inner = _get(value, "arrayValue", "array_value") or {}
        return [json_value(item) for item in inner.get("values", [])]
    if "kvlistValue" in value or "kvlist_value" in value:
        inner = _get(value, "kvlistValue", "kvlist_value") or {}
        return json_attributes(inner.get("values", []))
    if "bytesValue" in value or "bytes_value" in value:
        return _get(value, "bytesValue", "bytes_value")
    return None


def otlp_integer(value: Any) -> int:
    """An OTLP JSON integer (a number or a decimal string, as the JSON mapping writes int64);
    :class:`ValueError` for anything else, including a literal such as ``1e400`` that JSON
    decodes to infinity."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{value} is not an integer (a literal such as 1e400 overflows)")
    return int(value)


def json_attributes(items: Any) -> dict[str, Any]:
    if not isinstance(items, list):
        raise ValueError("attributes must be a list of {key, value}")
    return {item["key"]: json_value(item.get("value")) for item in items if "key" in item}


def _hex_id(
    value: Any, size: int, where: str, problems: list[tuple[str, str]], *, optional: bool = False
) -> str:
    if value in (None, "") and optional:
        return ""
    if not isinstance(value, str):
        problems.append((where, f"expected a hex string of {size} bytes, got {value!r}"))
        return ""
    text = value.lower()
    if len(text) != size * 2:
        # some writers put base64 (the protobuf JSON mapping of bytes) instead of hex
        try:
            raw = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raw = b""
        if len(raw) != size:
            problems.append(
                (where, f"expected {size} bytes ({size * 2} hex digits), got {value[:48]!r}")
            )
            return ""
        text = raw.hex()
    elif any(c not in "0123456789abcdef" for c in text):
        problems.append((where, f"not hexadecimal: {value[:48]!r}"))
        return ""
    if optional and set(text) == {"0"}:
        return ""
    if set(text) == {"0"}:
        problems.append((where, "an all-zero id is invalid"))
    return text


def spans_from_json(doc: Any) -> list[OtelSpan]:
    """Spans of an ``ExportTraceServiceRequest`` in OTLP JSON; raises :class:`Problems`."""
    if not isinstance(doc, dict):
        raise Problems([("", "expected an ExportTraceServiceRequest JSON object")])
    resource_spans = _get(doc, "resourceSpans", "resource_spans")
    if not isinstance(resource_spans, list):
        raise Problems([("resourceSpans", "missing: not an OTLP trace export")])
    problems: list[tuple[str, str]] = []
    out: list[OtelSpan] = []
    for r_index, rs in enumerate(resource_spans):
        r_at = f"resourceSpans[{r_index}]"
        try:
            resource = json_attributes(((rs.get("resource") or {}).get("attributes")) or [])
            scope_spans = _get(rs, "scopeSpans", "scope_spans") or []
        except (AttributeError, ValueError, KeyError, TypeError) as exc:
            problems.append((r_at, f"malformed resource ({exc})"))
            continue
        for s_index, ss in enumerate(scope_spans):
            s_at = f"{r_at}.scopeSpans[{s_index}]"
            scope = ((ss.get("scope") or {}).get("name") or "") if isinstance(ss, dict) else ""
            spans = ss.get("spans") if isinstance(ss, dict) else None
            if not isinstance(spans, list):
                problems.append((f"{s_at}.spans", "expected a list of spans"))
                continue
            for index, span in enumerate(spans):
                at = f"{s_at}.spans[{index}]"
                parsed = _json_span(span, at, resource, scope, problems)
                if parsed is not None:
                    out.append(parsed)
                if len(problems) >= _MAX_PROBLEMS:
                    raise Problems(problems)
    if problems:
        raise Problems(problems)
    return out


def _json_span(
    span: Any, at: str, resource: dict[str, Any], scope: str, problems: list[tuple[str, str]]
) -> OtelSpan | None:
    if not isinstance(span, dict):
        problems.append((at, "expected a span object"))
        return None
    before = len(problems)
    trace_id = _hex_id(_get(span, "traceId", "trace_id"), 16, f"{at}.traceId", problems)
    span_id = _hex_id(_get(span, "spanId", "span_id"), 8, f"{at}.spanId", problems)
    parent = _hex_id(
        _get(span, "parentSpanId", "parent_span_id"),
        8,
        f"{at}.parentSpanId",
        problems,
        optional=True,
    )
    try:
        start = otlp_integer(_get(span, "startTimeUnixNano", "start_time_unix_nano", 0) or 0)
        end = otlp_integer(_get(span, "endTimeUnixNano", "end_time_unix_nano", 0) or 0)
        attributes = json_attributes(span.get("attributes") or [])
        events = tuple(
            (
                str(event.get("name", "")),
                otlp_integer(_get(event, "timeUnixNano", "time_unix_nano", 0) or 0),
                json_attributes(event.get("attributes") or []),
            )
            for event in span.get("events") or []
        )
        status = span.get("status") or {}
        code = status.get("code", 0)
        code = {"STATUS_CODE_UNSET": 0, "STATUS_CODE_OK": 1, "STATUS_CODE_ERROR": 2}.get(code, code)
        code = int(code)
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        problems.append((at, f"malformed span ({exc})"))
        return None
    for name, value in (("startTimeUnixNano", start), ("endTimeUnixNano", end)):
        if not 0 <= value < _MAX_NANOS:
            problems.append((f"{at}.{name}", f"{value} is out of range"))
    if len(problems) > before:
        return None
    return OtelSpan(
        trace_id=trace_id,
        span_id=span_id,
        parent_span_id=parent,
        name=str(span.get("name", "")),
        start_ns=start,
        end_ns=end,
        attributes=attributes,
        resource=resource,
        events=events,
        status_code=code,
        status_message=str(status.get("message", "") or ""),
        scope=scope,
    )


# ---- protobuf ------------------------------------------------------------------------------


_PROTO_READERS: dict[str | None, Any] = {
    "string_value": lambda v: v.string_value,
    "int_value": lambda v: v.int_value,
    "double_value": lambda v: v.double_value,
    "bool_value": lambda v: v.bool_value,
    "array_value": lambda v: [_proto_value(item) for item in v.array_value.values],
    "kvlist_value": lambda v: {i.key: _proto_value(i.value) for i in v.kvlist_value.values},
    "bytes_value": lambda v: base64.b64encode(v.bytes_value).decode(),
    None: lambda v: None,
}
_ZERO_TRACE_ID = bytes(16)
_ZERO_SPAN_ID = bytes(8)


def _proto_value(value: Any) -> Any:
    return _PROTO_READERS[value.WhichOneof("value")](value)


def _proto_attributes(items: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        value = item.value
        # strings are most attributes (GenAI messages are JSON text): a non-empty one is read
        # without asking which field of the oneof is set
        text = value.string_value
        out[item.key] = text if text else _PROTO_READERS[value.WhichOneof("value")](value)
    return out


def parse_protobuf(body: bytes) -> Any:
    """Bytes -> ``ExportTraceServiceRequest``; raises :class:`Problems` when undecodable."""
    from google.protobuf.message import DecodeError

    request = proto_module().ExportTraceServiceRequest()
    try:
        request.ParseFromString(body)
    except DecodeError as exc:
        raise Problems([("", f"not a protobuf ExportTraceServiceRequest ({exc})")]) from None
    return request


def spans_from_proto(request: Any) -> list[OtelSpan]:
    """Spans of a protobuf ``ExportTraceServiceRequest``; raises :class:`Problems`."""
    problems: list[tuple[str, str]] = []
    out: list[OtelSpan] = []
    append = out.append
    for r_index, rs in enumerate(request.resource_spans):
        resource = _proto_attributes(rs.resource.attributes)
        for s_index, ss in enumerate(rs.scope_spans):
            scope = ss.scope.name
            for index, span in enumerate(ss.spans):
                trace_id, span_id, parent = span.trace_id, span.span_id, span.parent_span_id
                start, end = span.start_time_unix_nano, span.end_time_unix_nano
                if (
                    len(trace_id) != 16
                    or len(span_id) != 8
                    or (parent and len(parent) != 8)
                    or trace_id == _ZERO_TRACE_ID
                    or span_id == _ZERO_SPAN_ID
                    or start >= _MAX_NANOS
                    or end >= _MAX_NANOS
                ):
                    at = f"resourceSpans[{r_index}].scopeSpans[{s_index}].spans[{index}]"
                    problems.extend(_proto_span_problems(span, at))
                    if len(problems) >= _MAX_PROBLEMS:
                        raise Problems(problems)
                    continue
                events = span.events
                status = span.status
                append(
                    OtelSpan(
                        trace_id.hex(),
                        span_id.hex(),
                        parent.hex() if parent and parent != _ZERO_SPAN_ID else "",
                        span.name,
                        start,
                        end,
                        _proto_attributes(span.attributes),
                        resource,
                        tuple(
                            (e.name, e.time_unix_nano, _proto_attributes(e.attributes))
                            for e in events
                        )
                        if events
                        else (),
                        int(status.code),
                        status.message,
                        scope,
                    )
                )
    if problems:
        raise Problems(problems)
    return out


def _proto_span_problems(span: Any, at: str) -> list[tuple[str, str]]:
    """Why a protobuf span's ids or times are invalid."""
    bad = [
        (f"{at}.{name}", f"expected {size} bytes, got {len(raw)}")
        for name, raw, size in (
            ("traceId", span.trace_id, 16),
            ("spanId", span.span_id, 8),
        )
        if len(raw) != size
    ]
    if span.parent_span_id and len(span.parent_span_id) != 8:
        bad.append((f"{at}.parentSpanId", f"expected 8 bytes, got {len(span.parent_span_id)}"))
    if not bad and (not any(span.trace_id) or not any(span.span_id)):
        bad.append((at, "an all-zero trace or span id is invalid"))
    for name, value in (
        ("startTimeUnixNano", span.start_time_unix_nano),
        ("endTimeUnixNano", span.end_time_unix_nano),
    ):
        if value >= _MAX_NANOS:
            bad.append((f"{at}.{name}", f"{value} is out of range"))
    return bad
