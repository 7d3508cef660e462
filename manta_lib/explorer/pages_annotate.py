"""Annotating in the explorer (``manta explore --annotate``): the queue list, a queue's page,
and an item page — the trace page (or the group page, for a datapoint-level task) with the
label form beside it.

Every write is a form post to ``/annotate/...`` (checked for its Origin and CSRF token by
:mod:`manta_lib.explorer.write_guard`) and answers with a redirect to the page to show next:
save and skip open the annotator's next item, undo reopens the item it reverted. A value
the task's schema refuses is shown on the item page (400) and nothing is stored. The pages
call only :class:`manta_lib.annotations.Annotations`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from manta_lib.annotations import Annotations, AnnotationTask, LabelField, QueueItem
from manta_lib.errors import AnnotationError
from manta_lib.explorer.pages_group import group_page_values
from manta_lib.explorer.pages_traces import trace_page_values
from manta_lib.explorer.web import BadRequest, NotFound, explorer, render
from manta_lib.explorer.write_guard import (
    ANNOTATOR_COOKIE,
    annotator,
    name_is_fixed,
    read_form,
    safe_next,
    set_cookie,
    valid_annotator,
)
from manta_lib.models import EntityLevel

FIELD_PREFIX = "f."
"""Form fields named ``f.<field>`` are the label's values; anything else is not."""


@contextmanager
def open_annotations(request: Request) -> Iterator[Annotations]:
    """The annotation backend over the shared store, held for the block only."""
    with explorer(request).lease.acquire() as store:
        yield Annotations(store)


def queue_url(queue_id: str) -> str:
    return f"/annotate/{quote(queue_id, safe='')}"


def item_url(queue_id: str, position: int) -> str:
    return f"{queue_url(queue_id)}/items/{position}"


# ---- pages -----------------------------------------------------------------------------------


def queues_page(request: Request) -> Response:
    """Every queue with its progress, and the form that sets the annotator's name."""
    with open_annotations(request) as notes:
        queues = notes.queues()
    return render(
        request,
        "annotate_queues.html",
        {
            "queues": queues,
            "name_fixed": name_is_fixed(request),
            "next": safe_next(request.query_params.get("next"), "/annotate"),
            "queue_url": queue_url,
        },
    )


def queue_page(request: Request) -> Response:
    """One queue: its task, progress per annotator, and the button that starts labelling."""
    queue_id = request.path_params["queue_id"]
    with open_annotations(request) as notes:
        task = _task(notes, queue_id)
        summary = notes.queue(queue_id)
    return render(
        request,
        "annotate_queue.html",
        {
            "queue_id": queue_id,
            "task": task,
            "summary": summary,
            "progress": summary.progress,
            "done": request.query_params.get("done") == "1",
            "queue_url": queue_url,
        },
    )


def item_page(request: Request) -> Response:
    """The item's trace (or group) page with the label form beside it."""
    queue_id = request.path_params["queue_id"]
    position = request.path_params["position"]
    return _item_response(request, queue_id, position, values={}, error=None)


# ---- writes ----------------------------------------------------------------------------------


async def set_name(request: Request) -> Response:
    """Remember the annotator's name (a cookie), then go back to ``next``."""
    form = await read_form(request)
    target = safe_next(str(form.get("next", "")), "/annotate")
    if name_is_fixed(request):
        return RedirectResponse(target, 303)
    name = str(form.get("name", "")).strip()
    if not valid_annotator(name):
        raise BadRequest(
            "Invalid name",
            f"annotator name {name!r} is invalid: use 1-64 letters, digits, spaces or . @ + - _",
            [(f"/annotate?next={quote(target, safe='')}", "try again")],
        )
    response = RedirectResponse(target, 303)
    set_cookie(request, response, ANNOTATOR_COOKIE, name)
    return response


async def next_item(request: Request) -> Response:
    """Hand this annotator the next item of the queue (or the one they hold)."""
    queue_id = request.path_params["queue_id"]
    who = _require_annotator(request, queue_url(queue_id))
    if isinstance(who, Response):
        return who
    return await run_in_threadpool(_go_next, request, queue_id, who)


async def save_label(request: Request) -> Response:
    """Store the label (validated by the task's schema), then open the next item."""
    queue_id = request.path_params["queue_id"]
    position = request.path_params["position"]
    who = _require_annotator(request, item_url(queue_id, position))
    if isinstance(who, Response):
        return who
    form = await read_form(request)
    return await run_in_threadpool(_save, request, queue_id, position, who, form)


def _save(request: Request, queue_id: str, position: int, who: str, form: FormData) -> Response:
    with open_annotations(request) as notes:
        task = _task(notes, queue_id)
        values = form_values(task, form)
        try:
            notes.save_label(queue_id, position, who, values)
        except AnnotationError as exc:
            shown = {
                k[len(FIELD_PREFIX) :]: v for k, v in form.items() if k.startswith(FIELD_PREFIX)
            }
            return _item_response(
                request, queue_id, position, values=shown, error=str(exc), status=400
            )
    return _go_next(request, queue_id, who)


