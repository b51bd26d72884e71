"""Vision-LLM review: requests, what the model must answer, and the responses.

`LlmReview` / `LlmGroupReview` are what the model is asked to produce (their
JSON schema, reduced to the subset every provider accepts, is sent with the
request); the `*Response` classes add what Loupe measured itself.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from app.schemas.common import ImageInput, OmittableStr, ranged, readonly

LLM_GROUP_MIN = 2
LLM_GROUP_MAX = 10
CUSTOM_PROMPT_MAX_CHARS = 2000
# provider/model strings as LiteLLM spells them: `openai/gpt-4o-mini`, `ollama_chat/llava:13b`, `gemini/gemini-2.5-flash`
MODEL_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:/@+\-]{0,199}$"


# --- requests ---------------------------------------------------------------------------
class LlmOptions(BaseModel):
    """Options shared by the single and the group review (JSON fields, or form fields with multipart)."""

    model: str | None = Field(
        None, pattern=MODEL_PATTERN,
        description="LiteLLM model string: `openai/gpt-4o-mini`, `anthropic/claude-sonnet-4-5`, "
                    "`gemini/gemini-2.5-flash`, or `openai/<served-name>` for the OpenAI-compatible server at "
                    "LLM_API_BASE (vLLM, Ollama, LM Studio). Default: LLM_DEFAULT_MODEL.",
        examples=["openai/gpt-4o-mini"])
    custom_prompt: str | None = Field(
        None, max_length=CUSTOM_PROMPT_MAX_CHARS,
        description="Extra instructions for the reviewer (what to look for, the use of the photo). "
                    "They cannot change the answer's format.",
        examples=["This is a product photo for an online shop; judge it for that use."])
    max_tokens: int | None = ranged(
        "Most tokens the model may generate. Default LLM_MAX_TOKENS (for a group, at least 300 + 150 per image).",
        16, 8192, None, ge=16, le=8192)
    ref_id: str | None = Field(None, max_length=256, description="Your reference for this review, echoed in the "
                                                                 "response (festora-vision-api's field).")

    model_config = ConfigDict(extra="forbid")


def _image_or_url(schema: dict) -> None:
    for name in ("image", "image_url"):
        schema["properties"][name].pop("default", None)
    schema["oneOf"] = [{"required": ["image"]}, {"required": ["image_url"]}]


class LlmReviewRequest(LlmOptions):
    """The image as `image` (url, base64 or data), or festora-vision-api's body: `image_url` at the top level."""

    image: ImageInput = Field(None, description="The photo.")  # type: ignore[assignment]  # one of image / image_url
    image_url: OmittableStr = Field(None, max_length=4096, description="festora-vision-api's request: the photo's "
                                                                       "URL (the same as `image.url`).")

    model_config = ConfigDict(extra="forbid", json_schema_extra=lambda schema, _cls: _llm_request_schema(schema))

    @model_validator(mode="after")
    def _one_image(self) -> LlmReviewRequest:
        if (self.image is None) == (self.image_url is None):
            raise ValueError("give exactly one of `image` or `image_url`")
        if self.image is None:
            self.image = ImageInput(url=self.image_url)
        return self


def _llm_request_schema(schema: dict) -> None:
    _image_or_url(schema)
    schema["examples"] = [
        {"image": {"url": "https://example.com/photo.jpg", "image_id": "IMG_2031"}},
        {"image": {"base64": "data:image/jpeg;base64,/9j/4AAQ…"}, "model": "anthropic/claude-sonnet-4-5",
         "custom_prompt": "A portrait for a company website.", "max_tokens": 600},
        {"image_url": "https://example.com/photo.jpg", "ref_id": "photo_abc123", "model": "openai/gpt-4o-mini"},
    ]


