"""Label tasks: what a person answers about a trace or a datapoint group, as a pydantic model.

A task's fields are of four kinds a form can render and a store can rebuild: a ``Literal`` of
strings (``category``), ``bool``, ``int``/``float`` (``number``) and ``str`` (``text``, e.g. a
free-text note); each may be optional (``X | None``) or have a default. The task's version is a
hash of its fields, so a changed schema stores its labels apart from the old ones, like a
judge's new version.
"""

from __future__ import annotations

import hashlib
import json
import types
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, create_model
from pydantic import ValidationError as PydanticValidationError
from pydantic_core import PydanticUndefined

from manta_lib.errors import AnnotationError
from manta_lib.models import EntityLevel

#: Columns every stored label gets besides the task's fields.
ANNOTATOR_COLUMN = "annotator"
RESERVED_FIELDS = frozenset({ANNOTATOR_COLUMN, "status", "error", "judge_version", "computed_at"})
LEVELS = (EntityLevel.TRACE, EntityLevel.DATAPOINT)
FieldKind = Literal["category", "bool", "number", "text"]


@dataclass(frozen=True)
class LabelField:
    """One field of a label form.

    ``choices``: the categories (``category`` only), in declaration order (digit 1 picks the
    first). ``required``: the field has no default. ``default``: its default otherwise.
    ``integer``: a ``number`` that must be whole.
    """

    name: str
    kind: FieldKind
    choices: list[str] = field(default_factory=list)
    required: bool = True
    default: Any = None
    integer: bool = False
    description: str = ""


