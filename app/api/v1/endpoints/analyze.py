"""POST /v1/analyze, /v1/analyze/batch and /v1/quality (the gate). Parsing only; logic lives in services."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request

from app.api.deps import (check_count, form_files, form_flags, read_form, read_json_model, require_json_or_form,
                          settings_of, source_of)
from app.api.v1.openapi_extra import body_json_or_form
from app.schemas.analysis import (AnalyzeRequest, AnalyzeResponse, BatchRequest, BatchResponse, BatchSummary,
                                  QualityGateResponse)
from app.schemas.common import ErrorEnvelope, ImageInput, RunFlags
from app.services.gate import quality_gate
from app.services.orchestrator import api_error

router = APIRouter(tags=["analysis"])

ERRORS = {code: {"model": ErrorEnvelope} for code in (400, 401, 413, 415, 422, 429, 502, 504)}


def _raise_item_error(result) -> None:
    """Single-image endpoints answer with the image's own error status."""
    if result.error is not None:
        raise api_error(result.error)


@router.post("/analyze", response_model=AnalyzeResponse, responses=ERRORS,
             summary="Analyse one image (JSON with url/base64, or multipart upload)",
             openapi_extra=body_json_or_form(AnalyzeRequest, multiple_files=False))
async def analyze(request: Request) -> AnalyzeResponse:
    mt = require_json_or_form(request)
    if mt == "application/json":
        body = await read_json_model(request, AnalyzeRequest)
        sources, flags = [source_of(body.image)], RunFlags(**body.model_dump(exclude={"image"}))
    else:
        form = await read_form(request, max_files=1)
        sources, flags = form_files(form, 1), form_flags(form)
    results = await request.app.state.orchestrator.analyze(sources, flags)
    _raise_item_error(results[0])
    return AnalyzeResponse(result=results[0])


@router.post("/analyze/batch", response_model=BatchResponse, responses=ERRORS,
             summary="Analyse up to MAX_BATCH_SIZE images; each succeeds or fails on its own",
             openapi_extra=body_json_or_form(BatchRequest, multiple_files=True))
async def analyze_batch(request: Request) -> BatchResponse:
    settings = settings_of(request)
    mt = require_json_or_form(request)
    t0 = time.perf_counter()
    if mt == "application/json":
        body = await read_json_model(request, BatchRequest)
        check_count(len(body.images), settings.max_batch_size, "max_batch_size")
        sources, flags = [source_of(i) for i in body.images], RunFlags(**body.model_dump(exclude={"images"}))
    else:
        form = await read_form(request, max_files=settings.max_batch_size + 1)
        sources, flags = form_files(form, settings.max_batch_size), form_flags(form)
    results = await request.app.state.orchestrator.analyze(sources, flags)
    failed = sum(1 for r in results if r.error is not None)
    return BatchResponse(results=results, summary=BatchSummary(
        total=len(results), succeeded=len(results) - failed, failed=failed,
        processing_time_ms=round((time.perf_counter() - t0) * 1000, 3)))


class QualityGateRequest(ImageInput):
    """The gate takes one image: `url` or `base64` (or a multipart `file`)."""


@router.post("/quality", response_model=QualityGateResponse, responses=ERRORS,
             summary="Quality gate: is this upload sharp, well exposed and large enough?",
             openapi_extra=body_json_or_form(QualityGateRequest, multiple_files=False, form_model=None))
async def quality(request: Request) -> QualityGateResponse:
    settings = settings_of(request)
    mt = require_json_or_form(request)
    t0 = time.perf_counter()
    if mt == "application/json":
        body = await read_json_model(request, QualityGateRequest)
        sources = [source_of(body)]
    else:
        form = await read_form(request, max_files=1)
        sources = form_files(form, 1)
        form_flags(form, None)  # no other fields
    orch = request.app.state.orchestrator
    item = await orch.load(sources[0], 0, gray=True, min_dim=settings.analysis_max_dim)
    if item.error is not None:
        raise item.exception()
    return await orch.in_pool(lambda: quality_gate(item.image, settings, item.image_id, t0))
