"""Shared schema pieces: score fields that state their range and direction, image inputs, errors."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, computed_field, model_validator

if TYPE_CHECKING:
    #: a text field that may be left out (the attribute is then None) but not sent as null
    OmittableStr = str | None
else:
    OmittableStr = str  # what pydantic validates and puts in the schema: a string, never null


def range_schema(lo: float | None, hi: float | None, higher_is_better: bool | None) -> tuple[str, dict[str, Any]]:
    """The text ("Range 0..1; higher is better.") and the vendor keys (`x-range`, `x-direction`, and
    `x-higher-is-better` where one end is better) that say a number's range and direction."""
    direction = {True: "higher is better", False: "lower is better", None: "neither end is better"}[higher_is_better]
    lo_txt = "-inf" if lo is None else f"{lo:g}"
    hi_txt = "+inf" if hi is None else f"{hi:g}"
    extra: dict[str, Any] = {"x-range": [lo, hi],
                             "x-direction": {True: "higher_is_better", False: "lower_is_better", None: "neither"}[higher_is_better]}
    if higher_is_better is not None:
        extra["x-higher-is-better"] = higher_is_better
    return f"Range {lo_txt}..{hi_txt}; {direction}.", extra


def ranged(description: str, lo: float | None, hi: float | None, higher_is_better: bool | None,
          default: Any = None, **kw) -> Any:
    """A numeric field whose OpenAPI schema says its range and which direction is better."""
    text, extra = range_schema(lo, hi, higher_is_better)
    extra.update(kw.pop("json_schema_extra", {}) or {})
    return Field(default, description=f"{description} {text}", json_schema_extra=extra, **kw)


def festora_alias(of: str, *range_and_direction: float | bool | None, how: str = "") -> Callable[[Callable[..., Any]], Any]:
    """A read-only response field under festora-vision-api's name for one of Loupe's (`of`), so that its
    clients read Loupe's answers unchanged. Numbers give (lo, hi, higher_is_better) as `ranged` does."""
    text = f"Alias for festora-vision-api clients: `{of}`" + (f" {how}" if how else "") + "."
    extra: dict[str, Any] = {"x-alias-of": of, "x-compat": "festora-vision-api"}
    if range_and_direction:
        lo, hi, better = range_and_direction
        range_text, range_extra = range_schema(lo, hi, better)  # type: ignore[arg-type]
        text, extra = f"{text} {range_text}", {**extra, **range_extra}
    return readonly(text, extra)


def readonly(description: str, extra: dict[str, Any] | None = None) -> Callable[[Callable[..., Any]], Any]:
    """A method as a read-only response field (pydantic's computed_field over a property), in the schema."""
    def wrap(fn: Callable[..., Any]) -> Any:
        return computed_field(description=description, json_schema_extra=extra)(property(fn))
    return wrap


class ErrorInfo(BaseModel):
    type: str = Field(description="Stable machine-readable error type, e.g. `invalid_image`.")
    message: str = Field(description="What went wrong, in words.")
    detail: Any = Field(None, description="Structured context (limits, offending values).")
    status_code: int | None = Field(None, description="The HTTP status this error has on its own.")


class ErrorEnvelopeBody(ErrorInfo):
    request_id: str | None = Field(None, description="Echoes X-Request-ID; quote it in bug reports.")


class ErrorEnvelope(BaseModel):
    """The one shape of every error response."""

    error: ErrorEnvelopeBody

    model_config = ConfigDict(json_schema_extra={"example": {"error": {
        "type": "invalid_image", "message": "The JPEG data could not be decoded: it is truncated or corrupt.",
        "detail": {"format": "JPEG"}, "request_id": "6f1c2b1e9d2a4c1f"}}})


def _one_source(schema: dict[str, Any]) -> None:
    """ImageInput's schema: exactly one of `url` / `base64` / `data` present, none nullable (no null default)."""
    for name in IMAGE_FIELDS:
        schema["properties"][name].pop("default", None)
    schema["oneOf"] = [{"required": [name]} for name in IMAGE_FIELDS]


IMAGE_FIELDS = ("url", "base64", "data")


class ImageInput(BaseModel):
    """One image: exactly one of `url` or `base64` (`data` is festora's name for it), and an optional caller id."""

    # `str` (OmittableStr) with a default of None: the field may be left out, but not sent as null, so that the schema
    # (a string, and exactly one of the two present) says exactly what validation accepts
    url: OmittableStr = Field(None, max_length=4096, description="http(s) URL Loupe downloads itself (SSRF-guarded).",
                              examples=["https://upload.wikimedia.org/wikipedia/commons/3/3f/Fronalpstock_big.jpg"])
    base64: OmittableStr = Field(None, description="The image bytes as base64, raw or as a data URI (`data:image/jpeg;base64,…`).")
    data: OmittableStr = Field(None, description="festora-vision-api's name for `base64` (accepted the same way, for its "
                                                 "clients); send one of the two.")
    image_id: str | None = Field(None, max_length=256, description="Your id for this image; echoed in the result.")

    model_config = ConfigDict(extra="forbid", json_schema_extra=lambda schema, _cls: _one_source(schema))

    @model_validator(mode="after")
    def _exactly_one(self) -> ImageInput:
        if sum(getattr(self, name) is not None for name in IMAGE_FIELDS) != 1:
            raise ValueError("give exactly one of `url` or `base64` (or `data`, festora's name for it)")
        return self

    @property
    def encoded(self) -> str | None:
        """The base64 text, under whichever name it came."""
        return self.base64 if self.base64 is not None else self.data


class RunFlags(BaseModel):
    """Which analyses to run. Omitted flags take these defaults."""

    run_blur: bool = Field(default=True, description="Sharpness (variance of the Laplacian). No model needed.")
    run_exposure: bool = Field(default=True, description="Brightness and clipping. No model needed.")
    run_quality: bool = Field(default=True, description="The 0–1 quality score (blur, exposure, BRISQUE, NIMA technical — whichever are available).")
    run_aesthetic: bool = Field(default=False, description="NIMA aesthetic (AVA) and, with CLIP, the LAION aesthetic head.")
    run_emotion: bool = Field(default=False, description="Faces with their emotions (DeepFace).")
    run_embedding: bool = Field(default=False, description="CLIP image embedding (L2-normalised).")
    run_faces: bool = Field(default=False, description="Face boxes, landmarks and confidence (YuNet).")

    model_config = ConfigDict(extra="forbid")


Band = Literal["very_poor", "poor", "decent", "good", "excellent"]
