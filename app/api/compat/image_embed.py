"""The image_embed service's API on top of Loupe's task engine: POST /analyze_image/, POST
/analyze_image_upload/ and GET /available_operations/.

Each image_embed operation type maps to a Loupe task type (`OPERATIONS`) and its `data` back to the shape
image_embed answered: a box is `[xmin, ymin, xmax, ymax]` (null when no person is found), an embedding a
plain list of floats (Loupe's are L2-normalised: cosine similarities are unchanged), a caption a string,
`classify` `{"is_in_collection", "probability", …}`. Loupe's own task types are accepted too, with Loupe's
`data`. The tasks run through `app.tasks.engine.run_tasks`, the engine of /v1/tasks: regions once, crops
once, each model once.

What image_embed did and its clients rely on is kept: results keyed by operation_id (a repeated id: the
last task wins), every result with `status`, `data`, `cropped_image_bbox`, `cropped_image_base64`,
`error_message`; an unknown type or target is that task's `skipped`; an image that cannot be read answers
200 with every task `error` ("Failed to download or process base image: …"); a body that does not validate
is FastAPI's 422 `{"detail": [...]}`, bad `tasks_json` a 400 `{"detail": "Invalid tasks JSON format or
structure: …"}`. Loupe's limits (MAX_TASKS), the SSRF guard, authentication and rate limits apply.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field, HttpUrl, TypeAdapter, ValidationError
from starlette.datastructures import UploadFile

from app.api.compat.dialects import fastapi_style, register
from app.api.deps import read_form, read_json_model, require_media, settings_of
from app.api.v1.openapi_extra import component_ref
from app.core.config import Settings
from app.core.errors import BadRequest, ValidationFailed
from app.core.ratelimit import guard
from app.imaging.sources import ImageSource
from app.schemas import tasks as T
from app.tasks.engine import run_tasks
from app.tasks.types import TASK_TYPES

TAG = "compat: image_embed"


# --- requests and responses (image_embed's app/pydantic_models.py, field for field) ---------------------
class EmbedTask(BaseModel):
    operation_id: str = Field(min_length=1, max_length=256, description="Your name for the task; results are keyed by it.")
    type: str = Field(max_length=64, description="An operation type of GET /available_operations/.")
    params: dict[str, Any] | None = Field(default=None, description="`target`, `face_context`, and per type `collection_id` "
                                                            "(classify) or `max_length` (describe_image).")


class AnalyzeImageRequest(BaseModel):
    image_url: HttpUrl = Field(description="The image's URL (SSRF-guarded, as on /v1).")
    tasks: list[EmbedTask] = Field(max_length=256, description="Up to MAX_TASKS tasks.")

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "image_url": "https://example.com/portrait.jpg",
        "tasks": [{"operation_id": "whole_image_embedding", "type": "embed_clip_vit_b_32", "params": {"target": "whole_image"}},
                  {"operation_id": "person_bbox", "type": "detect_bounding_box", "params": {"target": "prominent_person"}},
                  {"operation_id": "face_bbox_from_person", "type": "detect_bounding_box",
                   "params": {"target": "prominent_face", "face_context": "prominent_person"}}]}]})


class OperationResult(BaseModel):
    status: str = Field(description="`success`, `error` or `skipped`.")
    data: Any = Field(default=None, description="The answer, in image_embed's shape for its types (see the module docs).")
    cropped_image_bbox: list[int] | None = Field(default=None, description="[xmin, ymin, xmax, ymax] of the region, original pixels.")
    cropped_image_base64: str | None = Field(default=None, description="PNG of the region (person and face targets).")
    error_message: str | None = None
    target: str | None = Field(default=None, description="Loupe: the region the task ran on.")
    fallback: bool = Field(default=False, description="Loupe: a person target fell back to the whole image.")


class AnalyzeImageResponse(BaseModel):
    image_url: str = Field(description="The URL as parsed, or `uploaded:<filename>` for an upload.")
    results: dict[str, OperationResult] = Field(description="By operation_id.")


class OperationInfo(BaseModel):
    description: str
    allowed_targets: list[str]
    default_target: str


class AvailableOperationsResponse(BaseModel):
    operations: dict[str, OperationInfo]


# --- the mapping -------------------------------------------------------------------------------------------
def _box(data: Any) -> Any:
    return None if data is None else list(data["box"])


def _vector(data: Any) -> Any:
    return list(data["vector"])


def _same(data: Any) -> Any:
    return data


def _classified(data: Any) -> Any:
    return {"is_in_collection": data["is_in_collection"], "probability": data["probability"],
            **{k: v for k, v in data.items() if k not in ("is_in_collection", "probability")}}


CLIP_B32 = re.compile(r"vit[-_/]?b[-_/]?32|vit-base-patch32", re.I)


def clip_is_b32(settings: Settings) -> str | None:
    """None when CLIP_MODEL_NAME is a ViT-B/32; otherwise why `embed_clip_vit_b_32` must not answer."""
    if CLIP_B32.search(settings.clip_model_name):
        return None
    return (f"embed_clip_vit_b_32 asks for CLIP ViT-B/32; this instance runs {settings.clip_model_name} (CLIP_MODEL_NAME), "
            "whose vectors would not match ones stored from image_embed. Use the type `embed_clip` for this model's vectors.")


@dataclass(frozen=True)
class Operation:
    loupe_type: str
    description: str
    data: Callable[[Any], Any] = _same
    #: the params passed on (others are ignored, as image_embed ignored them) and defaults image_embed had
    params: tuple[str, ...] = ("target", "face_context")
    defaults: dict[str, Any] = field(default_factory=dict)
    #: settings → why this instance cannot answer it (None: it can)
    refuse: Callable[[Settings], str | None] | None = None


OPERATIONS: dict[str, Operation] = {
    "detect_bounding_box": Operation("detect_bounding_box", "Detects a bounding box for a specified target: "
                                     "[xmin, ymin, xmax, ymax], null when there is none.", _box),
    "embed_clip_vit_b_32": Operation("embed_clip", "Generates an embedding using the CLIP ViT-B/32 model "
                                     "(L2-normalised).", _vector, refuse=clip_is_b32),
    "embed_dino_v2": Operation("embed_dinov2", "Generates a visual embedding using the DINOv2 model (DINOV2_MODEL_NAME; "
                               "CLS token, L2-normalised).", _vector),
    "classify": Operation("classify", "Classifies an image region using the collection's trained classifier "
                          "(CLASSIFIER_DIR): {is_in_collection, probability, threshold, …}.", _classified,
                          params=("target", "face_context", "collection_id")),
    "describe_image": Operation("describe", "Generates a text description of an image region (the caption model).",
                                params=("target", "face_context", "max_length"), defaults={"max_length": 300}),
}
OPERATIONS["describe"] = OPERATIONS["describe_image"]
#: image_embed's types Loupe has no model for
NOT_OFFERED = {"embed_dino_v3": "DINOv3", "embed_dino_v3_patch": "DINOv3", "embed_auraface": "AuraFace"}


def operation_of(name: str) -> Operation | None:
    """image_embed's type, or one of Loupe's own task types (answered with Loupe's `data`)."""
    if name in OPERATIONS:
        return OPERATIONS[name]
    if name in TASK_TYPES:
        kind = TASK_TYPES[name]
        return Operation(name, kind.description, params=tuple(kind.params.model_fields))
    return None


def available_operations() -> AvailableOperationsResponse:
    ops = {name: OperationInfo(description=op.description, allowed_targets=list(TASK_TYPES[op.loupe_type].targets),
                               default_target=TASK_TYPES[op.loupe_type].default_target)
           for name, op in OPERATIONS.items() if name != "describe"}
    for name, kind in TASK_TYPES.items():
        if name not in ops:
            ops[name] = OperationInfo(description=f"Loupe: {kind.description}", allowed_targets=list(kind.targets),
                                      default_target=kind.default_target)
    return AvailableOperationsResponse(operations=ops)


_TASK = TypeAdapter(T.Task)


def plan(tasks: list[EmbedTask], settings: Settings) -> tuple[dict[str, OperationResult], list[Any], dict[str, str]]:
    """image_embed tasks → (results already decided: skipped or refused, Loupe tasks to run, Loupe id → yours).

    A repeated operation_id keeps its last task (image_embed's results dict kept the last)."""
    last = {t.operation_id: t for t in tasks}
    decided: dict[str, OperationResult] = {}
    runnable: list[Any] = []
    ids: dict[str, str] = {}
    for i, (op_id, task) in enumerate(last.items()):
        op = operation_of(task.type)
        if op is None:
            why = (f"Unsupported operation type: {task.type!r} (an image_embed operation that needs {NOT_OFFERED[task.type]}, "
                   "which Loupe does not have)" if task.type in NOT_OFFERED else f"Unsupported operation type: {task.type!r}")
            decided[op_id] = OperationResult(status="skipped", error_message=why)
            continue
        refusal = op.refuse(settings) if op.refuse is not None else None
        if refusal is not None:
            decided[op_id] = OperationResult(status="error", error_message=refusal)
            continue
        kind = TASK_TYPES[op.loupe_type]
        params = {**op.defaults, **{k: v for k, v in (task.params or {}).items() if k in op.params}}
        target = params.get("target", kind.default_target)
        if target not in kind.targets:
            decided[op_id] = OperationResult(status="skipped", error_message=(
                f"Unsupported target {target!r} for {task.type!r}. Allowed: {list(kind.targets)}"))
            continue
        if op.loupe_type == "classify" and "collection_id" not in params:
            decided[op_id] = OperationResult(status="skipped",
                                             error_message="'collection_id' param is required for 'classify' operation.")
            continue
        try:
            runnable.append(_TASK.validate_python({"operation_id": f"t{i}", "type": op.loupe_type, "params": params}))
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first.get("loc", ())[2:]) or "params"
            decided[op_id] = OperationResult(status="skipped",
                                             error_message=f"Invalid params for {task.type!r}: {where}: {first.get('msg')}")
            continue
        ids[f"t{i}"] = op_id
    if len(runnable) > settings.max_tasks:
        raise ValidationFailed(f"{len(runnable)} tasks sent; the limit is {settings.max_tasks} (MAX_TASKS).",
                               detail={"errors": [{"loc": ["body", "tasks"], "type": "too_long",
                                                   "msg": f"at most {settings.max_tasks} tasks (MAX_TASKS)"}],
                                       "max_tasks": settings.max_tasks, "received": len(runnable)})
    return decided, runnable, ids


