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
import subprocess
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
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


_SECTION = "# ==== "


def version_source(
    parts: Iterable[tuple[str, Callable[..., Any], type[BaseModel]]], manual: str | None = None
) -> str:
    """What :func:`compute_version` hashes, laid out to be read and diffed: each level's
    function and output schema, then each module's source once, then the manual version."""
    sections: list[str] = []
    modules: dict[str, str] = {}
    for level_name, fn, schema in parts:
        name = getattr(fn, "__qualname__", repr(fn))
        try:
            body = inspect.getsource(fn)
        except (OSError, TypeError):
            body = "(source unavailable: the version hashes its bytecode)\n"
        sections.append(f"{_SECTION}level {level_name}: {name}\n{body}")
        schema_text = json.dumps(schema.model_json_schema(), sort_keys=True, indent=2)
        sections.append(f"{_SECTION}level {level_name} output {schema.__name__}\n{schema_text}\n")
        module = getattr(fn, "__module__", "") or ""
        if module not in modules:
            modules[module] = _module_source(module) or ""
    for module, text in modules.items():
        if text:
            sections.append(f"{_SECTION}module {module}\n{text}")
    if manual:
        sections.append(f"{_SECTION}version {manual}\n")
    return "".join(section if section.endswith("\n") else section + "\n" for section in sections)


def changed_functions(old_source: str, new_source: str) -> list[str]:
    """The level functions (``level: name``) whose section differs between two sources; a
    module-only change (a helper) is named as its module, a schema-only one as the output."""
    old, new = _sections(old_source), _sections(new_source)
    differing = [title for title, text in new.items() if old.get(title) != text]
    functions = [t for t in differing if t.startswith("level ") and " output " not in t]
    modules = [t for t in differing if t.startswith("module ")]
    outputs = [t for t in differing if t.startswith("level ") and " output " in t]
    changed = functions or modules or outputs
    return [title.removeprefix("level ").removeprefix("module ") for title in changed]


def _sections(source: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for chunk in source.split(_SECTION)[1:]:
        title, _, body = chunk.partition("\n")
        found[title] = body
    return found


def git_label(fn: Callable[..., Any]) -> str | None:
    """``git <short commit>`` of the file ``fn`` lives in (``+edits`` when the file differs from
    that commit), or None outside a git checkout."""
    try:
        path = inspect.getsourcefile(fn)
    except TypeError:
        return None
    if not path:
        return None
    folder = str(Path(path).parent)
    try:
        commit = subprocess.run(
            ["git", "-C", folder, "log", "-1", "--format=%h", "--", path],
            capture_output=True, text=True, timeout=5, check=False,
        )  # fmt: skip
        if commit.returncode != 0 or not commit.stdout.strip():
            return None
        dirty = subprocess.run(
            ["git", "-C", folder, "diff", "--quiet", "HEAD", "--", path],
            capture_output=True, timeout=5, check=False,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return f"git {commit.stdout.strip()}" + ("+edits" if dirty.returncode == 1 else "")