async def skip_item(request: Request) -> Response:
    queue_id = request.path_params["queue_id"]
    position = request.path_params["position"]
    who = _require_annotator(request, item_url(queue_id, position))
    if isinstance(who, Response):
        return who
    return await run_in_threadpool(_skip, request, queue_id, position, who)


def _skip(request: Request, queue_id: str, position: int, who: str) -> Response:
    with open_annotations(request) as notes:
        _task(notes, queue_id)
        notes.skip(queue_id, position, who)
    return _go_next(request, queue_id, who)


async def undo(request: Request) -> Response:
    """Revert this annotator's last save or skip in the queue and reopen that item."""
    queue_id = request.path_params["queue_id"]
    who = _require_annotator(request, queue_url(queue_id))
    if isinstance(who, Response):
        return who
    return await run_in_threadpool(_undo, request, queue_id, who)


def _undo(request: Request, queue_id: str, who: str) -> Response:
    with open_annotations(request) as notes:
        _task(notes, queue_id)
        item = notes.undo(queue_id, who)
    if item is None:
        return RedirectResponse(queue_url(queue_id) + "?nothing_to_undo=1", 303)
    return RedirectResponse(item_url(queue_id, item.position) + "?undone=1", 303)


# ---- helpers ---------------------------------------------------------------------------------


def form_values(task: AnnotationTask, form: FormData) -> dict[str, object]:
    """The label's values from the form: ``f.<name>`` fields, typed by the task's field kinds.

    An empty field is left out (the schema's default applies, or it reports the field
    missing); a field the task does not have is passed on so the schema refuses it.
    """
    kinds = {f.name: f for f in task.fields()}
    values: dict[str, object] = {}
    for key, raw in form.multi_items():
        if not key.startswith(FIELD_PREFIX) or not isinstance(raw, str):
            continue
        name = key[len(FIELD_PREFIX) :]
        text = raw.strip()
        if text == "":
            continue
        spec = kinds.get(name)
        values[name] = _typed(spec, text) if spec is not None else text
    return values


def _typed(spec: LabelField, text: str) -> object:
    if spec.kind == "bool":
        return {"true": True, "false": False}.get(text, text)
    if spec.kind == "number":
        try:
            return int(text) if spec.integer else float(text)
        except ValueError:
            return text  # the schema names the field and the value
    return text


def _task(notes: Annotations, queue_id: str) -> AnnotationTask:
    try:
        return notes.task(queue_id)
    except AnnotationError as exc:
        raise NotFound("Queue not found", str(exc), [("/annotate", "all queues")]) from None


def _require_annotator(request: Request, back: str) -> str | Response:
    who = annotator(request)
    if who is None:
        return RedirectResponse(f"/annotate?next={quote(back, safe='')}", 303)
    return who


def _go_next(request: Request, queue_id: str, who: str) -> Response:
    with open_annotations(request) as notes:
        _task(notes, queue_id)
        item = notes.next_item(queue_id, who)
    if item is None:
        return RedirectResponse(queue_url(queue_id) + "?done=1", 303)
    return RedirectResponse(item_url(queue_id, item.position), 303)


def _item_response(
    request: Request,
    queue_id: str,
    position: int,
    *,
    values: dict[str, Any],
    error: str | None,
    status: int = 200,
) -> Response:
    with open_annotations(request) as notes:
        task = _task(notes, queue_id)
        try:
            item: QueueItem = notes.item(queue_id, position)
        except AnnotationError as exc:
            raise NotFound(
                "Item not found", str(exc), [(queue_url(queue_id), "the queue")]
            ) from None
        progress = notes.progress(queue_id)
    panel = {
        "queue_id": queue_id,
        "task": task,
        "fields": task.fields(),
        "item": item,
        "progress": progress,
        "values": values,
        "error": error,
        "undone": request.query_params.get("undone") == "1",
        "queue_url": queue_url(queue_id),
        "item_url": item_url(queue_id, position),
    }
    if task.level == EntityLevel.TRACE:
        if item.trace_id is None:
            raise NotFound("Item not found", f"item {position} of {queue_id!r} names no trace.")
        page = trace_page_values(request, item.trace_id)
        return render(request, "annotate_trace.html", {**page, "label": panel}, status=status)
    page = group_page_values(request, item.run_id, item.datapoint_id, item.step_number)
    return render(request, "annotate_group.html", {**page, "label": panel}, status=status)


def annotate_routes() -> list[Route]:
    """The routes ``--annotate`` adds (the POSTs are the explorer's only writes)."""
    return [
        Route("/annotate", queues_page, name="annotate"),
        Route("/annotate/name", set_name, methods=["POST"], name="annotate_name"),
        Route("/annotate/{queue_id}", queue_page, name="annotate_queue"),
        Route("/annotate/{queue_id}/next", next_item, methods=["POST"]),
        Route("/annotate/{queue_id}/undo", undo, methods=["POST"]),
        Route("/annotate/{queue_id}/items/{position:int}", item_page, name="annotate_item"),
        Route("/annotate/{queue_id}/items/{position:int}/label", save_label, methods=["POST"]),
        Route("/annotate/{queue_id}/items/{position:int}/skip", skip_item, methods=["POST"]),
    ]