def converted(op_name: str, result: T.TaskResult) -> OperationResult:
    """A Loupe task result in image_embed's shape."""
    op = operation_of(op_name)
    assert op is not None
    out = OperationResult(status=result.status, error_message=result.error_message, target=result.target,
                          fallback=result.fallback)
    if op.loupe_type == "detect_bounding_box" and result.status == "skipped" and result.target == "prominent_person":
        return OperationResult(status="success", data=None, target=result.target)  # image_embed: no person is null
    if result.status == "success":
        out.data = op.data(result.data)
        if result.target not in (None, "whole_image"):  # image_embed crops only person and face regions
            out.cropped_image_bbox = result.cropped_image_bbox
            out.cropped_image_base64 = result.cropped_image_base64
    return out


async def analyze(request: Request, source: ImageSource, tasks: list[EmbedTask], shown_url: str) -> AnalyzeImageResponse:
    settings = settings_of(request)
    orch = request.app.state.orchestrator
    decided, runnable, ids = plan(tasks, settings)
    types = {t.operation_id: t.type for t in tasks}
    [item] = await orch.load_all([source], gray=False, min_dim=settings.analysis_max_dim)
    if item.error is not None:
        why = f"Failed to download or process base image: {item.error.message}"
        return AnalyzeImageResponse(image_url=shown_url, results={
            op_id: OperationResult(status="error", error_message=why) for op_id in dict.fromkeys(t.operation_id for t in tasks)})
    results = dict(decided)
    if runnable:
        [answer] = await run_tasks(orch, [item], T.TaskOptions(tasks=runnable, return_crops=True))
        for loupe_id, result in answer.results.items():
            results[ids[loupe_id]] = converted(types[ids[loupe_id]], result)
    order = list(dict.fromkeys(t.operation_id for t in tasks))
    return AnalyzeImageResponse(image_url=shown_url, results={k: results[k] for k in order})


