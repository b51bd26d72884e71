"""Per-image analysis results. Every number states its range and direction."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from app.models import outputs
from app.schemas.common import Band, ErrorInfo, ImageInput, RunFlags, festora_alias, ranged

#: festora-vision-api's aesthetic_label from the NIMA aesthetic mean: high from 6.5, medium from 5.0, else low
#: (its app/services/quality_service.py); returned in `aesthetic.thresholds` as aesthetic_label_*_min
FESTORA_AESTHETIC_LABELS: tuple[tuple[Literal["high", "medium"], float], ...] = (("high", 6.5), ("medium", 5.0))

Status = Literal["ok", "unavailable", "error"]


class AnalysisError(BaseModel):
    type: str = Field(description="`model_unavailable`, `analysis_failed`, …")
    message: str


class AnalysisBase(BaseModel):
    status: Status = Field(description="`ok`: values are set. `unavailable`: the analysis or its model is not "
                                       "available on this instance (values are null, never made up). `error`: it failed for this image.")
    error: AnalysisError | None = Field(None, description="Why the analysis is not `ok`.")


# --- blur ------------------------------------------------------------------------
class BlurThresholds(BaseModel):
    blur_threshold: float = Field(description="BLUR_THRESHOLD: below this Laplacian variance the image is blurry.")
    analysis_max_dim: int = Field(description="ANALYSIS_MAX_DIM: the grey image is scaled to this longest side first.")


class BlurResult(AnalysisBase):
    laplacian_variance: float | None = ranged("Variance of the Laplacian of the grey image at the analysis size.", 0, None, True)
    sharpness_score: float | None = ranged("Sharpness mapped to 0..1 (0.5 at the threshold, 1 from 4x the threshold).", 0, 1, True)
    is_blurry: bool | None = Field(None, description="laplacian_variance < blur_threshold.")
    noise_sigma: float | None = ranged(
        "Estimated std of the image's noise in grey levels at the analysis size (Immerkaer's operator, median "
        "absolute response, clipped pixels left out).", 0, None, False)
    laplacian_noise_variance: float | None = ranged(
        "The part of laplacian_variance that noise explains, measured on the Laplacian itself (square of its "
        "robust std; 20·noise_sigma² for white noise).", 0, None, False)
    detail_variance: float | None = ranged("laplacian_variance minus laplacian_noise_variance: the sharpness the "
                                           "quality score uses.", 0, None, True)
    blockiness: float | None = ranged(
        "JPEG 8x8 grid strength: mean step across the strongest grid phase over the other phases (about 1.0–1.1 "
        "uncompressed or high quality, 1.3–2.8 at JPEG quality 40). From 1.15 on, the grid's steps are left out of "
        "the Laplacian measures. Null when the analysis image is resampled (the grid is then gone).", 0, None, False)
    analyzed_width_px: int | None = None
    analyzed_height_px: int | None = None
    thresholds: BlurThresholds

    @festora_alias("thresholds.blur_threshold", 0, None, None)
    def blur_threshold(self) -> float:
        return self.thresholds.blur_threshold


# --- exposure ----------------------------------------------------------------------
class ExposureThresholds(BaseModel):
    bright_min: float = Field(description="BRIGHT_MIN: mean brightness below this is underexposed.")
    bright_max: float = Field(description="BRIGHT_MAX: mean brightness above this is overexposed.")
    shadow_clip_max: float = Field(description="SHADOW_CLIP_MAX: a larger share of crushed shadows is underexposed.")
    highlight_clip_max: float = Field(description="HIGHLIGHT_CLIP_MAX: a larger share of blown highlights is overexposed.")
    shadow_level: int = Field(description="Grey level at or below which a pixel counts as a crushed shadow.")
    highlight_level: int = Field(description="Grey level at or above which a pixel counts as a blown highlight.")


class ExposureResult(AnalysisBase):
    mean_brightness: float | None = ranged("Mean grey level.", 0, 255, None)
    contrast: float | None = ranged("Standard deviation of grey levels.", 0, 127.5, None)
    shadow_clip_fraction: float | None = ranged("Share of pixels at or below shadow_level.", 0, 1, False)
    highlight_clip_fraction: float | None = ranged("Share of pixels at or above highlight_level.", 0, 1, False)
    p05_brightness: float | None = ranged("5th percentile grey level.", 0, 255, None)
    p95_brightness: float | None = ranged("95th percentile grey level.", 0, 255, None)
    exposure_score: float | None = ranged("Exposure mapped to 0..1 (0.5 at each threshold).", 0, 1, True)
    is_underexposed: bool | None = None
    is_overexposed: bool | None = None
    verdict: Literal["ok", "underexposed", "overexposed", "mixed"] | None = Field(
        None, description="`mixed`: both crushed shadows and blown highlights beyond their limits.")
    thresholds: ExposureThresholds


# --- quality ---------------------------------------------------------------------------
class QualityComponent(BaseModel):
    name: Literal["sharpness", "noise", "blocking", "exposure", "brisque", "nima_technical"]
    raw: float = Field(description="The measurement as returned by its analysis (see raw_range and higher_is_better); "
                                   "for sharpness, the noise-compensated Laplacian variance (blur.detail_variance); "
                                   "for noise, blur.noise_sigma; for blocking, blur.blockiness.")
    raw_range: tuple[float | None, float | None]
    higher_is_better: bool
    score: float = ranged("The measurement mapped to 0..1 (README, 'Quality score': the noise term scores 1 up to a "
                          "clean level from 0.5 grey levels for an image without detail to 2 for a sharp one; the "
                          "brisque term is never above the noise term squared).", 0, 1, True)
    weight: float = Field(description="Relative weight in the weighted geometric mean.")


class QualityThresholds(BaseModel):
    quality_min: float = Field(description="QUALITY_MIN: is_ok when score >= this.")
    bands: dict[str, tuple[float, float]] = Field(description="Band name → [lower, upper) bounds of the score.")


class QualityResult(AnalysisBase):
    score: float | None = ranged("Combined technical quality.", 0, 1, True)
    band: Band | None = Field(None, description="very_poor < 0.25 ≤ poor < 0.45 ≤ decent < 0.6 ≤ good < 0.85 ≤ excellent.")
    is_ok: bool | None = Field(None, description="score >= quality_min.")
    overall_quality: Literal["low", "medium", "high"] | None = Field(
        None, description="Coarse label for festora compatibility: low (score < 0.45), medium (0.45 ≤ score < 0.6), high (score ≥ 0.6).")
    brisque: float | None = ranged("BRISQUE (LIVE-trained SVR).", *outputs.BRISQUE.range, outputs.BRISQUE.higher_is_better)
    niqe: float | None = ranged("NIQE distance to the pristine natural-scene model (not in the combined score).",
                                *outputs.NIQE.range, outputs.NIQE.higher_is_better)
    nima_technical: float | None = ranged("NIMA trained on KonIQ-10k (pyiqa `nima-koniq`).", *outputs.NIMA_TECHNICAL.range,
                                          outputs.NIMA_TECHNICAL.higher_is_better)
    components: list[QualityComponent] = Field(default_factory=list, description="What went into the score.")
    missing: dict[str, str] = Field(default_factory=dict, description="Components that could not be used, and why.")
    thresholds: QualityThresholds

    @festora_alias("brisque", *outputs.BRISQUE.range, outputs.BRISQUE.higher_is_better)
    def brisque_score(self) -> float | None:
        return self.brisque

    @festora_alias("nima_technical", 1, 10, True, how="on festora's 1–10 scale: 1 + 9 × nima_technical")
    def nima_technical_score(self) -> float | None:
        return None if self.nima_technical is None else round(1 + 9 * self.nima_technical, 4)


# --- aesthetic -------------------------------------------------------------------------
class AestheticResult(AnalysisBase):
    nima_score: float | None = ranged("NIMA aesthetic (AVA) mean rating.", *outputs.NIMA_AESTHETIC.range,
                                      outputs.NIMA_AESTHETIC.higher_is_better)
    nima_std: float | None = ranged("Spread of the predicted AVA rating distribution.", 0, 4.5, None)
    nima_distribution: list[float] | None = Field(None, description="Predicted probabilities of ratings 1..10 (sum 1).")
    label: Literal["poor", "average", "good", "excellent"] | None = Field(
        None, description="From nima_score: poor < 4 ≤ average < 5.5 ≤ good < 6.5 ≤ excellent.")
    laion_score: float | None = ranged("LAION aesthetic predictor V1 on the CLIP embedding (only when CLIP ran).",
                                       *outputs.LAION_AESTHETIC.range, outputs.LAION_AESTHETIC.higher_is_better)
    thresholds: dict[str, float] = Field(default_factory=dict, description="Label bounds applied to nima_score "
                                         "(`<label>_min`, and festora's `aesthetic_label_<label>_min`).")

    @festora_alias("nima_score", *outputs.NIMA_AESTHETIC.range, outputs.NIMA_AESTHETIC.higher_is_better)
    def nima_aesthetic_score(self) -> float | None:
        return self.nima_score

    @festora_alias("nima_score", how="as festora's label: high from 6.5, medium from 5.0, else low "
                   "(`thresholds.aesthetic_label_high_min`, `aesthetic_label_medium_min`)")
    def aesthetic_label(self) -> Literal["low", "medium", "high"] | None:
        if self.nima_score is None:
            return None
        return next((name for name, lo in FESTORA_AESTHETIC_LABELS if self.nima_score >= lo), "low")


# --- faces / emotion ---------------------------------------------------------------------
class Box(BaseModel):
    x: int = Field(description="Left edge in original image pixels.")
    y: int = Field(description="Top edge in original image pixels.")
    w: int
    h: int


class Face(BaseModel):
    box: Box
    confidence: float = ranged("Detector confidence.", 0, 1, True)
    landmarks: dict[str, tuple[float, float]] | None = Field(
        None, description="right_eye, left_eye, nose, mouth_right, mouth_left in original image pixels.")


class FacesResult(AnalysisBase):
    faces: list[Face] = Field(default_factory=list)
    count: int = 0
    detector: str | None = None
    thresholds: dict[str, float] = Field(default_factory=dict)


class EmotionFace(BaseModel):
    box: Box
    confidence: float = ranged("Face detector confidence.", 0, 1, True)
    dominant_emotion: str
    emotions: dict[str, float] = Field(description="Probability per emotion (angry, disgust, fear, happy, sad, surprise, neutral); sums to 1.")

    @festora_alias("box")
    def region(self) -> Box:
        return self.box

    @festora_alias("confidence", 0, 1, True)
    def face_confidence(self) -> float:
        return self.confidence

    @festora_alias("emotions", 0, 100, None, how="in percent (festora's scale): 100 × each probability")
    def scores(self) -> dict[str, float]:
        return {k: round(100 * v, 4) for k, v in self.emotions.items()}


class EmotionResult(AnalysisBase):
    faces: list[EmotionFace] = Field(default_factory=list, description="Empty when no face is found (not an error).")
    count: int = 0
    detector: str | None = None

    @festora_alias("count", 0, None, None)
    def faces_detected(self) -> int:
        return self.count


class EmbeddingResult(AnalysisBase):
    model: str | None = None
    dim: int | None = None
    vector: list[float] | None = Field(None, description="L2-normalised: cosine similarity = dot product.")

    @festora_alias("dim")
    def dimensions(self) -> int | None:
        return self.dim


# --- per image ---------------------------------------------------------------------------
class ImageResult(BaseModel):
    image_id: str | None = Field(None, description="Your id, or the index in the request when none was given.")
    source_url: str | None = Field(None, description="Final URL after redirects, for URL inputs.")
    width_px: int | None = None
    height_px: int | None = None
    format: str | None = Field(None, description="Format sniffed from the bytes: JPEG, PNG, WEBP, GIF, BMP, TIFF, HEIF, "
                                                 "AVIF, or a camera RAW (DNG, CR2, CR3, NEF, ARW, PEF, SRW, ORF, RW2, "
                                                 "RAF; RAW for another TIFF-structured RAW).")
    sha256: str | None = Field(None, description="SHA-256 of the image bytes.")
    decoded_from: Literal["raw_preview", "raw_demosaic"] | None = Field(
        default=None, description="Camera RAW only: the pixels analysed are the camera's embedded JPEG preview "
                          "(`raw_preview`, when it is at least as large as the analyses need) or LibRaw's half-size "
                          "demosaic (`raw_demosaic`: camera white balance, no auto-brightening). Null otherwise.")
    jpeg_quality: int | None = ranged(
        "JPEG only: the IJG quality setting (1–100) closest to the file's quantisation tables; a re-save at a "
        "lower setting reads lower. Null for other formats.", 1, 100, True)
    blur: BlurResult | None = None
    exposure: ExposureResult | None = None
    quality: QualityResult | None = None
    aesthetic: AestheticResult | None = None
    emotion: EmotionResult | None = None
    faces: FacesResult | None = None
    embedding: EmbeddingResult | None = None
    timings_ms: dict[str, float] = Field(default_factory=dict, description="Time per stage; batched model time is shared evenly.")
    processing_time_ms: float = 0.0
    error: ErrorInfo | None = Field(None, description="Set when the image itself could not be read; analyses are then null.")


class AnalyzeRequest(RunFlags):
    image: ImageInput

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"image": {"url": "https://example.com/photo.jpg", "image_id": "photo-1"}, "run_quality": True},
        {"image": {"base64": "data:image/jpeg;base64,/9j/4AAQ…", "image_id": "upload-7"}, "run_aesthetic": True},
    ]})


class AnalyzeResponse(BaseModel):
    api_version: str = "v1"
    result: ImageResult


class BatchRequest(RunFlags):
    images: list[ImageInput] = Field(min_length=1, description="Up to MAX_BATCH_SIZE images; results keep this order.")

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"images": [{"url": "https://example.com/a.jpg", "image_id": "a"},
                    {"url": "https://example.com/b.jpg", "image_id": "b"}], "run_quality": True},
    ]})


class BatchSummary(BaseModel):
    total: int
    succeeded: int
    failed: int
    processing_time_ms: float


class BatchResponse(BaseModel):
    api_version: str = "v1"
    results: list[ImageResult]
    summary: BatchSummary

    @festora_alias("summary.total", 0, None, None)
    def total(self) -> int:
        return self.summary.total

    @festora_alias("summary.succeeded", 0, None, None)
    def succeeded(self) -> int:
        return self.summary.succeeded

    @festora_alias("summary.failed", 0, None, None)
    def failed(self) -> int:
        return self.summary.failed

    @festora_alias("summary.processing_time_ms", 0, None, None)
    def total_processing_time_ms(self) -> float:
        return self.summary.processing_time_ms


class QualityGateResponse(BaseModel):
    """The quality-gate answer for one upload: pass/fail with the numbers and thresholds behind it."""

    image_id: str | None = None
    blur_score: float = ranged("Variance of the Laplacian at the analysis size.", 0, None, True)
    brightness: float = ranged("Mean grey level.", 0, 255, None)
    width: int = Field(description="Original width in pixels (after EXIF orientation).")
    height: int = Field(description="Original height in pixels (after EXIF orientation).")
    is_blurry: bool
    is_underexposed: bool
    is_overexposed: bool
    is_too_small: bool
    is_ok: bool = Field(description="Not blurry, not under- or overexposed, not too small.")
    reasons: list[str] = Field(description="Why is_ok is false (empty when it is true).")
    thresholds: dict[str, float] = Field(description="Every threshold applied.")
    processing_time_ms: float


MAX_TEXT_CHARS = 1000
#: one text to embed: 1..1000 characters with at least one that is not white space
EmbedText = Annotated[str, StringConstraints(min_length=1, max_length=MAX_TEXT_CHARS, pattern=r"\S")]


class TextEmbedRequest(BaseModel):
    texts: list[EmbedText] = Field(min_length=1, max_length=256,
                                   description="Texts to embed (1..256, each 1..1000 characters, not only spaces).")

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"texts": ["a cat sleeping on a sofa", "a rocket launch at dusk"]}]})


class TextEmbedding(BaseModel):
    text: str
    vector: list[float] = Field(description="L2-normalised; the cosine similarity with an image embedding of the same model is the dot product.")


class TextEmbedResponse(BaseModel):
    api_version: str = "v1"
    model: str | None
    dim: int
    embeddings: list[TextEmbedding]
    processing_time_ms: float