class LlmGroupRequest(LlmOptions):
    images: list[ImageInput] = Field(
        min_length=LLM_GROUP_MIN, max_length=LLM_GROUP_MAX,
        description=f"{LLM_GROUP_MIN} to {LLM_GROUP_MAX} shots of one scene. Ids must be unique "
                    "(default: the position, `0`, `1`, …).")

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"images": [{"url": "https://example.com/burst/1.jpg", "image_id": "shot-1"},
                    {"url": "https://example.com/burst/2.jpg", "image_id": "shot-2"},
                    {"url": "https://example.com/burst/3.jpg", "image_id": "shot-3"}],
         "custom_prompt": "Prefer the shot where everybody's eyes are open."},
    ]})


# --- what the model answers ------------------------------------------------------------------
class LlmReview(BaseModel):
    """The model's review of one photo (validated before it is returned)."""

    overall_score: int = ranged("Overall rating of the photo: 1 unusable, 5 an ordinary acceptable snapshot, "
                                "10 outstanding.", 1, 10, True, default=..., ge=1, le=10)
    discard_reason: str | None = Field(
        description="null when the photo is worth keeping; otherwise one short sentence saying why it should be "
                    "discarded (badly out of focus, subject cut off, eyes closed, grossly mis-exposed …).")
    composition: str = Field(min_length=1, max_length=1500, description="Framing, balance, horizon, crop.")
    subject: str = Field(min_length=1, max_length=1500, description="What the subject is; focus, expression, pose.")
    lighting: str = Field(min_length=1, max_length=1500, description="Exposure, direction and quality of light, colour.")
    background_quality: str = Field(min_length=1, max_length=1500, description="Distractions, clutter, separation, bokeh.")
    highlights: list[str] = Field(max_length=5, description="At most 5 short strengths (may be empty).")
    issues: list[str] = Field(max_length=5, description="At most 5 short problems (may be empty).")
    summary: str = Field(min_length=1, max_length=2000, description="One or two sentences for the photographer.")

    model_config = ConfigDict(extra="ignore")

    @field_validator("discard_reason", mode="before")
    @classmethod
    def _empty_is_null(cls, v):
        if isinstance(v, str) and v.strip().lower() in ("", "null", "none", "n/a"):
            return None
        return v


class GroupImageVerdict(BaseModel):
    image_id: str = Field(description="One of the ids of the request.")
    score: int = ranged("Rating of this shot: 1 unusable … 10 outstanding.", 1, 10, True, default=..., ge=1, le=10)
    notes: str = Field(min_length=1, max_length=600, description="A short note on this shot (what is better or worse).")

    model_config = ConfigDict(extra="ignore")


class LlmGroupReview(BaseModel):
    """The model's comparison of several shots of one scene (validated before it is returned)."""

    images: list[GroupImageVerdict] = Field(description="One entry per shot, in the order of the request.")
    best_image_id: str = Field(description="The id of the best shot; always one of the request's ids.")
    reason: str = Field(min_length=1, max_length=1500, description="Why that shot is the best.")
    summary: str = Field(min_length=1, max_length=2000, description="The set in one or two sentences.")

    model_config = ConfigDict(extra="ignore")


# --- responses ----------------------------------------------------------------------------------
class LlmImageSent(BaseModel):
    """What the model actually received (Loupe re-encodes every image; the provider never sees your URL)."""

    image_id: str | None = None
    format: Literal["JPEG"] = "JPEG"
    width_px: int = Field(description="Width of the JPEG sent (longest side at most LLM_IMAGE_MAX_DIM).")
    height_px: int = Field(description="Height of the JPEG sent.")
    bytes: int = Field(description="Size of the JPEG sent, before base64.")


class LlmCallInfo(BaseModel):
    model_used: str = Field(description="The LiteLLM model string the review was made with.")
    provider_model: str | None = Field(None, description="The model name the provider reported, when it did.")
    tokens_used: int | None = ranged("Tokens (prompt + completion) over every call made, as the provider reported "
                                     "them; null when it reported none.", 0, None, False)
    attempts: int = ranged("Calls made: 1, or 2 when the first answer was invalid and the model was asked again.",
                           1, 2, False, default=1)
    processing_ms: float = ranged("Time for the whole request (reading the image, the model's calls).",
                                  0, None, False, default=...)


