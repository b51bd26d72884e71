"""POST /v1/embed/text: CLIP text embeddings from the same model as the image embeddings."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request

from app.api.deps import read_json_model, require_media
from app.api.v1.openapi_extra import component_ref
from app.schemas.analysis import TextEmbedding, TextEmbedRequest, TextEmbedResponse
from app.schemas.common import ErrorEnvelope

router = APIRouter(tags=["analysis"])


@router.post("/embed/text", response_model=TextEmbedResponse,
             responses={c: {"model": ErrorEnvelope} for c in (401, 413, 415, 422, 429, 503)},
             summary="CLIP text embeddings, to search images by text (cosine = dot product)",
             openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
                 "schema": component_ref(TextEmbedRequest)}}}})
async def embed_text(request: Request) -> TextEmbedResponse:
    t0 = time.perf_counter()
    require_media(request, "application/json")
    body = await read_json_model(request, TextEmbedRequest)
    registry = request.app.state.registry
    model, vectors = await registry.call(
        "clip", lambda adapter, texts: (getattr(adapter, "model_name", None), adapter.embed_text(texts)),
        list(body.texts))
    return TextEmbedResponse(
        model=model, dim=int(vectors.shape[1]),
        embeddings=[TextEmbedding(text=t, vector=[round(float(x), 6) for x in v]) for t, v in zip(body.texts, vectors)],
        processing_time_ms=round((time.perf_counter() - t0) * 1000, 3))
