"""POST /v1/tasks and /v1/tasks/batch: task lists over image regions. Parsing only; logic in app.tasks."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import TypeAdapter, ValidationError

from app.api.deps import ImageRequestSpec, read_image_request, repeated, settings_of
from app.api.v1.openapi_extra import body_json_or_form
from app.core import errors
from app.core.config import API_VERSION
from app.core.errors import ValidationFailed
from app.schemas import tasks as T
from app.schemas.common import ErrorEnvelope
from app.tasks.engine import run_tasks
from app.tasks.types import TASK_TYPES

router = APIRouter(tags=["tasks"])

ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorEnvelope} for code in (400, 401, 413, 415, 422, 429, 502, 504)}
_TASK_LIST = TypeAdapter(list[T.Task])


def from_form(form: T.TasksForm) -> T.TaskOptions:
    """The multipart fields → the task options (`tasks_json` holds the same array as the JSON body's `tasks`)."""
    try:
        tasks = _TASK_LIST.validate_json(form.tasks_json, strict=True)
    except ValidationError as exc:
        raise errors.validation_failed([{**e, "loc": ("tasks_json", *e.get("loc", ()))} for e in exc.errors()]) from exc
    return T.TaskOptions(tasks=tasks, return_crops=form.return_crops)


def check_tasks(opts: T.TaskOptions, max_tasks: int) -> None:
    """422s the schema cannot state: more than MAX_TASKS tasks, or an operation_id used twice."""
    if len(opts.tasks) > max_tasks:
        raise ValidationFailed(f"{len(opts.tasks)} tasks sent; the limit is {max_tasks} (MAX_TASKS).",
                               detail={"max_tasks": max_tasks, "received": len(opts.tasks)})
    dupes = repeated([t.operation_id for t in opts.tasks])
    if dupes:
        raise ValidationFailed(f"operation_id must be unique; sent more than once: {dupes}.",
                               detail={"duplicate_operation_ids": dupes, "allowed_types": sorted(TASK_TYPES)})


async def read_and_load(request: Request, spec: ImageRequestSpec[T.TaskOptions]) -> tuple[list[Any], T.TaskOptions]:
    """The request read and checked, and its images read and decoded (RGB: regions are cut from them)."""
    settings = settings_of(request)
    req = await read_image_request(request, spec)
    check_tasks(req.opts, settings.max_tasks)
    items = await request.app.state.orchestrator.load_all(req.sources, gray=False, min_dim=settings.analysis_max_dim)
    return items, req.opts


SINGLE = ImageRequestSpec(T.TasksRequest, images="image", options=T.TaskOptions, form_options=T.TasksForm,
                          from_form=from_form)
BATCH = ImageRequestSpec(T.TasksBatchRequest, images="images", options=T.TaskOptions, form_options=T.TasksForm,
                         from_form=from_form, limit=lambda s: s.max_batch_size)

DESCRIPTION = (
    "Each task names a type and, for region tasks, a `params.target`: the whole image, the prominent person "
    "(the largest; the whole image when none is found, with `fallback: true`) or the prominent face (inside the "
    "prominent person by default, `params.face_context`; `skipped` when there is none). Each region is detected "
    "once per request and each crop cut once, whatever the number of tasks using it. Boxes are "
    "[xmin, ymin, xmax, ymax] in original-image pixels. One failing task never fails the others; an image that "
    "cannot be read fails the request (batch: that image only). Multipart: `file` + `tasks_json` (the task array "
    "as JSON text) + `return_crops`.")


@router.post("/tasks", response_model=T.TasksResponse, responses=ERRORS, summary="Run a task list on one image",
             description=DESCRIPTION,
             openapi_extra=body_json_or_form(T.TasksRequest, multiple_files=False, form_model=T.TasksForm))
async def tasks(request: Request) -> T.TasksResponse:
    items, opts = await read_and_load(request, SINGLE)
    if items[0].error is not None:
        raise items[0].exception()
    [result] = await run_tasks(request.app.state.orchestrator, items, opts)
    return result


@router.post("/tasks/batch", response_model=T.TasksBatchResponse, responses=ERRORS,
             summary="Run one task list on several images; each image succeeds or fails on its own",
             description=DESCRIPTION + " Every model runs once over the regions of all the images.",
             openapi_extra=body_json_or_form(T.TasksBatchRequest, multiple_files=True, form_model=T.TasksForm))
async def tasks_batch(request: Request) -> T.TasksBatchResponse:
    items, opts = await read_and_load(request, BATCH)
    return T.TasksBatchResponse(api_version=API_VERSION, results=await run_tasks(request.app.state.orchestrator, items, opts))
