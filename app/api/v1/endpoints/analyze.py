"""POST /v1/analyze, /v1/analyze/batch and /v1/quality (the gate). Parsing only; logic lives in services."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel

from app.api.deps import ImageRequestSpec, read_image_request, settings_of
from app.api.v1.openapi_extra import body_json_or_form
from app.schemas.analysis import AnalyzeRequest, AnalyzeResponse, BatchRequest, BatchResponse, BatchSummary, QualityGateResponse
from app.schemas.common import ErrorEnvelope, ImageInput, RunFlags
from app.services.gate import quality_gate
from app.services.orchestrator import api_error

router = APIRouter(tags=["analysis"])

ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorEnvelope} for code in (400, 401, 413, 415, 422, 429, 502, 504)}


def _raise_item_error(result) -> None:
    """Single-image endpoints answer with the image's own error status."""
    if result.error is not None:
        raise api_error(result.error)


ANALYZE = ImageRequestSpec(AnalyzeRequest, images="image", options=RunFlags)
BATCH = ImageRequestSpec(BatchRequest, images="images", options=RunFlags, limit=lambda s: s.max_batch_size)


@router.post("/analyze", response_model=AnalyzeResponse, responses=ERRORS,
             summary="Analyse one image (JSON with url/base64, or multipart upload)",
             openapi_extra=body_json_or_form(AnalyzeRequest, multiple_files=False))
async def analyze(request: Request) -> AnalyzeResponse:
    req = await read_image_request(request, ANALYZE)
    results = await request.app.state.orchestrator.analyze(req.sources, req.opts)
    _raise_item_error(results[0])
    return AnalyzeResponse(result=results[0])


@router.post("/analyze/batch", response_model=BatchResponse, responses=ERRORS,
             summary="Analyse up to MAX_BATCH_SIZE images; each succeeds or fails on its own",
             openapi_extra=body_json_or_form(BatchRequest, multiple_files=True))
async def analyze_batch(request: Request) -> BatchResponse:
    t0 = time.perf_counter()
    req = await read_image_request(request, BATCH)
    results = await request.app.state.orchestrator.analyze(req.sources, req.opts)
    failed = sum(1 for r in results if r.error is not None)
    return BatchResponse(results=results, summary=BatchSummary(
        total=len(results), succeeded=len(results) - failed, failed=failed,
        processing_time_ms=round((time.perf_counter() - t0) * 1000, 3)))


class QualityGateRequest(ImageInput):
    """The gate takes one image: `url` or `base64` (or a multipart `file`)."""


GATE: ImageRequestSpec[BaseModel] = ImageRequestSpec(QualityGateRequest, images=None, options=None)


@router.post("/quality", response_model=QualityGateResponse, responses=ERRORS,
             summary="Quality gate: is this upload sharp, well exposed and large enough?",
             openapi_extra=body_json_or_form(QualityGateRequest, multiple_files=False, form_model=None))
async def quality(request: Request) -> QualityGateResponse:
    return await run_gate(request)


async def run_gate(request: Request) -> QualityGateResponse:
    """The gate's answer for the request's one image (also the image-quality-gate compat route's)."""
    settings = settings_of(request)
    t0 = time.perf_counter()
    req = await read_image_request(request, GATE)
    orch = request.app.state.orchestrator
    item = await orch.load(req.sources[0], 0, gray=True, min_dim=settings.analysis_max_dim)
    if item.error is not None:
        raise item.exception()
    return await orch.in_pool(lambda: quality_gate(item.image, settings, item.image_id, t0))
