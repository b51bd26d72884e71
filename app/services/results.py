"""Schema mapping: one image's pipeline state (`Ingested`) → its `ImageResult` response model.

Why apart from the orchestrator: the orchestrator decides what runs and keeps
failures contained; this module only says how a measurement is reported —
rounding, verdicts against the thresholds in settings, the thresholds echoed
back so a decision can be explained later, and an `unavailable` / `error` entry
(never an exception) for an analysis whose model did not run or failed. It is
pure: no I/O, no model call; the registry is read only for adapter facts
(score ranges, model name, detector threshold).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Literal, cast

from app.core.config import Settings
from app.core.errors import ApiError, ModelUnavailable
from app.models.registry import ModelRegistry
from app.schemas import analysis as S
from app.services import blur as blur_svc
from app.services import compression as compression_svc
from app.services import exposure as exp_svc
from app.services import score as score_svc

if TYPE_CHECKING:
    from app.services.orchestrator import Ingested, Plan

AestheticLabel = Literal["poor", "average", "good", "excellent"]
QualityName = Literal["sharpness", "noise", "blocking", "exposure", "brisque", "nima_technical"]
Verdict = Literal["ok", "underexposed", "overexposed", "mixed"]

# Fields declared as `Field(None, description=...)` (a positional default) are seen as required by
# mypy's dataclass_transform, so the constructors below pass those None defaults explicitly.

AESTHETIC_LABELS: tuple[tuple[AestheticLabel, float, float], ...] = (
    ("poor", 0.0, 4.0), ("average", 4.0, 5.5), ("good", 5.5, 6.5), ("excellent", 6.5, 11.0))


def assemble(it: Ingested, plan: Plan, settings: Settings, registry: ModelRegistry) -> S.ImageResult:
    """Per analysis of `plan`: its result, or a clear unavailable / error entry."""
    res = S.ImageResult(image_id=it.image_id, source_url=it.source_url, error=it.error, format=None, sha256=None)
    img = it.image
    if img is not None:
        res.width_px, res.height_px, res.format, res.sha256 = img.width, img.height, img.format, img.sha256
        res.jpeg_quality = img.jpeg_quality
        res.decoded_from = cast(Any, img.decoded_from)
        if plan.blur:
            res.blur = blur_result(it, settings)
        if plan.exposure:
            res.exposure = exposure_result(it, settings)
        if plan.quality:
            res.quality = quality_result(it, settings, registry)
        if plan.aesthetic:
            res.aesthetic = aesthetic_result(it)
        if plan.embedding:
            res.embedding = embedding_result(it, registry)
        if plan.emotion:
            res.emotion = emotion_result(it, settings)
        if plan.faces:
            res.faces = faces_result(it, registry)
    res.timings_ms = {k: round(v, 3) for k, v in it.timings.items()}
    res.processing_time_ms = round((time.perf_counter() - it.started) * 1000, 3)
    return res


def failure(exc: BaseException) -> tuple[S.Status, S.AnalysisError]:
    """(status, error) of an analysis whose model raised `exc`."""
    if isinstance(exc, ModelUnavailable):
        return "unavailable", S.AnalysisError(type="model_unavailable", message=exc.message)
    if isinstance(exc, ApiError):
        return "error", S.AnalysisError(type=exc.error_type, message=exc.message)
    return "error", S.AnalysisError(type="analysis_failed", message=f"{type(exc).__name__}: {str(exc)[:300]}")


def outcome(value: BaseException | None) -> tuple[S.Status, S.AnalysisError | None]:
    """(status, error) of a model result that is not a value: not run (None) or raised."""
    return failure(value) if value is not None else ("unavailable", None)


def blur_thresholds(settings: Settings) -> S.BlurThresholds:
    return S.BlurThresholds(blur_threshold=settings.blur_threshold, analysis_max_dim=settings.analysis_max_dim)


def exposure_thresholds(settings: Settings) -> S.ExposureThresholds:
    s = settings
    return S.ExposureThresholds(bright_min=s.bright_min, bright_max=s.bright_max, shadow_clip_max=s.shadow_clip_max,
                                highlight_clip_max=s.highlight_clip_max, shadow_level=exp_svc.SHADOW_LEVEL,
                                highlight_level=exp_svc.HIGHLIGHT_LEVEL)


def detail_variance(it: Ingested) -> float:
    return blur_svc.noise_compensated_variance(it.gate["laplacian_variance"], it.gate["laplacian_noise_variance"])


def blur_result(it: Ingested, settings: Settings) -> S.BlurResult:
    var = it.gate["laplacian_variance"]
    h, w = it.gate["analyzed_shape"][:2]
    t = settings.blur_threshold
    sigma = it.gate["noise_sigma"]
    return S.BlurResult(status="ok", error=None, laplacian_variance=round(var, 4),
                        sharpness_score=round(blur_svc.sharpness_score(var, t), 4),
                        noise_sigma=round(sigma, 4),
                        laplacian_noise_variance=round(it.gate["laplacian_noise_variance"], 4),
                        blockiness=round(it.gate["blockiness"], 4) if it.gate["blockiness"] is not None else None,
                        detail_variance=round(detail_variance(it), 4),
                        is_blurry=blur_svc.is_blurry(var, t), analyzed_width_px=w, analyzed_height_px=h,
                        thresholds=blur_thresholds(settings))


def exposure_result(it: Ingested, settings: Settings) -> S.ExposureResult:
    s = settings
    st: exp_svc.ExposureStats = it.gate["exposure"]
    under = exp_svc.is_underexposed(st, s.bright_min, s.shadow_clip_max)
    over = exp_svc.is_overexposed(st, s.bright_max, s.highlight_clip_max)
    verdict: Verdict = "mixed" if under and over else "underexposed" if under else "overexposed" if over else "ok"
    return S.ExposureResult(
        status="ok", error=None, mean_brightness=round(st.mean_brightness, 3), contrast=round(st.contrast, 3),
        shadow_clip_fraction=round(st.shadow_clip_fraction, 5), highlight_clip_fraction=round(st.highlight_clip_fraction, 5),
        p05_brightness=st.p05, p95_brightness=st.p95, exposure_score=round(exp_svc.exposure_score_for(st, settings), 4),
        is_underexposed=under, is_overexposed=over, verdict=verdict, thresholds=exposure_thresholds(settings))


def quality_components(it: Ingested, settings: Settings, registry: ModelRegistry,
                       ) -> tuple[list[score_svc.Component], dict[str, str], dict[str, float]]:
    """The mapped components, the missing ones with the reason, and the raw model values."""
    comps: list[score_svc.Component] = []
    missing: dict[str, str] = {}
    raw: dict[str, float] = {}
    w = score_svc.WEIGHTS
    detail, threshold = detail_variance(it), settings.blur_threshold
    comps.append(score_svc.sharpness_term(detail, threshold))
    sigma, clean = it.gate["noise_sigma"], score_svc.noise_allowance(detail, threshold)
    comps.append(score_svc.noise_term(sigma, clean))
    blocks = it.gate["blockiness"]
    if blocks is not None:
        comps.append(score_svc.Component("blocking", blocks, (0.0, None), False,
                                         compression_svc.blocking_to_unit(blocks), w["blocking"]))
    else:
        missing["blocking"] = "not measurable: the analysis image is resampled, so the JPEG grid is gone"
    comps.append(score_svc.exposure_term(exp_svc.exposure_score_for(it.gate["exposure"], settings)))
    for name in ("brisque", "niqe", "nima_technical"):
        value = it.models.get(name)
        if name not in it.models:
            missing[name] = "not run"
        elif value is None:
            missing[name] = "undefined for this image (too small, or flat with no texture to measure)"
        elif isinstance(value, BaseException):
            missing[name] = failure(value)[1].message
        else:
            raw[name] = float(value)
    if "brisque" in raw:
        comps.append(score_svc.brisque_term(raw["brisque"], sigma, clean))
    if "nima_technical" in raw:
        lo, hi = nima_technical_range(registry)
        comps.append(score_svc.Component("nima_technical", raw["nima_technical"], (lo, hi), True,
                                         score_svc.range_to_unit(raw["nima_technical"], lo, hi), w["nima_technical"]))
    missing.pop("niqe", None) if "niqe" in raw else None
    return comps, missing, raw


def nima_technical_range(registry: ModelRegistry) -> tuple[float, float]:
    """The range NIMA technical declares (`ModelAdapter.output`)."""
    out = registry.contract("nima_technical").output
    assert out is not None and out.lo is not None and out.hi is not None
    return float(out.lo), float(out.hi)


def quality_result(it: Ingested, settings: Settings, registry: ModelRegistry) -> S.QualityResult:
    thresholds = S.QualityThresholds(quality_min=settings.quality_min, bands=score_svc.bands_dict())
    comps, missing, raw = quality_components(it, settings, registry)
    q = score_svc.combine(comps)
    if q is None:
        return S.QualityResult(status="unavailable", band=None, is_ok=None, overall_quality=None,
                               thresholds=thresholds, missing=missing,
                               error=S.AnalysisError(type="analysis_failed", message="No quality component is available."))
    return S.QualityResult(
        status="ok", error=None, score=round(q, 4), band=score_svc.band(q), is_ok=q >= settings.quality_min,
        overall_quality=score_svc.overall_quality(q),
        brisque=round(raw["brisque"], 4) if "brisque" in raw else None,
        niqe=round(raw["niqe"], 4) if "niqe" in raw else None,
        nima_technical=round(raw["nima_technical"], 4) if "nima_technical" in raw else None,
        components=[S.QualityComponent(name=cast(QualityName, c.name), raw=round(c.raw, 4), raw_range=c.raw_range,
                                       higher_is_better=c.higher_is_better, score=round(c.score, 4), weight=c.weight)
                    for c in comps],
        missing=missing, thresholds=thresholds)


def aesthetic_result(it: Ingested) -> S.AestheticResult:
    thresholds = {f"{name}_min": lo for name, lo, _ in AESTHETIC_LABELS}
    thresholds.update({f"aesthetic_label_{name}_min": lo for name, lo in S.FESTORA_AESTHETIC_LABELS})
    nima = it.models.get("nima_aesthetic")
    laion = it.models.get("laion_aesthetic")
    laion_score = float(laion) if laion is not None and not isinstance(laion, BaseException) else None
    if isinstance(nima, BaseException) or nima is None:
        status, err = failure(nima) if nima is not None else ("unavailable", S.AnalysisError(
            type="model_unavailable", message="NIMA aesthetic did not run."))
        if laion_score is not None:
            return S.AestheticResult(status="ok", laion_score=round(laion_score, 4), error=err, thresholds=thresholds,
                                     nima_distribution=None, label=None)
        return S.AestheticResult(status=status, error=err, thresholds=thresholds, nima_distribution=None, label=None)
    mean = float(nima["mean"])
    label = next(name for name, lo, hi in AESTHETIC_LABELS if lo <= mean < hi) if mean < 11 else "excellent"
    return S.AestheticResult(status="ok", error=None, nima_score=round(mean, 4), nima_std=round(float(nima["std"]), 4),
                             nima_distribution=[round(float(p), 5) for p in nima["distribution"]], label=label,
                             laion_score=round(laion_score, 4) if laion_score is not None else None,
                             thresholds=thresholds)


def embedding_result(it: Ingested, registry: ModelRegistry) -> S.EmbeddingResult:
    value = it.models.get("clip")
    if value is None or isinstance(value, BaseException):
        status, err = outcome(value)
        return S.EmbeddingResult(status=status, error=err, vector=None)
    adapter = registry.loaded("clip")
    return S.EmbeddingResult(status="ok", error=None, model=getattr(adapter, "model_name", None), dim=int(len(value)),
                             vector=[round(float(x), 6) for x in value])


def box(b: Any) -> S.Box:
    if isinstance(b, dict):
        return S.Box(x=int(round(b["x"])), y=int(round(b["y"])), w=int(round(b["w"])), h=int(round(b["h"])))
    x, y, w, h = b
    return S.Box(x=int(round(x)), y=int(round(y)), w=int(round(w)), h=int(round(h)))


def point(p: Any) -> tuple[float, float]:
    return (float(p["x"]), float(p["y"])) if isinstance(p, dict) else (float(p[0]), float(p[1]))


def emotion_result(it: Ingested, settings: Settings) -> S.EmotionResult:
    value = it.models.get("emotion")
    detector = settings.deepface_detector if settings.emotion_model == "deepface" else "yunet"
    if value is None or isinstance(value, BaseException):
        status, err = outcome(value)
        return S.EmotionResult(status=status, error=err, detector=detector)
    faces = [S.EmotionFace(box=box(f["box"]), confidence=float(f.get("confidence", 0.0)),
                           dominant_emotion=f["dominant_emotion"],
                           emotions={k: round(float(v), 5) for k, v in f["emotions"].items()}) for f in value]
    return S.EmotionResult(status="ok", error=None, faces=faces, count=len(faces), detector=detector)


def faces_result(it: Ingested, registry: ModelRegistry) -> S.FacesResult:
    value = it.models.get("faces")
    if value is None or isinstance(value, BaseException):
        status, err = outcome(value)
        return S.FacesResult(status=status, error=err, detector="yunet")
    faces = [S.Face(box=box(f["box"]), confidence=float(f["confidence"]),
                    landmarks={k: point(p) for k, p in (f.get("landmarks") or {}).items()} or None)
             for f in value]
    adapter = registry.loaded("faces")
    thr = {"score_threshold": float(getattr(adapter, "score_threshold", 0.0))} if adapter else {}
    return S.FacesResult(status="ok", error=None, faces=faces, count=len(faces), detector="yunet", thresholds=thr)