class AnnotationTask:
    """A label task, e.g. ``AnnotationTask("failure_modes_human", FailureLabel)``.

    Args:
        name: the task's name, also the judge its labels are stored under (``svc.results(name)``).
        schema: a pydantic model whose fields are a ``Literal`` category, booleans, numbers or
            strings (optionally ``| None`` or with a default).
        level: ``EntityLevel.TRACE`` (one trace) or ``EntityLevel.DATAPOINT`` (a GRPO group:
            one datapoint's traces at one step).
    """

    def __init__(
        self,
        name: str,
        schema: type[BaseModel],
        level: EntityLevel | str = EntityLevel.TRACE,
        *,
        description: str = "",
    ) -> None:
        if not name or not name.replace("_", "").replace("-", "").isalnum():
            raise AnnotationError(
                f"task name {name!r} is not an identifier: use letters, digits, '_' or '-' "
                f"(e.g. failure_modes_human)"
            )
        self.name = name
        self.schema = schema
        self.level = _level(level)
        self.description = description
        self._fields = [_label_field(n, info) for n, info in schema.model_fields.items()]
        if not self._fields:
            raise AnnotationError(f"task {name!r}: schema {schema.__name__} has no fields")

    def fields(self) -> list[LabelField]:
        """The form's fields, in the schema's order."""
        return list(self._fields)

    @property
    def version(self) -> str:
        """A hash of the fields (names, kinds, choices, defaults): the judge version of the
        task's labels."""
        text = json.dumps([asdict(f) for f in self._fields], sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def spec(self) -> str:
        """The JSON the store keeps to rebuild the task (:meth:`from_spec`)."""
        return json.dumps(
            {
                "name": self.name,
                "level": self.level.value,
                "description": self.description,
                "fields": [asdict(f) for f in self._fields],
            },
            sort_keys=True,
        )

    @classmethod
    def from_spec(cls, spec: str) -> AnnotationTask:
        """Rebuild a stored task (its schema is an equivalent model built from the fields)."""
        data = json.loads(spec)
        fields = [LabelField(**f) for f in data["fields"]]
        return cls(
            data["name"],
            model_from_fields(data["name"], fields),
            data["level"],
            description=data.get("description", ""),
        )

    @classmethod
    def from_options(
        cls,
        name: str,
        *,
        categories: list[str] | None = None,
        booleans: list[str] | None = None,
        numbers: list[str] | None = None,
        note: bool = False,
        level: EntityLevel | str = EntityLevel.TRACE,
    ) -> AnnotationTask:
        """The simple task the CLI declares: a required ``category`` among ``categories``,
        optional booleans and numbers, and an optional free-text ``note``."""
        fields: list[LabelField] = []
        if categories:
            choices = [c.strip() for c in categories if c.strip()]
            if len(set(choices)) != len(choices):
                raise AnnotationError(f"--category {','.join(choices)} repeats a category")
            fields.append(LabelField("category", "category", choices))
        fields += [LabelField(b, "bool", required=False) for b in booleans or []]
        fields += [LabelField(n, "number", required=False) for n in numbers or []]
        if note:
            fields.append(LabelField("note", "text", required=False, default=""))
        if not fields:
            raise AnnotationError(
                f"task {name!r} has no fields: give --category a,b,c (and/or --bool, --number, "
                f"--note)"
            )
        return cls(name, model_from_fields(name, fields), level)

    def validate(self, values: dict[str, Any]) -> BaseModel:
        """``values`` as the task's model; :class:`AnnotationError` naming each bad field."""
        unknown = sorted(set(values) - {f.name for f in self._fields})
        if unknown:
            raise AnnotationError(
                f"task {self.name!r} has no field(s) {', '.join(unknown)} "
                f"(its fields: {', '.join(f.name for f in self._fields)})"
            )
        try:
            return self.schema.model_validate(values)
        except PydanticValidationError as exc:
            problems = []
            for error in exc.errors():
                where = ".".join(str(p) for p in error["loc"]) or "label"
                spec = next((f for f in self._fields if f.name == where), None)
                fix = (
                    f"one of {', '.join(spec.choices)}"
                    if spec and spec.kind == "category"
                    else f"a {spec.kind}"
                    if spec
                    else "a valid value"
                )
                problems.append(
                    f"{where}={error.get('input')!r}: {error['msg'].lower()} (expected {fix})"
                )
            raise AnnotationError(
                f"label for task {self.name!r} is invalid: {'; '.join(problems)}"
            ) from None

    def __repr__(self) -> str:
        return f"AnnotationTask({self.name!r}, {self.schema.__name__}, level={self.level.value})"


def _level(level: EntityLevel | str) -> EntityLevel:
    try:
        parsed = EntityLevel(level)
    except ValueError:
        parsed = None
    if parsed not in LEVELS:
        raise AnnotationError(
            f"annotation level {level!r} is not supported: use trace or datapoint"
        )
    assert parsed is not None
    return parsed


def _label_field(name: str, info: Any) -> LabelField:
    if name in RESERVED_FIELDS or name.startswith("__"):
        raise AnnotationError(
            f"label field {name!r} is reserved (Manta stores {', '.join(sorted(RESERVED_FIELDS))} "
            f"beside each label): rename it"
        )
    annotation = info.annotation
    required = info.is_required()
    default = None if info.default is PydanticUndefined else info.default
    if get_origin(annotation) in (Union, types.UnionType):
        inner = [a for a in get_args(annotation) if a is not type(None)]
        if len(inner) == 1 and len(get_args(annotation)) == 2:
            annotation = inner[0]
            required = False
    description = info.description or ""
    if get_origin(annotation) is Literal:
        choices = list(get_args(annotation))
        if not choices or not all(isinstance(c, str) for c in choices):
            raise AnnotationError(
                f"label field {name!r}: a category must be a Literal of strings, got {choices!r}"
            )
        return LabelField(name, "category", choices, required, default, description=description)
    if annotation is bool:
        return LabelField(name, "bool", [], required, default, description=description)
    if annotation in (int, float):
        return LabelField(
            name, "number", [], required, default, annotation is int, description=description
        )
    if annotation is str:
        return LabelField(name, "text", [], required, default, description=description)
    raise AnnotationError(
        f"label field {name!r} has type {annotation!r}: a label field is a Literal of strings "
        f"(a category), bool, int, float or str (optionally | None)"
    )


def model_from_fields(name: str, fields: list[LabelField]) -> type[BaseModel]:
    """A pydantic model with ``fields`` (what a stored task is rebuilt from)."""
    definitions: dict[str, Any] = {}
    for f in fields:
        kind: Any
        if f.kind == "category":
            kind = Literal[tuple(f.choices)]
        elif f.kind == "bool":
            kind = bool
        elif f.kind == "number":
            kind = int if f.integer else float
        else:
            kind = str
        if f.required:
            definitions[f.name] = (kind, Field(..., description=f.description or None))
        else:
            definitions[f.name] = (kind | None, Field(f.default, description=f.description or None))
    model_name = "".join(part.capitalize() for part in name.replace("-", "_").split("_"))
    return create_model(model_name or "Label", __config__=ConfigDict(extra="forbid"), **definitions)
