"""Sightengine's image check, for its `quality` model: GET/POST /1.0/check.json.

What Sightengine's own clients send (client-python, client-nodejs, client-php) is accepted as they send it:
`api_user` / `api_secret` / `models` / `url` in the query string or as form fields (PHP puts them in
the query of a POST), the image as a multipart `media` part with or without a file name (Guzzle and Node
send raw bytes without one), or a `url`. `api_secret` carries the Loupe API key (an `X-Api-Key` header
works too); `api_user` is accepted and ignored — Loupe has keys, not users.

`quality.score` is Loupe's 0–1 quality score (sharpness, noise, blocking, exposure, BRISQUE and NIMA where
available), the same number `/v1/analyze` returns as `quality.score`; Sightengine's docs suggest starting
at 0.5 for "low quality", which is also Loupe's QUALITY_MIN default. Only `models=quality` is answered; any
other model is a clear `argument_error` (Sightengine's own model names are recognised and named as not
offered). Errors come in Sightengine's failure shape (`app.api.compat.dialects.sightengine_style`).
"""

from __future__ import annotations

import secrets
import string
from collections.abc import AsyncIterator
from tempfile import SpooledTemporaryFile
from typing import Any

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, Field
from starlette.datastructures import FormData, Headers, UploadFile
from starlette.formparsers import MultiPartParser

from app.api.compat.dialects import register, sightengine_request, sightengine_style
from app.api.deps import media_type
from app.core.errors import ApiError, PayloadTooLarge, ValidationFailed
from app.core.logging import request_id_var
from app.imaging.sources import ImageSource
from app.schemas.common import RunFlags, ranged
from app.services.orchestrator import api_error

PATH = "/1.0/check.json"
TAG = "compat: Sightengine"

#: the models Sightengine documents (sightengine.com/docs; client enums) — named as "not offered" rather than unknown
SIGHTENGINE_MODELS = frozenset({
    "nudity", "nudity-2.0", "nudity-2.1", "weapon", "alcohol", "recreational_drug", "medical", "type", "quality",
    "offensive", "offensive-2.0", "faces", "face", "face-attributes", "text", "text-content", "qr-content", "tobacco",
    "genai", "violence", "self-harm", "money", "gambling", "gore", "gore-2.0", "scam", "properties", "wad",
    "celebrities", "celebrity", "minor", "gender"})
OFFERED = ("quality",)

#: form fields and query parameters Sightengine's clients send
PARAMS = ("api_user", "api_secret", "models", "url", "media")

# Loupe's codes inside Sightengine's error types (README, "Switching from another service")
NO_MEDIA, BOTH_MEDIA, NO_MODELS, UNKNOWN_MODEL = 4, 5, 51, 21


class ArgumentError(ValidationFailed):
    """A Sightengine `argument_error` (400) with its code."""

    def __init__(self, message: str, code: int, **kw: Any):
        super().__init__(message, **kw)
        self.code = code


class SightengineRequestInfo(BaseModel):
    id: str = Field(description="`req_` + Loupe's request id (the X-Request-ID of the logs).")
    timestamp: float = Field(description="Unix time of the answer, in seconds.")
    operations: int = ranged("Models run: 1 for `models=quality`, 0 for a failure.", 0, None, None)


class SightengineQuality(BaseModel):
    score: float = ranged("Loupe's 0–1 technical quality score (the same as /v1/analyze's quality.score); "
                          "Sightengine's docs suggest 0.5 as a first low-quality threshold.", 0, 1, True)


class SightengineMedia(BaseModel):
    id: str = Field(description="`med_` + 21 random characters, new for every request.")
    uri: str = Field(description="The `url` that was checked, or the uploaded file's name.")


class SightengineResponse(BaseModel):
    status: str = Field(default="success", description="`success` (a failure has the error shape, with its HTTP status).")
    request: SightengineRequestInfo
    quality: SightengineQuality
    media: SightengineMedia


class MediaFormParser(MultiPartParser):
    """Starlette's multipart parser, except that a `media` part is a file even without a file name: Guzzle
    (client-php) and Node send the raw bytes so, and Starlette would decode them as text (losing bytes that
    happen to be valid UTF-8, and capping them at 1 MB)."""

    def on_headers_finished(self) -> None:
        super().on_headers_finished()
        part = self._current_part
        if part.file is None and part.field_name == "media":
            spool: Any = SpooledTemporaryFile(max_size=self.spool_max_size)
            self._files_to_close_on_error.append(spool)
            part.file = UploadFile(file=spool, size=0, filename=None, headers=Headers(raw=part.item_headers))


async def read_form(request: Request) -> FormData | None:
    """A POST's form (multipart or urlencoded), or None."""
    if request.method != "POST":
        return None
    kind = media_type(request)
    try:
        if kind == "multipart/form-data":
            return await MediaFormParser(request.headers, request.stream(), max_files=1, max_fields=20).parse()
        if kind == "application/x-www-form-urlencoded":
            return await request.form(max_files=0, max_fields=20)
    except PayloadTooLarge:
        raise
    except Exception as exc:  # noqa: BLE001 - malformed multipart, too many parts
        raise ArgumentError(f"The form could not be read: {exc}", 20) from exc
    return None


