"""The quality gate: one pass/fail for an upload, from blur, brightness and size, with its thresholds."""

from __future__ import annotations

import time

from app.core.config import Settings
from app.imaging.decode import DecodedImage
from app.schemas.analysis import QualityGateResponse
from app.services import blur as blur_svc
from app.services import exposure as exp_svc


def quality_gate(image: DecodedImage, settings: Settings, image_id: str | None = None,
                 started: float | None = None) -> QualityGateResponse:
    """`started`: time.perf_counter() when the request began; processing_time_ms then covers
    reading, decoding and this gate (0 when not given)."""
    gray = image.gray_max(settings.analysis_max_dim)
    var = blur_svc.laplacian_variance(gray)
    stats = exp_svc.exposure_stats(gray)
    blurry = blur_svc.is_blurry(var, settings.blur_threshold)
    under = exp_svc.is_underexposed(stats, settings.bright_min, settings.shadow_clip_max)
    over = exp_svc.is_overexposed(stats, settings.bright_max, settings.highlight_clip_max)
    small = min(image.width, image.height) < settings.min_side_px
    reasons = []
    if blurry:
        reasons.append(f"blurry: Laplacian variance {var:.1f} < BLUR_THRESHOLD {settings.blur_threshold:g}")
    if under:
        reasons.append(f"underexposed: mean brightness {stats.mean_brightness:.1f} < BRIGHT_MIN {settings.bright_min:g} "
                       f"or crushed shadows {stats.shadow_clip_fraction:.3f} > SHADOW_CLIP_MAX {settings.shadow_clip_max:g}")
    if over:
        reasons.append(f"overexposed: mean brightness {stats.mean_brightness:.1f} > BRIGHT_MAX {settings.bright_max:g} "
                       f"or blown highlights {stats.highlight_clip_fraction:.3f} > HIGHLIGHT_CLIP_MAX {settings.highlight_clip_max:g}")
    if small:
        reasons.append(f"too small: shorter side {min(image.width, image.height)} px < MIN_SIDE_PX {settings.min_side_px}")
    return QualityGateResponse(
        image_id=image_id, blur_score=round(var, 4), brightness=round(stats.mean_brightness, 3),
        width=image.width, height=image.height, is_blurry=blurry, is_underexposed=under, is_overexposed=over,
        is_too_small=small, is_ok=not reasons, reasons=reasons,
        thresholds={"blur_threshold": settings.blur_threshold, "bright_min": settings.bright_min,
                    "bright_max": settings.bright_max, "shadow_clip_max": settings.shadow_clip_max,
                    "highlight_clip_max": settings.highlight_clip_max, "min_side_px": settings.min_side_px,
                    "analysis_max_dim": settings.analysis_max_dim,
                    "shadow_level": exp_svc.SHADOW_LEVEL, "highlight_level": exp_svc.HIGHLIGHT_LEVEL},
        processing_time_ms=round((time.perf_counter() - started) * 1000, 3) if started is not None else 0.0)
