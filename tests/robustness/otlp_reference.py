"""What a test compares an OTLP trace with: the same spans imported once, cleanly, into a
fresh database on the same connection."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

from manta_lib.importers import import_files
from manta_lib.store import Store
from manta_lib.store.schema import ensure_schema


def fresh_store(store: Store) -> Store:
    settings = store.settings.model_copy(update={"database": f"ref_{uuid.uuid4().hex[:12]}"})
    fresh = Store(store.client, settings)
    ensure_schema(fresh)
    return fresh


def snapshot(store: Store) -> dict[str, Any]:
    """Every stored trace row and span row (all columns), in a comparable order."""
    traces = store.rows("SELECT * FROM {db}.traces ORDER BY run_id, trace_id")
    spans = store.rows("SELECT * FROM {db}.spans ORDER BY run_id, trace_id, seq, span_id")
    return {"traces": traces, "spans": spans}


def reference(store: Store, docs: list[dict[str, Any]], folder: Path) -> dict[str, Any]:
    """The snapshot of ``docs`` (OTLP JSON requests, each trace whole in one of them)
    imported once into a fresh database."""
    clean = fresh_store(store)
    path = folder / f"clean_{uuid.uuid4().hex[:8]}.jsonl"
    path.write_text("\n".join(json.dumps(doc) for doc in docs) + "\n")
    report = import_files([path], store=clean, format="otlp")
    assert report.ok, [str(e) for e in report.errors]
    return snapshot(clean)
