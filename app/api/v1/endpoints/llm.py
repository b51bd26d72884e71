"""POST /v1/analyze/llm and /v1/analyze/llm/group: the vision-LLM review. Parsing only; logic in app.llm."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request

from app.api.deps import ImageRequestSpec, read_image_request, settings_of
from app.api.v1.openapi_extra import body_json_or_form
from app.core.errors import ApiError
from app.imaging.sources import ImageSource
from app.llm import EncodedImage, encode_for_llm, pick_model, review_group, review_image
from app.schemas.common import ErrorEnvelope
from app.schemas.review import (
    LLM_GROUP_MAX,
    LLM_GROUP_MIN,
    LlmGroupRequest,
    LlmGroupResponse,
    LlmOptions,
    LlmReviewRequest,
    LlmReviewResponse,
)

router = APIRouter(tags=["llm review"])

ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorEnvelope} for code in (400, 401, 413, 415, 422, 429, 502, 503, 504)}
ERRORS[502]["description"] = "`llm_provider_error`, `llm_invalid_output` (two invalid answers), `unreachable_url`."
ERRORS[503]["description"] = "`llm_not_configured`: the provider's API key is missing or was rejected."
ERRORS[504]["description"] = "`llm_timeout` (LLM_TIMEOUT_S), or `upstream_timeout` fetching an image URL."

def _item_error(item, *, group: bool) -> ApiError:
    """The image's own error; in a group review, renamed so that it says which shot it is."""
    exc = item.exception()
    if not group:
        return exc
    named = ApiError(
        f"Image {item.image_id!r} (position {item.index}) could not be read: {exc.message} "
        "A group review needs every shot.",
        detail={"image_id": item.image_id, "index": item.index, "reason": exc.detail}, headers=exc.headers)
    named.status_code, named.error_type = exc.status_code, exc.error_type
    return named


async def _encode(request: Request, sources: list[ImageSource], *, group: bool) -> list[EncodedImage]:
    """Read (SSRF-safe fetch / base64 / upload), decode and re-encode every image as the JPEG the model gets."""
    settings = settings_of(request)
    orch = request.app.state.orchestrator
    items = await orch.load_all(sources, gray=False, min_dim=settings.llm_image_max_dim)
    failed = [item for item in items if item.image is None]
    if failed:
        err = _item_error(failed[0], group=group)
        if group and len(failed) > 1 and isinstance(err.detail, dict):
            err.detail["unreadable_image_ids"] = [it.image_id for it in failed]
        raise err
    return await orch.in_pool(
        lambda: [encode_for_llm(it.image, settings.llm_image_max_dim, it.image_id) for it in items])


SINGLE = ImageRequestSpec(LlmReviewRequest, images="image", options=LlmOptions)
GROUP = ImageRequestSpec(LlmGroupRequest, images="images", options=LlmOptions, limit=lambda s: 4 * LLM_GROUP_MAX,
                         count_range=(LLM_GROUP_MIN, LLM_GROUP_MAX), unique_in="a group review")


@router.post("/analyze/llm", response_model=LlmReviewResponse, responses=ERRORS,
             summary="Review one photo with a vision LLM (any LiteLLM provider)",
             description=(
                 "Loupe reads the image itself (URL with the SSRF guard, base64 or upload), re-encodes it as a JPEG "
                 "(longest side at most LLM_IMAGE_MAX_DIM) and sends that to the model as a data URI — the provider "
                 "never receives your URL. The answer is validated against the schema below; an invalid answer is "
                 "sent back to the model once, a second one is `502 llm_invalid_output`."),
             openapi_extra=body_json_or_form(LlmReviewRequest, multiple_files=False, form_model=LlmOptions))
async def llm_review(request: Request) -> LlmReviewResponse:
    started = time.perf_counter()
    settings = settings_of(request)
    req = await read_image_request(request, SINGLE)
    opts = req.opts
    pick_model(settings, opts.model)  # a model LLM_ALLOWED_MODELS refuses is a 422 before any image is read
    [img] = await _encode(request, req.sources, group=False)
    review = await review_image(settings, img, model=opts.model, custom_prompt=opts.custom_prompt,
                                max_tokens=opts.max_tokens, started=started)
    review.ref_id = opts.ref_id
    return review


@router.post("/analyze/llm/group", response_model=LlmGroupResponse, responses=ERRORS,
             summary=f"Pick the best of {LLM_GROUP_MIN}–{LLM_GROUP_MAX} shots of one scene with a vision LLM",
             description=(
                 "All shots go to the model in one call; it scores each one and names the best. `best_image_id` and "
                 "every `images[].image_id` are checked against the ids you sent (an invented id counts as an "
                 "invalid answer: one retry, then `502 llm_invalid_output`). A shot that cannot be read fails the "
                 "request with that image's own error, naming it."),
             openapi_extra=body_json_or_form(LlmGroupRequest, multiple_files=True, form_model=LlmOptions))
async def llm_review_group(request: Request) -> LlmGroupResponse:
    started = time.perf_counter()
    settings = settings_of(request)
    req = await read_image_request(request, GROUP)
    opts = req.opts
    pick_model(settings, opts.model)
    imgs = await _encode(request, req.sources, group=True)
    review = await review_group(settings, imgs, model=opts.model, custom_prompt=opts.custom_prompt,
                                max_tokens=opts.max_tokens, started=started)
    review.ref_id = opts.ref_id
    return review
