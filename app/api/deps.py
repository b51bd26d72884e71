"""Request parsing shared by the endpoints: JSON or multipart bodies → ImageSources + options.

Every endpoint that takes images states the shape of its request once (`ImageRequestSpec`) and calls
`read_image_request`: the JSON-or-multipart branch, the image count limits, the options model and the
id rules live here and nowhere else. JSON bodies are parsed by pydantic-core straight from the bytes,
in the worker pool (a batch is up to MAX_BATCH_SIZE × MAX_IMAGE_MB of base64: parsing it on the event
loop would stall every other request); base64 is decoded in the pool too (`Orchestrator.load`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, overload

from fastapi import Request
from pydantic import BaseModel, ValidationError
from starlette.datastructures import FormData, UploadFile

from app.core import errors
from app.core.config import Settings
from app.core.errors import PayloadTooLarge, UnsupportedMediaType, ValidationFailed
from app.imaging.sources import ImageSource
from app.schemas.common import ImageInput, RunFlags

M = TypeVar("M", bound=BaseModel)


def settings_of(request: Request) -> Settings:
    return request.app.state.settings


def validation_failed(exc: ValidationError) -> ValidationFailed:
    return errors.validation_failed(exc.errors())


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def parse_json(raw: bytes, model: type[M]) -> M:
    """`model` from JSON bytes, strictly: a JSON body's types are what the schema says (no "1" or 1 for
    true, no 7 for "7"). 422 in the envelope for an empty body, bytes that are not JSON, or a mismatch."""
    if not raw.strip() or raw.strip() == b"null":
        raise ValidationFailed("The request body is empty.")
    try:
        return model.model_validate_json(raw, strict=True)
    except ValidationError as exc:
        first = exc.errors()[0]
        if first.get("type") == "json_invalid":
            raise ValidationFailed(f"The body is not valid JSON: {first.get('msg')}") from exc
        raise validation_failed(exc) from exc


async def read_json_model(request: Request, model: type[M]) -> M:
    """The body as `model`, parsed in the worker pool (see the module docstring)."""
    raw = await request.body()
    return await request.app.state.orchestrator.in_pool(parse_json, raw, model)


def source_of(inp: ImageInput) -> ImageSource:
    return ImageSource(image_id=inp.image_id, url=inp.url, base64=inp.encoded)


async def read_form(request: Request, max_files: int) -> FormData:
    try:
        return await request.form(max_files=max_files, max_fields=2 * max_files + 50)
    except PayloadTooLarge:
        raise
    except Exception as exc:  # noqa: BLE001 - malformed multipart, too many parts
        raise ValidationFailed(f"The multipart body could not be read: {exc}") from exc


#: form fields every multipart image endpoint reads besides its model's
FILE_FIELDS = ("file", "image_id")


@overload
def form_flags(form: FormData, model: type[M], *, fields: list[str] | None = None) -> M: ...
@overload
def form_flags(form: FormData, model: None, *, fields: list[str] | None = None) -> None: ...
@overload
def form_flags(form: FormData, *, fields: list[str] | None = None) -> RunFlags: ...
def form_flags(form: FormData, model: type[BaseModel] | None = RunFlags, *,
               fields: list[str] | None = None) -> BaseModel | None:
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


def form_files(form: FormData, max_count: int, setting: str = "max_batch_size") -> list[ImageSource]:
    files = [f for f in form.getlist("file") if isinstance(f, UploadFile)]
    if not files:
        raise ValidationFailed("Send the image in a multipart field named `file`.")
    check_count(len(files), max_count, setting)
    sent_ids = form.getlist("image_id")
    ids = [v for v in sent_ids if isinstance(v, str) and len(v) <= 256]
    if len(ids) != len(sent_ids):
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


def unique_ids(sources: Sequence[ImageSource], what: str) -> None:
    """Give every source without an id its position as id, then refuse repeated ids with a 422 that
    names them (`what`: where ids must be unique, e.g. "a photo set")."""
    ids: list[str] = []
    for i, src in enumerate(sources):
        if src.image_id is None:
            src.image_id = str(i)
        ids.append(src.image_id)
    dupes = repeated(ids)
    if dupes:
        raise ValidationFailed(f"Image ids must be unique in {what}; sent more than once: {dupes}.",
                               detail={"duplicate_image_ids": dupes, "image_id": dupes[0]})


def repeated(ids: Sequence[str]) -> list[str]:
    """The ids that occur more than once, sorted."""
    seen: set[str] = set()
    dupes: set[str] = set()
    for x in ids:
        (dupes if x in seen else seen).add(x)
    return sorted(dupes)


Opts = TypeVar("Opts", bound=BaseModel)


@dataclass(frozen=True)
class ImageRequestSpec(Generic[Opts]):
    """The shape of an image endpoint's request, in both media types."""

    body: type[BaseModel]  # the JSON body's model
    #: the body field holding the image input(s): "image" (one), "images" (a list); None: the body is the input
    images: str | None
    #: the options (JSON: the body's other fields, form: the text fields); None: the endpoint has none
    options: type[Opts] | None
    #: the form fields `options` reads (default: all of its fields)
    form_fields: list[str] | None = None
    #: at most this many images (None: exactly one); `limit_setting` names it in the 413
    limit: Callable[[Settings], int] | None = None
    limit_setting: str = "max_batch_size"
    #: multipart only (JSON bodies state it in their schema): a 422 outside [min, max]
    count_range: tuple[int, int] | None = None
    #: ids default to the image's position and must be unique (named in the 422 as `unique_in`)
    unique_in: str | None = None
    #: multipart fields when they differ from `options` (e.g. a JSON list sent as text), and how they
    #: become `options` (raising ValidationFailed when they cannot)
    form_options: type[BaseModel] | None = None
    from_form: Callable[[Any], Opts] | None = None


