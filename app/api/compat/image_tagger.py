"""The image_tagger service's API: GET /predictions?url=…&top=…&minconf=… and its version document at GET /.

The labels come from Loupe's ImageNet-1K tagger (TAGS_MODEL, the `tag_imagenet` task of /v1/tasks, run
through the same task engine) and are named as image_tagger named them: the Keras class-index names
(`tabby`, `tiger_cat`, `Egyptian_cat`), which are the first WordNet synonym with underscores.

`top` / `minconf` follow image_tagger: neither → the best label; only `top` → the best `top`; only
`minconf` → every label at least that confident; both → at most `top`, each at least `minconf`
(`minconf=0` counts as not given; below 0 acts as 0). The answer says which it applied. Errors are
image_tagger's: `{"error": {"type": "InvalidImage" | "UnreachableURL" | "ValidationError", "detail"}}`
with 400 / 404 / 422, plus Loupe's message, request id and type (`dialects.tagger_style`).
"""

from __future__ import annotations

import platform
from typing import Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field

from app.api.compat.dialects import register, tagger_style
from app.api.deps import settings_of
from app.core.config import API_VERSION, VERSION
from app.core.errors import ApiError, UrlNotAllowed, ValidationFailed
from app.core.ratelimit import guard
from app.imaging import fetch
from app.imaging.sources import ImageSource
from app.models.tags import TOP_MAX
from app.schemas import tasks as T
from app.schemas.common import ranged
from app.tasks.engine import run_tasks

TAG = "compat: image_tagger"
#: image_tagger's names where the first synonym differs from the name Loupe gives the class (torchvision's)
KERAS_NAMES = {134: "crane", 639: "maillot"}


def keras_label(class_id: int, name: str) -> str:
    """Loupe's class name → image_tagger's (Keras `decode_predictions`): spaces become underscores."""
    return KERAS_NAMES.get(class_id, name).replace(" ", "_")


class Prediction(BaseModel):
    label: str = Field(description="The ImageNet class as image_tagger named it (Keras class-index name, e.g. `tiger_cat`).")
    confidence: float = ranged("Softmax probability of the class.", 0, 1, True)
    class_id: int = Field(description="Loupe: the ImageNet-1K class index (0..999).")


class PredictionsResponse(BaseModel):
    url: str = Field(description="The `url` parameter, as sent.")
    predictions: list[Prediction] = Field(description="Most confident first; may be empty when `minconf` is high.")
    top: int = Field(description="Loupe: the most labels that could be returned (image_tagger's rules above).")
    minconf: float = ranged("Loupe: the confidence a label needed.", 0, 1, None)
    model: str = Field(description="Loupe: the tagger that answered (TAGS_MODEL).")


def applied_limits(top: int | None, minconf: float | None) -> tuple[int, float]:
    """image_tagger's defaults for the two parameters (its image_predictions.py)."""
    conf = minconf if minconf is not None and minconf > 0 else None
    if top is None and conf is None:
        return 1, 0.0
    if conf is None:
        return int(top or 1), 0.0
    return (int(top) if top is not None else TOP_MAX), float(conf)


def check_url(url: str) -> None:
    """The fetcher's own URL check (http or https, a host), refused as image_tagger's `AnyHttpUrl` was: a 422."""
    try:
        fetch.check_url(url)
    except UrlNotAllowed as exc:
        parts = urlsplit(url)
        msg = "URL scheme not permitted" if parts.scheme and parts.hostname else "invalid or missing URL scheme"
        raise ValidationFailed(f"Invalid request: query.url: {msg}",
                               detail={"errors": [{"loc": ["query", "url"], "msg": msg, "type": "value_error.url.scheme"}]}) from exc


router = APIRouter(tags=[TAG], dependencies=[Depends(guard)])
RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"description": "`InvalidImage`: the URL does not hold an image Loupe can read."},
    404: {"description": "`UnreachableURL`: the image could not be fetched (or the SSRF guard refused the address)."},
    422: {"description": "`ValidationError`: `detail` is the list of `{loc, msg, type}`."},
    401: {"description": "Loupe's API key is missing or wrong."}, 429: {"description": "Rate limit."}}


@router.get("/predictions", response_model=PredictionsResponse, responses=RESPONSES,
            summary="image_tagger: ImageNet labels of the image at `url`")
async def predictions(request: Request,
                      url: str = Query(..., max_length=4096, description="The image's URL (http or https; SSRF-guarded)."),
                      top: int | None = Query(None, ge=1, le=TOP_MAX, description="At most this many labels."),
                      minconf: float | None = Query(None, le=1.0, description="Only labels at least this confident.")
                      ) -> PredictionsResponse:
    check_url(url)
    n, conf = applied_limits(top, minconf)
    settings = settings_of(request)
    orch = request.app.state.orchestrator
    [item] = await orch.load_all([ImageSource(image_id="url", url=url)], gray=False, min_dim=settings.analysis_max_dim)
    if item.error is not None:
        raise item.exception()
    task = T.TagTask(operation_id="tags", type="tag_imagenet", params=T.TagParams(top=n, minconf=conf))
    [answer] = await run_tasks(orch, [item], T.TaskOptions(tasks=[task], return_crops=False))
    result = answer.results["tags"]
    if result.status != "success":
        err = ApiError(f"The tagger could not answer: {result.error_message}")
        err.status_code, err.error_type = 503, "model_unavailable"
        raise err
    labels = result.data["labels"]
    return PredictionsResponse(url=url, top=n, minconf=conf, model=result.data["model"], predictions=[
        Prediction(label=keras_label(x["class_id"], x["label"]), confidence=x["confidence"], class_id=x["class_id"])
        for x in labels])


def version_document(request: Request) -> dict[str, Any]:
    """image_tagger's `GET /` answer (`version`, `revision`, `description`, `author`), with Loupe's names."""
    settings = request.app.state.settings
    return {
        "version": VERSION,
        "revision": int("".join(ch for ch in API_VERSION if ch.isdigit()) or 1),
        "description": ("Loupe: self-hosted image analysis. ImageNet-1K labels at `/predictions` (image_tagger's "
                        "API); Loupe's own API under `/v1`; documentation at `/docs` and `/redoc`."),
        "author": "The Loupe authors",
        "name": settings.app_name,
        "app_version": settings.display_version,
        "api_version": API_VERSION,
        "python": platform.python_version(),
    }


def wants_json(accept: str) -> bool:
    """JSON unless the client names HTML at least as warmly as JSON (browsers list text/html; `*/*`, which
    HTTP libraries send, and no Accept at all mean JSON)."""
    html_q = json_q = 0.0
    for part in (accept or "*/*").split(","):
        media, *params = [p.strip() for p in part.split(";")]
        q = 1.0
        for p in params:
            if p.startswith("q="):
                try:
                    q = float(p[2:])
                except ValueError:
                    q = 0.0
        media = media.lower()
        if media in ("text/html", "application/xhtml+xml"):
            html_q = max(html_q, q)
        elif media in ("application/json", "application/*", "*/*"):
            json_q = max(json_q, q if media == "application/json" else q - 1e-6)
    return json_q > 0 and json_q > html_q


register(["/predictions"], tagger_style)