def read_params(query: dict[str, str], form: FormData | None) -> dict[str, Any]:
    """The query string's parameters and the form's fields, merged (the form wins); `media` only from the form."""
    params: dict[str, Any] = {k: v for k, v in query.items() if k in PARAMS and k != "media"}
    if form is not None:
        unknown = sorted({k for k in form.keys() if k not in PARAMS})
        if unknown:
            raise ArgumentError(f"Unknown parameter(s): {', '.join(unknown)}.", 20,
                                detail={"unknown_fields": unknown, "accepted": list(PARAMS)})
        params.update({k: v for k, v in form.items()})
    return params


async def sightengine_guard(request: Request, response: Response) -> AsyncIterator[None]:
    """Authentication and rate limits as on /v1, with `api_secret` as the key (after the headers); the
    parameters are kept for the route, and the form's files closed after it."""
    form = await read_form(request)
    try:
        params = read_params(dict(request.query_params), form)
        request.state.sightengine = params
        secret = params.get("api_secret")
        await request.app.state.access.check_async(request, response, key=secret if isinstance(secret, str) else None)
        yield
    finally:
        if form is not None:
            await form.close()


def requested_models(raw: Any) -> list[str]:
    if not isinstance(raw, str) or not raw.strip():
        raise ArgumentError("Please specify models (models=quality).", NO_MODELS)
    names = [m.strip() for m in raw.split(",") if m.strip()]
    refused = [m for m in names if m not in OFFERED]
    if refused:
        known = [m for m in refused if m in SIGHTENGINE_MODELS]
        unknown = [m for m in refused if m not in SIGHTENGINE_MODELS]
        parts = []
        if known:
            parts.append(f"Sightengine model(s) Loupe does not offer: {', '.join(known)}")
        if unknown:
            parts.append(f"unknown model(s): {', '.join(unknown)}")
        raise ArgumentError(f"{'; '.join(parts)}. Loupe answers models=quality.", UNKNOWN_MODEL,
                            detail={"offered": list(OFFERED), "not_offered": known, "unknown": unknown})
    return list(dict.fromkeys(names))


def media_source(params: dict[str, Any]) -> tuple[ImageSource, str]:
    """The image to check and what `media.uri` says of it."""
    url, media = params.get("url"), params.get("media")
    if url not in (None, "") and media not in (None, ""):
        raise ArgumentError("Send either `url` or `media`, not both.", BOTH_MEDIA)
    if isinstance(url, str) and url:
        return ImageSource(image_id="media", url=url), url
    if isinstance(media, UploadFile):
        return ImageSource(image_id=media.filename or "media", upload=media), media.filename or "media"
    raise ArgumentError("No media specified: send `url` or a `media` file.", NO_MEDIA)


router = APIRouter(tags=[TAG], dependencies=[Depends(sightengine_guard)])

DESCRIPTION = (
    "Sightengine's image check, `models=quality` only, for its clients unchanged (point them at Loupe's base URL). "
    "Parameters in the query string or as form fields: `models`, `url` or a multipart `media` file, `api_secret` "
    "(the Loupe API key; `X-Api-Key` works too), `api_user` (ignored). Errors: "
    "`{\"status\": \"failure\", \"request\": {…}, \"error\": {\"type\", \"code\", \"message\", …}}`.")
RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"description": "Sightengine's failure shape: `{status: failure, request, error: {type, code, message, detail, "
                          "request_id, loupe_type}}`."} for code in (400, 401, 413, 415, 429, 502, 503, 504)}


async def check(request: Request) -> SightengineResponse:
    params: dict[str, Any] = request.state.sightengine
    models = requested_models(params.get("models"))
    source, uri = media_source(params)
    flags = RunFlags(run_blur=False, run_exposure=False, run_quality=True)
    [result] = await request.app.state.orchestrator.analyze([source], flags)
    if result.error is not None:
        raise api_error(result.error)
    quality = result.quality
    if quality is None or quality.score is None:
        reason = quality.error.message if quality is not None and quality.error is not None else "no score"
        raise ApiError(f"The quality score could not be computed: {reason}")
    media_id = "med_" + "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(21))
    return SightengineResponse(request=SightengineRequestInfo(**sightengine_request(request_id_var.get(), len(models))),
                               quality=SightengineQuality(score=quality.score), media=SightengineMedia(id=media_id, uri=uri))


@router.get(PATH, response_model=SightengineResponse, responses=RESPONSES, summary="Sightengine: check an image URL",
            description=DESCRIPTION)
async def check_get(request: Request,
                    models: str = Query(None, description="Comma-separated models; only `quality` is answered."),
                    url: str = Query(None, description="The image's URL (SSRF-guarded, as on /v1)."),
                    api_user: str = Query(None, description="Accepted and ignored."),
                    api_secret: str = Query(None, description="The Loupe API key (or send X-Api-Key).")) -> SightengineResponse:
    return await check(request)


@router.post(PATH, response_model=SightengineResponse, responses=RESPONSES, summary="Sightengine: check an uploaded image",
             description=DESCRIPTION, openapi_extra={"requestBody": {"content": {"multipart/form-data": {"schema": {
                 "type": "object", "properties": {
                     "media": {"type": "string", "format": "binary", "description": "The image (with or without a file name)."},
                     "url": {"type": "string", "description": "Or the image's URL."},
                     "models": {"type": "string", "description": "`quality`."},
                     "api_user": {"type": "string"}, "api_secret": {"type": "string"}}}},
                 "application/x-www-form-urlencoded": {"schema": {"type": "object", "properties": {
                     "url": {"type": "string"}, "models": {"type": "string"}, "api_user": {"type": "string"},
                     "api_secret": {"type": "string"}}}}}}})
async def check_post(request: Request) -> SightengineResponse:
    return await check(request)


register([PATH], sightengine_style)