@dataclass
class ImageRequest(Generic[Opts]):
    sources: list[ImageSource]
    #: None exactly when the spec has no options (`ImageRequestSpec.options` is None)
    options: Opts | None

    @property
    def opts(self) -> Opts:
        """`options`, for an endpoint whose spec has them (they are always read then)."""
        if self.options is None:
            raise TypeError("this request's spec declares no options")
        return self.options


async def read_image_request(request: Request, spec: ImageRequestSpec[Opts]) -> ImageRequest[Opts]:
    """Any image request (JSON with url/base64 inputs, or multipart with `file` parts) → sources + options."""
    settings = settings_of(request)
    limit = spec.limit(settings) if spec.limit is not None else 1
    if require_json_or_form(request) == "application/json":
        body = await read_json_model(request, spec.body)
        inputs = body if spec.images is None else getattr(body, spec.images)
        inputs = inputs if isinstance(inputs, list) else [inputs]
        check_count(len(inputs), limit, spec.limit_setting)
        sources = [source_of(i) for i in inputs]
        options = None
        if spec.options is not None and isinstance(body, spec.options):
            options = body  # the body model extends the options: already validated, strictly, in the pool
        elif spec.options is not None:
            names = set(spec.form_fields or spec.options.model_fields)
            options = spec.options.model_validate(body.model_dump(include=names))
    else:
        form = await read_form(request, max_files=limit + 1 if spec.limit is not None else 1)
        sources = form_files(form, limit, spec.limit_setting)
        if spec.count_range is not None and not spec.count_range[0] <= len(sources) <= spec.count_range[1]:
            lo, hi = spec.count_range
            raise ValidationFailed(f"This request takes {lo} to {hi} images; {len(sources)} were sent.",
                                   detail={"min_images": lo, "max_images": hi, "received": len(sources)})
        if spec.form_options is not None and spec.from_form is not None:
            options = spec.from_form(form_flags(form, spec.form_options))
        else:
            options = form_flags(form, spec.options, fields=spec.form_fields)
    if spec.unique_in is not None:
        unique_ids(sources, spec.unique_in)
    return ImageRequest(sources=sources, options=options)
