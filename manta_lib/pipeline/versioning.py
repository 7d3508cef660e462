"""Judge versions: a hash of what determines the results.

The source of each level function, the source of the module it lives in (helpers change
results too; ``inspect.getsource`` of one function would miss them), each output schema's
JSON schema and an optional manual version string.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import sys
from collections.abc import Callable, Iterable
from typing import Any

from pydantic import BaseModel


def function_fingerprint(fn: Callable[..., Any]) -> str:
    """Source of ``fn`` and of its module (bytecode when the source is unavailable)."""
    parts: list[str] = []
    try:
        parts.append(inspect.getsource(fn))
    except (OSError, TypeError):
        code = getattr(fn, "__code__", None)
        parts.append(code.co_code.hex() if code is not None else repr(fn))
    module = sys.modules.get(getattr(fn, "__module__", "") or "")
    if module is not None and module.__name__ != "__main__":
        with contextlib.suppress(OSError, TypeError):
            parts.append(inspect.getsource(module))
    return "\n".join(parts)


def schema_fingerprint(schema: type[BaseModel]) -> str:
    return json.dumps(schema.model_json_schema(), sort_keys=True)


def compute_version(
    parts: Iterable[tuple[str, Callable[..., Any], type[BaseModel]]], manual: str | None = None
) -> str:
    """A short stable hash over ``(level name, function, schema)`` parts and ``manual``."""
    digest = hashlib.sha256()
    for level_name, fn, schema in parts:
        for piece in (level_name, function_fingerprint(fn), schema_fingerprint(schema)):
            digest.update(piece.encode())
            digest.update(b"\0")
    digest.update((manual or "").encode())
    return digest.hexdigest()[:12]
