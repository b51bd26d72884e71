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
        # strict: a JSON body's types are what the schema says (no "1" or 1 for true, no 7 for "7")
        return model.model_validate(payload, strict=True)
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


#: form fields every multipart image endpoint reads besides its model's
FILE_FIELDS = ("file", "image_id")


def form_flags(form, model: type[M] | None = RunFlags, *, fields: list[str] | None = None) -> M | None:
    """The form's fields, validated by `model` (the same model and fields its OpenAPI form schema is
    derived from). A field the endpoint does not know, or a scalar field sent more than once, is a 422
    (as an unknown or mistyped JSON field is)."""
    names = list(fields if fields is not None else (model.model_fields if model is not None else []))
    unknown = sorted({k for k in form.keys() if k not in names and k not in FILE_FIELDS})
    if unknown:
        raise ValidationFailed(f"Unknown form field(s): {', '.join(repr(u) for u in unknown)}.",
                               detail={"unknown_fields": unknown, "accepted": names + list(FILE_FIELDS)})
    repeated = sorted({k for k in names if len(form.getlist(k)) > 1})
    if repeated:
        raise ValidationFailed(f"Form field(s) sent more than once: {', '.join(repeated)}.",
                               detail={"repeated_fields": repeated})
    if model is None:
        return None
    data = {k: form.get(k) for k in names if form.get(k) not in (None, "")}
    if any(not isinstance(v, str) for v in data.values()):
        raise ValidationFailed("Only `file` parts may carry files; the other form fields are text.")
    try:
        return model.model_validate_strings(data)  # form values are text: "true", "0.35", "12"
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
    ids = form.getlist("image_id")
    if any(not isinstance(v, str) or len(v) > 256 for v in ids):
        raise ValidationFailed("Each image_id must be text of at most 256 characters.")
    if ids and len(ids) != len(files):
        raise ValidationFailed(f"{len(ids)} image_id fields for {len(files)} files: give one per file or none.")
    return [ImageSource(image_id=ids[i] if ids else (f.filename or str(i)), upload=f) for i, f in enumerate(files)]


def require_media(request: Request, *accepted: str) -> str:
    """The request's media type, or 415 in the envelope when it is not one of `accepted`."""
    mt = media_type(request)
    if mt not in accepted:
        raise UnsupportedMediaType(f"Send {' or '.join(accepted)} (got {mt or 'no content type'}).",
                                   detail={"accepted": list(accepted)})
    return mt


def require_json_or_form(request: Request) -> str:
    return require_media(request, "application/json", "multipart/form-data")
