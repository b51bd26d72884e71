"""POST /v1/embed/text: CLIP text embeddings from the same model as the image embeddings."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request

from app.core.errors import ValidationFailed
from app.schemas.analysis import TextEmbedding, TextEmbedRequest, TextEmbedResponse
from app.schemas.common import ErrorEnvelope

router = APIRouter(tags=["analysis"])

MAX_TEXT_CHARS = 1000


@router.post("/embed/text", response_model=TextEmbedResponse,
             responses={c: {"model": ErrorEnvelope} for c in (401, 422, 429, 503)},
             summary="CLIP text embeddings, to search images by text (cosine = dot product)")
async def embed_text(body: TextEmbedRequest, request: Request) -> TextEmbedResponse:
    t0 = time.perf_counter()
    for i, text in enumerate(body.texts):
        if not text.strip() or len(text) > MAX_TEXT_CHARS:
            raise ValidationFailed(f"texts[{i}] must have 1..{MAX_TEXT_CHARS} characters.")
    registry = request.app.state.registry
    model, vectors = await registry.call(
        "clip", lambda adapter, texts: (getattr(adapter, "model_name", None), adapter.embed_text(texts)),
        list(body.texts))
    return TextEmbedResponse(
        model=model, dim=int(vectors.shape[1]),
        embeddings=[TextEmbedding(text=t, vector=[round(float(x), 6) for x in v]) for t, v in zip(body.texts, vectors)],
        processing_time_ms=round((time.perf_counter() - t0) * 1000, 3))
