"""Request parsing shared by the endpoints: JSON or multipart bodies → ImageSources + flags."""

from __future__ import annotations

import json
from typing import TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile

from app.core.config import Settings
from app.core.errors import PayloadTooLarge, UnsupportedMediaType, ValidationFailed
from app.imaging.sources import ImageSource
from app.schemas.common import ImageInput, RunFlags

M = TypeVar("M", bound=BaseModel)


def settings_of(request: Request) -> Settings:
    return request.app.state.settings


def validation_failed(exc: ValidationError) -> ValidationFailed:
    errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")} for e in exc.errors()]
    first = errors[0]
    where = ".".join(str(p) for p in first["loc"]) or "body"
    return ValidationFailed(f"Invalid request: {where}: {first['msg']}", detail={"errors": errors})


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def read_json_model(request: Request, model: type[M]) -> M:
    try:
        raw = await request.body()
        payload = json.loads(raw) if raw else None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValidationFailed(f"The body is not valid JSON: {exc}") from exc
    if payload is None:
        raise ValidationFailed("The request body is empty.")
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        raise validation_failed(exc) from exc


def source_of(inp: ImageInput) -> ImageSource:
    return ImageSource(image_id=inp.image_id, url=inp.url, base64=inp.base64)


async def read_form(request: Request, max_files: int):
    try:
        return await request.form(max_files=max_files, max_fields=2 * max_files + 50)
    except PayloadTooLarge:
        raise
    except Exception as exc:  # noqa: BLE001 - malformed multipart, too many parts
        raise ValidationFailed(f"The multipart body could not be read: {exc}") from exc


def form_flags(form, model: type[M] = RunFlags, **extra) -> M:
    data = {k: form.get(k) for k in model.model_fields if form.get(k) not in (None, "")}
    data.update(extra)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_failed(exc) from exc


def check_count(received: int, limit: int, setting: str) -> None:
    """413 in the envelope when a request carries more items than `setting` allows."""
    if received > limit:
        raise PayloadTooLarge(f"{received} images sent; the limit is {limit} ({setting.upper()}).",
                              detail={setting: limit, "received": received})


def form_files(form, max_count: int, setting: str = "max_batch_size") -> list[ImageSource]:
    files = [f for f in form.getlist("file") if isinstance(f, UploadFile)]
    if not files:
        raise ValidationFailed("Send the image in a multipart field named `file`.")
    check_count(len(files), max_count, setting)
    ids = [str(v) for v in form.getlist("image_id")]
    if ids and len(ids) != len(files):
        raise ValidationFailed(f"{len(ids)} image_id fields for {len(files)} files: give one per file or none.")
    return [ImageSource(image_id=ids[i] if ids else (f.filename or str(i)), upload=f) for i, f in enumerate(files)]


def require_json_or_form(request: Request) -> str:
    mt = media_type(request)
    if mt not in ("application/json", "multipart/form-data"):
        raise UnsupportedMediaType(
            f"Send application/json or multipart/form-data (got {mt or 'no content type'}).",
            detail={"accepted": ["application/json", "multipart/form-data"]})
    return mt