def in_body(exc: ValidationFailed) -> ValidationFailed:
    """Loupe's 422 with FastAPI's locations (`["body", …]`), as image_embed's clients saw them."""
    if isinstance(exc.detail, dict) and "errors" in exc.detail:
        for e in exc.detail["errors"]:
            e["loc"] = ["body", *e.get("loc", [])]
    return exc


router = APIRouter(tags=[TAG], dependencies=[Depends(guard)])
RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"description": "FastAPI's `{\"detail\": …}` (a 422: the list of `{loc, msg, type}`), with Loupe's `error` "
                          "envelope beside it."} for code in (400, 401, 413, 415, 422, 429)}
NOTE = (" An image that cannot be read answers 200 with every task `error` (image_embed's behaviour); an unknown type "
        "or target is that task's `skipped`.")


@router.post("/analyze_image/", response_model=AnalyzeImageResponse, responses=RESPONSES,
             summary="image_embed: run tasks on an image URL", description="image_embed's request and answer." + NOTE,
             openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
                 "schema": component_ref(AnalyzeImageRequest)}}}})
async def analyze_image(request: Request) -> AnalyzeImageResponse:
    require_media(request, "application/json")
    try:
        body = await read_json_model(request, AnalyzeImageRequest)
    except ValidationFailed as exc:
        raise in_body(exc) from exc
    url = str(body.image_url)
    return await analyze(request, ImageSource(image_id="image", url=url), body.tasks, url)


