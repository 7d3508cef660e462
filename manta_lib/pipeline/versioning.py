"""Judge versions: a hash of what determines the results.

The source of each level function, the source of the module it lives in (helpers change
results too; ``inspect.getsource`` of one function would miss them), each output schema's
JSON schema and an optional manual version string.

The version depends on the code only, never on how its file was loaded: a file run as a
script (its module is ``__main__``), with ``python -m`` or imported (as Dagster does) hashes
the same module source, so all three share stored results.
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
    module_source = _module_source(getattr(fn, "__module__", "") or "")
    if module_source is not None:
        parts.append(module_source)
    return "\n".join(parts)


def _module_source(module_name: str) -> str | None:
    """The source of the file a module was loaded from, or None (a REPL, compiled code).

    ``__main__`` included: as a script or with ``-m`` it is the same file as when imported.
    """
    module = sys.modules.get(module_name)
    if module is None:
        return None
    with contextlib.suppress(OSError, TypeError):
        return inspect.getsource(module)
    return None


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
