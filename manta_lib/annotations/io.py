"""Labels in and out of files: import from CSV or JSON Lines, export as JSON Lines or Parquet.

An import line names its entity and annotator, then the label's fields::

    {"run_id": "run_a", "trace_id": "tr_1", "annotator": "ana", "category": "looping"}

``trace_id`` for a trace task; ``datapoint_id`` and ``step_number`` (or ``entity_id``,
``"dp@step"``) for a datapoint task. ``run_id`` and ``annotator`` may come from the command
line instead. Any other column must be a field of the task (a CSV's empty cell is a missing
value). Lines are kept in file order: a later label of the same entity and annotator revises
an earlier one.

An export row is one annotator's current label of one entity, with its keys (``run_id``,
``entity_id``, ``trace_id``, ``datapoint_id``, ``step_number``, ``phase``), ``annotator``,
``labelled_at``, ``queue_id``, ``task_version`` and the label's fields: ready to join to the
traces for an SFT or DPO set.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from manta_lib.annotations.queue import Annotations, QueueSummary
from manta_lib.annotations.task import AnnotationTask
from manta_lib.errors import AnnotationError
from manta_lib.models import EntityLevel
from manta_lib.store import annotations as sql

_KEYS = ("run_id", "trace_id", "entity_id", "datapoint_id", "step_number", "annotator")


@dataclass(frozen=True)
class ImportSummary:
    """What an import stored: the queue per run it made, and how many labels."""

    queues: list[QueueSummary]
    labels: int


def read_label_file(path: Path) -> list[dict[str, Any]]:
    """The records of a ``.csv`` or ``.jsonl`` file, in file order."""
    suffix = path.suffix.lower()
    if not path.is_file():
        raise AnnotationError(f"label file {path} does not exist")
    if suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as handle:
            return [
                {k: v for k, v in row.items() if k is not None and v != ""}
                for row in csv.DictReader(handle)
            ]
    if suffix in (".jsonl", ".ndjson"):
        records = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise AnnotationError(f"{path}:{number}: not JSON ({exc.msg})") from None
            if not isinstance(record, dict):
                raise AnnotationError(f"{path}:{number}: expected a JSON object per line")
            records.append(record)
        return records
    raise AnnotationError(f"label file {path}: expected a .csv or .jsonl file, got {suffix!r}")


def import_labels(
    ann: Annotations,
    task: AnnotationTask | str,
    path: Path,
    *,
    run_id: str | None = None,
    annotator: str | None = None,
) -> ImportSummary:
    """Import the labels of ``path`` (see module docs); nothing is stored if one is bad."""
    if isinstance(task, str):
        task = ann.get_task(task)
    fields = {f.name: f for f in task.fields()}
    by_run: dict[str, list[tuple[str, str, dict[str, Any]]]] = {}
    for number, record in enumerate(read_label_file(path), start=1):
        where = f"{path}:{number}"
        unknown = sorted(set(record) - set(fields) - set(_KEYS))
        if unknown:
            raise AnnotationError(
                f"{where}: column(s) {', '.join(unknown)} are neither a field of task "
                f"{task.name!r} ({', '.join(fields)}) nor one of {', '.join(_KEYS)}"
            )
        run = str(record.get("run_id") or run_id or "")
        who = str(record.get("annotator") or annotator or "")
        if not run or not who:
            missing = "run_id" if not run else "annotator"
            raise AnnotationError(
                f"{where}: no {missing}: add a {missing} column or pass --{missing.split('_')[0]}"
            )
        entity = _entity(record, task, where)
        values = {k: _value(v, fields[k].kind) for k, v in record.items() if k in fields}
        by_run.setdefault(run, []).append((entity, who, values))
    if not by_run:
        raise AnnotationError(f"{path} holds no labels")
    # Validate every run's labels before storing any (import_labels validates again, cheaply).
    for run, labels in by_run.items():
        for entity, _, values in labels:
            try:
                task.validate(values)
            except AnnotationError as exc:
                raise AnnotationError(f"{path} ({run}, {entity}): {exc}") from None
    queues = [
        ann.import_labels(task, run, labels, source=path.name) for run, labels in by_run.items()
    ]
    return ImportSummary(queues, sum(len(v) for v in by_run.values()))


def _entity(record: dict[str, Any], task: AnnotationTask, where: str) -> str:
    if record.get("entity_id"):
        return str(record["entity_id"])
    if task.level == EntityLevel.TRACE:
        if not record.get("trace_id"):
            raise AnnotationError(f"{where}: no trace_id (task {task.name!r} labels traces)")
        return str(record["trace_id"])
    if not record.get("datapoint_id") or record.get("step_number") in (None, ""):
        raise AnnotationError(
            f"{where}: a datapoint label needs datapoint_id and step_number (or entity_id)"
        )
    try:
        step = int(record["step_number"])
    except (TypeError, ValueError):
        raise AnnotationError(
            f"{where}: step_number={record['step_number']!r} is not a whole number"
        ) from None
    return f"{record['datapoint_id']}@{step}"


def _value(value: Any, kind: str) -> Any:
    """A CSV cell as the field's type (JSON values pass through)."""
    if not isinstance(value, str):
        return value
    if kind == "bool" and value.strip().lower() in ("true", "false", "1", "0", "yes", "no"):
        return value.strip().lower() in ("true", "1", "yes")
    if kind == "number":
        try:
            number = float(value)
        except ValueError:
            return value  # the task's validation names it
        return int(number) if number.is_integer() else number
    return value


def export_rows(ann: Annotations, task: str, run_id: str | None = None) -> list[dict[str, Any]]:
    """Every annotator's current label of ``task`` (on ``run_id``, or every run)."""
    runs = sorted(
        {q.run_id for q in sql.queues(ann.store) if q.task == task} if run_id is None else {run_id}
    )
    if not runs:
        ann.get_task(task)  # an unknown task's error names the known ones
    rows = []
    for run in runs:
        items = {}
        for queue in sql.queues(ann.store):
            if queue.task == task and queue.run_id == run:
                items.update({(queue.queue_id, i.position): i for i in ann.items(queue.queue_id)})
        for label in ann.annotator_labels(task, run):
            item = items[(label.queue_id, label.position)]
            rows.append(
                {
                    "task": label.task,
                    "task_version": label.task_version,
                    "run_id": label.run_id,
                    "entity_id": label.entity_id,
                    "trace_id": item.trace_id,
                    "datapoint_id": item.datapoint_id,
                    "step_number": item.step_number,
                    "phase": item.phase,
                    "annotator": label.annotator,
                    "labelled_at": label.labelled_at.isoformat(),
                    "queue_id": label.queue_id,
                    "revisions": len(label.history),
                    **label.values,
                }
            )
    return rows


def write_export(rows: list[dict[str, Any]], path: Path, fmt: str) -> None:
    """``rows`` as JSON Lines or Parquet at ``path``."""
    if fmt == "jsonl":
        with path.open("w", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        return
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
        return
    raise AnnotationError(f"--format {fmt!r}: expected jsonl or parquet")
