"""POST /v1/preview: a JPEG preview of any image Loupe reads (HEIC, AVIF, camera RAW …), made by Loupe.

Browsers show neither HEIC nor RAW; the try-it page (and any client) gets a displayable JPEG from the
same reader the analyses use: the same limits, the orientation applied, a RAW's embedded preview or its
half-size demosaic (`X-Loupe-Decoded-From`)."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from app.api.deps import ImageRequestSpec, read_image_request
from app.api.v1.openapi_extra import body_json_or_form
from app.schemas.common import ErrorEnvelope, ImageInput

router = APIRouter(tags=["analysis"])

PREVIEW_MAX = 2048


class PreviewOptions(BaseModel):
    max_dim: int = Field(default=512, ge=32, le=PREVIEW_MAX, description="Longest side of the preview, in pixels.")

    model_config = ConfigDict(extra="forbid")


class PreviewRequest(PreviewOptions):
    image: ImageInput

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"image": {"url": "https://example.com/IMG_0001.HEIC"}, "max_dim": 512},
        {"image": {"base64": "SUkqAAgAAAA…"}, "max_dim": 1024}]})


SPEC = ImageRequestSpec(PreviewRequest, images="image", options=PreviewOptions)


def jpeg_of(rgb: np.ndarray, quality: int = 85) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality, optimize=True)
    return buf.getvalue()


RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"image/jpeg": {"schema": {"type": "string", "format": "binary"}}},
          "description": "The preview (JPEG). Headers: `X-Loupe-Format` (the format read), `X-Loupe-Decoded-From` "
                         "(camera RAW: `raw_preview` or `raw_demosaic`), `X-Loupe-Width`/`X-Loupe-Height` (the "
                         "original's size)."},
    **{code: {"model": ErrorEnvelope} for code in (400, 401, 413, 415, 422, 429, 502, 503, 504)}}


@router.post("/preview", response_class=Response, responses=RESPONSES,
             summary="A JPEG preview of any image Loupe reads (HEIC, AVIF, camera RAW, …)",
             openapi_extra=body_json_or_form(PreviewRequest, multiple_files=False, form_model=PreviewOptions))
async def preview(request: Request) -> Response:
    req = await read_image_request(request, SPEC)
    max_dim = req.opts.max_dim
    orch = request.app.state.orchestrator
    item = await orch.load(req.sources[0], 0, gray=False, min_dim=max_dim)
    if item.error is not None:
        raise item.exception()
    image = item.image
    data = await orch.in_pool(lambda: jpeg_of(image.rgb_max(max_dim)))
    headers = {"X-Loupe-Format": image.format, "X-Loupe-Width": str(image.width), "X-Loupe-Height": str(image.height),
               "Cache-Control": "no-store"}
    if image.decoded_from:
        headers["X-Loupe-Decoded-From"] = image.decoded_from
    return Response(content=data, media_type="image/jpeg", headers=headers)
