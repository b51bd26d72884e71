"""Health, version and the operations this instance offers (routed in app.api.v1.router: /health and
/v1/version open, /v1/operations behind the API key)."""

from __future__ import annotations

import platform
import time
from importlib import metadata

from fastapi import Request
from fastapi.responses import JSONResponse

from app.core.config import API_VERSION, VERSION
from app.schemas.system import HealthResponse, HealthStatus, ModelStatus, Operation, OperationsResponse, TaskTypeInfo, VersionResponse

_LIBS = ("fastapi", "pydantic", "numpy", "opencv-python-headless", "pillow", "pillow-heif", "rawpy", "torch", "transformers", "timm",
         "deepface", "ai-edge-litert", "scikit-learn", "limits", "litellm")


def health_payload(request: Request) -> tuple[HealthResponse, int]:
    state = request.app.state
    registry = state.registry
    models = {name: ModelStatus(**info) for name, info in registry.status().items()}
    problems = []
    for name, m in models.items():
        if m.preload and m.state == "failed":
            problems.append(f"preloaded model {name} failed: {m.last_error}")
    if not getattr(state, "accepting", False):
        problems.append("the service is shutting down (its worker pool is closed)")
    limiter = state.access.state.snapshot()
    status: HealthStatus
    if problems:
        status = "unavailable"
    elif limiter["reachable"] is False or any(m.state == "failed" or not m.files_present for m in models.values()):
        status = "degraded"
    else:
        status = "ok"
    body = HealthResponse(status=status, version=VERSION, api_version=API_VERSION,
                          uptime_s=round(time.time() - state.started_at, 3), device=registry.device_in_use(),
                          models=models, problems=problems, rate_limit=limiter)
    return body, 503 if status == "unavailable" else 200


async def health(request: Request):
    body, code = health_payload(request)
    return JSONResponse(body.model_dump(mode="json"), status_code=code)


async def version(request: Request) -> VersionResponse:
    libs = {}
    for lib in _LIBS:
        try:
            libs[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            continue
    settings = request.app.state.settings
    return VersionResponse(name=settings.app_name, version=VERSION, app_version=settings.display_version,
                           api_version=API_VERSION, python=platform.python_version(), libraries=libs)


def operations_list(request: Request) -> list[Operation]:
    s = request.app.state.settings
    registry = request.app.state.registry
    infos = {name: registry.info(name) for name in registry.names()}

    def op(name, flag, endpoint, description, models, settings):
        ready = all(infos[m].state == "ready" for m in models if m in infos)
        available = all(infos[m].usable for m in models if m in infos)
        return Operation(name=name, flag=flag, endpoint=endpoint, description=description, models=models,
                         ready=ready, available=available or ready, settings=settings)

    return [
        op("blur", "run_blur", "/v1/analyze", "Variance of the Laplacian at ANALYSIS_MAX_DIM.", [],
           {"blur_threshold": s.blur_threshold, "analysis_max_dim": s.analysis_max_dim}),
        op("exposure", "run_exposure", "/v1/analyze", "Mean brightness, clipped shadows and highlights.", [],
           {"bright_min": s.bright_min, "bright_max": s.bright_max, "shadow_clip_max": s.shadow_clip_max,
            "highlight_clip_max": s.highlight_clip_max}),
        op("quality_gate", None, "/v1/quality", "Pass/fail from blur, brightness and size.", [],
           {"blur_threshold": s.blur_threshold, "bright_min": s.bright_min, "bright_max": s.bright_max,
            "min_side_px": s.min_side_px}),
        op("quality", "run_quality", "/v1/analyze", "0–1 quality score from blur, exposure, BRISQUE and NIMA technical "
           "(whichever are available), plus NIQE.", ["brisque", "niqe", "nima_technical"], {"quality_min": s.quality_min}),
        op("aesthetic", "run_aesthetic", "/v1/analyze", "NIMA aesthetic (AVA); LAION aesthetic when CLIP runs.",
           ["nima_aesthetic"], {}),
        op("embedding", "run_embedding", "/v1/analyze", "CLIP image embedding.", ["clip"],
           {"clip_model_name": s.clip_model_name}),
        op("faces", "run_faces", "/v1/analyze", "Face boxes and landmarks (YuNet).", ["faces"],
           {"emotion_max_dim": s.emotion_max_dim}),
        op("emotion", "run_emotion", "/v1/analyze", "Emotion per face (DeepFace).", ["emotion"],
           {"deepface_detector": s.deepface_detector, "emotion_max_dim": s.emotion_max_dim}),
        op("cluster", None, "/v1/cluster", "DBSCAN over your embedding vectors.", [],
           {"max_cluster_items": s.max_cluster_items}),
        op("cluster_images", None, "/v1/cluster/images", "Near-duplicate groups of a photo set with the best shot "
           "of each (perceptual hash, plus CLIP embeddings when ready, else the MobileNet embedding).", [],
           {"max_cluster_images": s.max_cluster_images, "mobilenet_min_cosine": s.mobilenet_min_cosine}),
        llm_operation(s),
    ]


def llm_operation(s) -> Operation:
    """Ready when the default model can probably be reached (app.llm.provider.looks_configured)."""
    from app.llm.provider import looks_configured

    configured = looks_configured(s)
    return Operation(name="llm_review", flag=None, endpoint="/v1/analyze/llm",
                     description="Structured photo review by a vision LLM through LiteLLM (also /v1/analyze/llm/group).",
                     models=[], ready=configured, available=configured,
                     settings={"llm_default_model": s.llm_default_model, "llm_api_base": s.llm_api_base or None,
                               "llm_timeout_s": s.llm_timeout_s, "llm_max_tokens": s.llm_max_tokens,
                               "llm_image_max_dim": s.llm_image_max_dim})


def task_types(request: Request) -> list[TaskTypeInfo]:
    """Every /v1/tasks type with its targets, params (and defaults), model and readiness. Region targets
    also need the person model (and YuNet for faces), which `ready`/`available` take into account."""
    from app.tasks.types import TASK_TYPES

    registry = request.app.state.registry
    infos = {name: registry.info(name) for name in registry.names()}
    out = []
    for t in TASK_TYPES.values():
        needs = [t.model] if t.model else []
        if t.analysis == "quality":
            needs = []  # the quality score works with the gate alone
        if "prominent_person" in t.targets:
            needs.append("person")
        if "prominent_face" in t.targets:
            needs.append("faces")
        schema = t.params.model_json_schema()
        out.append(TaskTypeInfo(
            type=t.name, description=t.description, targets=list(t.targets), default_target=t.default_target,
            params={k: {kk: vv for kk, vv in v.items() if kk != "title"} for k, v in schema.get("properties", {}).items()},
            model=t.model, ready=all(infos[m].state == "ready" for m in needs if m in infos),
            available=all(infos[m].usable for m in needs if m in infos)))
    return out


async def operations(request: Request) -> OperationsResponse:
    return OperationsResponse(api_version=API_VERSION, operations=operations_list(request), tasks=task_types(request))
