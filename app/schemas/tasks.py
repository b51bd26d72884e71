"""POST /v1/tasks and /v1/tasks/batch: questions about regions of an image (the image_embed shape).

Each task is `{"operation_id", "type", "params"}`; the type decides which params and
targets are allowed, and the schema says so exactly (a union discriminated by `type`,
one params model per type), so what /docs shows is what validation enforces.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.schemas.common import ErrorInfo, ImageInput

Target = Literal["whole_image", "prominent_person", "prominent_face"]
FaceContext = Literal["prominent_person", "whole_image"]
OperationId = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$",
                                   description="Your name for this task; its result is keyed by it. Unique in a request.")]

TARGET_HELP = ("`whole_image`; `prominent_person`: the largest person (the whole image when none is found, and the "
               "result says so); `prominent_face`: the largest face (`skipped` when there is none).")
FACE_CONTEXT_HELP = ("Where a `prominent_face` is looked for: inside the prominent person (default; the whole image "
                     "when there is no person) or in the whole image.")


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RegionParams(_Params):
    target: Target = Field(default="whole_image", description=TARGET_HELP)
    face_context: FaceContext = Field(default="prominent_person", description=FACE_CONTEXT_HELP)


class BoxParams(_Params):
    target: Literal["prominent_person", "prominent_face"] = Field(default="prominent_person", description=TARGET_HELP)
    face_context: FaceContext = Field(default="prominent_person", description=FACE_CONTEXT_HELP)


class TagParams(RegionParams):
    top: int = Field(default=1, ge=1, le=1000, description="At most this many labels (image_tagger's `top`).")
    minconf: float = Field(default=0.0, ge=0.0, le=1.0, description="Only labels with at least this confidence (image_tagger's "
                                                               "`minconf`); combined with `top`.")


class ClassifyParams(RegionParams):
    collection_id: int | Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")] = Field(
        description="The collection whose best classifier (CLASSIFIER_DIR/best_models.json) answers.")


class DescribeParams(RegionParams):
    max_length: int = Field(default=50, ge=5, le=300, description="Most tokens of the caption.")


class WholeImageParams(_Params):
    target: Literal["whole_image"] = Field(default="whole_image", description="These analyses run on the whole image.")


class _Task(BaseModel):
    model_config = ConfigDict(extra="forbid")
    operation_id: OperationId


class DetectBoxTask(_Task):
    """The box of the prominent person or face, in original-image pixels."""

    type: Literal["detect_bounding_box"]
    params: BoxParams = Field(default_factory=BoxParams)


class EmbedClipTask(_Task):
    """CLIP image embedding of the target region (L2-normalised)."""

    type: Literal["embed_clip"]
    params: RegionParams = Field(default_factory=RegionParams)


class EmbedDinov2Task(_Task):
    """DINOv2 CLS embedding of the target region (L2-normalised)."""

    type: Literal["embed_dinov2"]
    params: RegionParams = Field(default_factory=RegionParams)


class EmbedMobilenetTask(_Task):
    """MobileNetV1 feature embedding of the target region (L2-normalised, 1024-d)."""

    type: Literal["embed_mobilenet"]
    params: RegionParams = Field(default_factory=RegionParams)


class TagTask(_Task):
    """ImageNet-1K labels of the target region."""

    type: Literal["tag_imagenet"]
    params: TagParams = Field(default_factory=TagParams)


class ClassifyTask(_Task):
    """Is the target region in a collection? Its classifier's embedding model embeds the region."""

    type: Literal["classify"]
    params: ClassifyParams


class DescribeTask(_Task):
    """A caption of the target region."""

    type: Literal["describe"]
    params: DescribeParams = Field(default_factory=DescribeParams)


class AnalysisTask(_Task):
    """One of Loupe's whole-image analyses, with the same result as /v1/analyze gives."""

    type: Literal["blur", "exposure", "quality", "aesthetic", "faces", "emotion"]
    params: WholeImageParams = Field(default_factory=WholeImageParams)


Task = Annotated[DetectBoxTask | EmbedClipTask | EmbedDinov2Task | EmbedMobilenetTask | TagTask | ClassifyTask
                 | DescribeTask | AnalysisTask, Field(discriminator="type")]


class TaskOptions(BaseModel):
    """The task list and its options (the JSON fields besides the image, or the multipart fields)."""

    model_config = ConfigDict(extra="forbid")
    tasks: list[Task] = Field(min_length=1, max_length=256,
                              description="Up to MAX_TASKS tasks (256 at most, whatever MAX_TASKS says); operation ids "
                                          "must be unique.")
    return_crops: bool = Field(default=True, description="Include a PNG of each region task's crop (longest side at most "
                                                 "CROP_MAX_DIM) as `cropped_image_base64`.")


class TasksRequest(TaskOptions):
    image: ImageInput

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "image": {"url": "https://example.com/portrait.jpg", "image_id": "p-1"},
        "tasks": [{"operation_id": "face_vec", "type": "embed_clip", "params": {"target": "prominent_face"}},
                  {"operation_id": "person", "type": "detect_bounding_box"},
                  {"operation_id": "tags", "type": "tag_imagenet", "params": {"top": 5, "minconf": 0.1}}],
        "return_crops": False}]})


class TasksBatchRequest(TaskOptions):
    images: list[ImageInput] = Field(min_length=1, description="Up to MAX_BATCH_SIZE images; each gets every task.")

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "images": [{"url": "https://example.com/a.jpg", "image_id": "a"}, {"url": "https://example.com/b.jpg", "image_id": "b"}],
        "tasks": [{"operation_id": "person", "type": "detect_bounding_box"},
                  {"operation_id": "in_42", "type": "classify", "params": {"collection_id": 42, "target": "prominent_person"}},
                  {"operation_id": "caption", "type": "describe", "params": {"max_length": 30}}],
        "return_crops": False}]})


class TasksForm(BaseModel):
    """Multipart fields of /v1/tasks and /v1/tasks/batch (the images come as `file` parts)."""

    tasks_json: str = Field(description="The task list as JSON text: the same array as the JSON body's `tasks`.")
    return_crops: bool = Field(default=True, description="As in the JSON body.")


class TaskResult(BaseModel):
    status: Literal["success", "error", "skipped"] = Field(
        description="`success`: `data` holds the answer. `skipped`: the task does not apply (e.g. no face for a "
                    "face target), with the reason in `error_message`. `error`: it failed for this image.")
    data: Any = Field(default=None, description="The task's answer; its shape depends on the task type (see the README).")
    target: Target | None = Field(default=None, description="The region the task ran on.")
    fallback: bool = Field(default=False, description="True when a person target fell back to the whole image (no person found).")
    cropped_image_bbox: list[int] | None = Field(
        default=None, min_length=4, max_length=4,
        description="The region, [xmin, ymin, xmax, ymax] in original-image pixels (after EXIF rotation).")
    cropped_image_base64: str | None = Field(default=None, description="PNG of the region (longest side at most CROP_MAX_DIM), "
                                                                "when return_crops and the target is a region.")
    error_message: str | None = None


class TasksResponse(BaseModel):
    api_version: str
    image_id: str
    source_url: str | None = None
    width_px: int | None = None
    height_px: int | None = None
    results: dict[str, TaskResult] = Field(default_factory=dict, description="By operation_id.")
    timings_ms: dict[str, float] = Field(default_factory=dict)
    error: ErrorInfo | None = Field(default=None, description="Batch only: the image could not be read (results are empty).")


class TasksBatchResponse(BaseModel):
    api_version: str
    results: list[TasksResponse] = Field(description="One per image, in request order.")