class _ApiVersion(BaseModel):
    api_version: str = "v1"


class _ReviewHead(_ApiVersion):
    image_id: str | None = Field(None, description="Your id, or `0` when none was given.")
    ref_id: str | None = Field(None, description="The request's `ref_id`, echoed (null when none was sent).")


class FestoraAnalysis(BaseModel):
    """festora-vision-api's `analysis` object, from Loupe's review fields."""

    overall_score: int = ranged("= overall_score.", 1, 10, True, default=...)
    discard_reason: str | None
    best_in_group: bool = Field(description="Always false: one photo is reviewed alone (compare shots with "
                                            "/v1/analyze/llm/group).")
    composition: str
    pose_quality: str = Field(description="= subject (focus, expression, pose).")
    background_quality: str
    highlights: list[str]
    issues: list[str]
    summary: str


# Bases are listed last-first so that the JSON reads: api_version, image_id, the review, the call's numbers.
class LlmReviewResponse(LlmCallInfo, LlmReview, _ReviewHead):
    image_sent: LlmImageSent

    @readonly("Alias for festora-vision-api clients: the review in festora's `analysis` object.",
              {"x-compat": "festora-vision-api"})
    def analysis(self) -> FestoraAnalysis:
        return FestoraAnalysis(overall_score=self.overall_score, discard_reason=self.discard_reason, best_in_group=False,
                               composition=self.composition, pose_quality=self.subject,
                               background_quality=self.background_quality, highlights=list(self.highlights),
                               issues=list(self.issues), summary=self.summary)

    @readonly("Always null in a response that succeeded (festora-vision-api's field); errors are HTTP errors in the "
              "error envelope.", {"x-compat": "festora-vision-api"})
    def error(self) -> None:
        return None

    model_config = ConfigDict(extra="ignore", json_schema_extra={"example": {
        "api_version": "v1", "image_id": "IMG_2031", "overall_score": 7, "discard_reason": None,
        "composition": "Subject on the left third, level horizon.", "subject": "A sharp portrait, eyes in focus.",
        "lighting": "Soft window light from the right; slightly warm.", "background_quality": "Clean, softly blurred.",
        "highlights": ["Sharp eyes", "Pleasant light"], "issues": ["Tight crop at the top of the head"],
        "summary": "A good, usable portrait; a little more headroom would help.",
        "model_used": "openai/gpt-4o-mini", "provider_model": "gpt-4o-mini-2024-07-18", "tokens_used": 1312,
        "attempts": 1, "processing_ms": 2841.5,
        "image_sent": {"image_id": "IMG_2031", "format": "JPEG", "width_px": 1024, "height_px": 683, "bytes": 151202}}})


class LlmGroupResponse(LlmCallInfo, LlmGroupReview, _ApiVersion):
    ref_id: str | None = Field(None, description="The request's `ref_id`, echoed (null when none was sent).")
    images_sent: list[LlmImageSent]

    model_config = ConfigDict(extra="ignore", json_schema_extra={"example": {
        "api_version": "v1",
        "images": [{"image_id": "shot-1", "score": 6, "notes": "Eyes half closed."},
                   {"image_id": "shot-2", "score": 8, "notes": "Sharp, natural smile."}],
        "best_image_id": "shot-2", "reason": "The only shot with open eyes and sharp focus on the face.",
        "summary": "Two near-identical portraits; the second is the keeper.",
        "model_used": "openai/gpt-4o-mini", "provider_model": None, "tokens_used": 2210, "attempts": 1,
        "processing_ms": 4120.0,
        "images_sent": [{"image_id": "shot-1", "format": "JPEG", "width_px": 1024, "height_px": 768, "bytes": 120331},
                        {"image_id": "shot-2", "format": "JPEG", "width_px": 1024, "height_px": 768, "bytes": 118045}]}})