_TASKS = TypeAdapter(list[EmbedTask])


@router.post("/analyze_image_upload/", response_model=AnalyzeImageResponse, responses=RESPONSES,
             summary="image_embed: run tasks on an uploaded image",
             description="Multipart `image_file` + `tasks_json` (the task list as JSON text); answers "
                         "`\"image_url\": \"uploaded:<filename>\"`." + NOTE,
             openapi_extra={"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
                 "type": "object", "required": ["tasks_json", "image_file"], "properties": {
                     "tasks_json": {"type": "string", "description": "The task list as JSON text."},
                     "image_file": {"type": "string", "format": "binary"}}}}}}})
async def analyze_image_upload(request: Request) -> AnalyzeImageResponse:
    require_media(request, "multipart/form-data", "application/x-www-form-urlencoded")  # FastAPI read either
    form = await read_form(request, max_files=1)
    image_file, tasks_json = form.get("image_file"), form.get("tasks_json")
    missing = [{"type": "missing", "loc": ["body", name], "msg": "Field required"}
               for name, value in (("tasks_json", tasks_json), ("image_file", image_file)) if value is None]
    if missing:
        raise ValidationFailed(f"Invalid request: body.{missing[0]['loc'][1]}: Field required", detail={"errors": missing})
    if not isinstance(image_file, UploadFile):
        raise ValidationFailed("Invalid request: body.image_file: Expected UploadFile",
                               detail={"errors": [{"type": "value_error", "loc": ["body", "image_file"],
                                                   "msg": "Value error, Expected UploadFile"}]})
    try:
        tasks = _TASKS.validate_python(json.loads(str(tasks_json)))
    except (ValueError, ValidationError) as exc:
        raise BadRequest(f"Invalid tasks JSON format or structure: {exc}") from exc
    name = image_file.filename or "upload"
    return await analyze(request, ImageSource(image_id=name, upload=image_file), tasks, f"uploaded:{name}")


@router.get("/available_operations/", response_model=AvailableOperationsResponse,
            summary="image_embed: the operation types this instance answers")
async def operations() -> AvailableOperationsResponse:
    return available_operations()


register(["/analyze_image/", "/analyze_image_upload/", "/available_operations/"], fastapi_style)
