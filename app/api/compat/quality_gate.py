"""The image-quality-gate service's API: POST /quality (multipart `file`) and GET /version.

The answer is Loupe's gate (`app.services.gate`, the same as POST /v1/quality) with the gate service's
fields — `blur_score`, `brightness`, `width`, `height`, `is_ok`, `thresholds.{blur_min, bright_min,
bright_max}` — and Loupe's beside them (`reasons`, the other thresholds). Its settings are read as
aliases (BLUR_MIN, RESIZE_MAX_DIM, MAX_UPLOAD_MB; `app.core.config.SETTING_ALIASES`). Errors are
FastAPI's `{"detail": …}` as the gate answered them, with Loupe's envelope beside (`dialects.fastapi_style`).

Two differences, both stricter or more informative, never a renamed field: `is_ok` also fails on clipped
shadows/highlights and on images smaller than MIN_SIDE_PX (each threshold is in `thresholds` and each
failure in `reasons`), and `width`/`height` are the original image's (the gate reported them after its
resize to RESIZE_MAX_DIM; the analysis size is `thresholds.analysis_max_dim`).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from app.api.compat.dialects import fastapi_style, register
from app.api.v1.endpoints.analyze import QualityGateRequest, run_gate
from app.api.v1.openapi_extra import body_json_or_form
from app.core.ratelimit import guard
from app.schemas.analysis import QualityGateResponse

TAG = "compat: image-quality-gate"
RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"description": "FastAPI's `{\"detail\": message}` (a 422: the list of errors), with Loupe's `error` "
                          "envelope beside it."} for code in (400, 401, 413, 415, 422, 429, 502, 504)}


class GateCompatResponse(QualityGateResponse):
    thresholds: dict[str, float] = Field(description="Every threshold applied: the gate service's `blur_min` "
                                                     "(= BLUR_THRESHOLD), `bright_min`, `bright_max`, and Loupe's others.")


class GateVersion(BaseModel):
    app: str = Field(description="APP_NAME.")
    version: str = Field(description="APP_VERSION (Loupe's version when unset).")


router = APIRouter(tags=[TAG], dependencies=[Depends(guard)])
public_router = APIRouter(tags=[TAG])


@router.post("/quality", response_model=GateCompatResponse, responses=RESPONSES,
             summary="image-quality-gate: is this upload sharp and well exposed?",
             description="The gate service's request (multipart `file`) and answer; JSON `{url|base64}` works too.",
             openapi_extra=body_json_or_form(QualityGateRequest, multiple_files=False, form_model=None))
async def quality(request: Request) -> GateCompatResponse:
    answer = await run_gate(request)
    thresholds = {"blur_min": answer.thresholds["blur_threshold"], **answer.thresholds}
    return GateCompatResponse(**{**answer.model_dump(), "thresholds": thresholds})


@public_router.get("/version", response_model=GateVersion, summary="image-quality-gate: name and version")
async def version(request: Request) -> GateVersion:
    settings = request.app.state.settings
    return GateVersion(app=settings.app_name, version=settings.display_version)


register(["/quality", "/version"], fastapi_style)
