"""Exposure: mean brightness and the share of clipped shadows and highlights of the grey image.

Mean and contrast come from every pixel; clipped shares and percentiles from an area-averaged
copy (longest side REGION_DIM), i.e. from regions rather than single noisy pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

#: grey levels at or below / at or above which a pixel counts as clipped
SHADOW_LEVEL = 8
HIGHLIGHT_LEVEL = 247


@dataclass(frozen=True)
class ExposureStats:
    mean_brightness: float  # 0..255
    contrast: float  # standard deviation of grey levels, 0..127.5
    shadow_clip_fraction: float  # 0..1
    highlight_clip_fraction: float  # 0..1
    p05: float
    p95: float


#: clipping and percentiles are measured on a copy area-averaged to this longest side, so they
#: count crushed/blown *regions*: sensor noise scatters single pixels across the clip levels and
#: would otherwise make a noisier copy look better exposed
REGION_DIM = 256


def _histogram(gray: np.ndarray) -> np.ndarray:
    return cv2.calcHist([gray], [0], None, [256], [0, 256]).ravel().astype(np.float64)


def exposure_stats(gray: np.ndarray) -> ExposureStats:
    from app.imaging.decode import resize_max

    levels = np.arange(256, dtype=np.float64)
    hist = _histogram(gray)
    n = hist.sum()
    mean = float((hist * levels).sum() / n)
    var = float((hist * (levels - mean) ** 2).sum() / n)
    small = resize_max(gray, REGION_DIM)
    region_hist = hist if small is gray else _histogram(small)
    cdf = np.cumsum(region_hist) / region_hist.sum()
    return ExposureStats(
        mean_brightness=mean,
        contrast=var ** 0.5,
        shadow_clip_fraction=float(cdf[SHADOW_LEVEL]),
        highlight_clip_fraction=float(1.0 - cdf[HIGHLIGHT_LEVEL - 1]),
        p05=float(np.searchsorted(cdf, 0.05)),
        p95=float(np.searchsorted(cdf, 0.95)),
    )


def is_underexposed(s: ExposureStats, bright_min: float, shadow_clip_max: float) -> bool:
    return s.mean_brightness < bright_min or s.shadow_clip_fraction > shadow_clip_max


def is_overexposed(s: ExposureStats, bright_max: float, highlight_clip_max: float) -> bool:
    return s.mean_brightness > bright_max or s.highlight_clip_fraction > highlight_clip_max


def _ramp(x: float, x0: float, x1: float) -> float:
    """0 at x0, 1 at x1, linear between, clamped (x0 < x1)."""
    return min(1.0, max(0.0, (x - x0) / (x1 - x0))) if x1 > x0 else float(x >= x1)


def exposure_score(s: ExposureStats, bright_min: float, bright_max: float,
                   shadow_clip_max: float, highlight_clip_max: float) -> float:
    """0..1, higher = better exposed; 0.5 exactly at each threshold, like the blur score.

    Brightness: 0 at black, 0.5 at BRIGHT_MIN, 1 from 1.5 x BRIGHT_MIN; mirrored at
    the top (0.5 at BRIGHT_MAX, 0 at white). Clipping: 1 up to half its limit, 0.5
    at the limit, 0 at 1.5 x the limit. The three multiply, so any one defect is enough.
    """
    lo = 0.5 * _ramp(s.mean_brightness, 0.0, bright_min) + 0.5 * _ramp(s.mean_brightness, bright_min, 1.5 * bright_min)
    top_margin = 255.0 - bright_max
    hi = 0.5 * _ramp(255.0 - s.mean_brightness, 0.0, top_margin) + 0.5 * _ramp(255.0 - s.mean_brightness, top_margin, 1.5 * top_margin)
    band = min(lo, hi)

    def clip_term(frac: float, limit: float) -> float:
        return 1.0 - _ramp(frac, limit / 2.0, 1.5 * limit) if limit > 0 else float(frac == 0)

    score = band * clip_term(s.shadow_clip_fraction, shadow_clip_max) * clip_term(s.highlight_clip_fraction, highlight_clip_max)
    return float(min(1.0, max(0.0, score)))


def exposure_score_for(st: ExposureStats, settings) -> float:
    """`exposure_score` with the thresholds from the settings (BRIGHT_MIN/MAX, SHADOW/HIGHLIGHT_CLIP_MAX)."""
    return exposure_score(st, settings.bright_min, settings.bright_max, settings.shadow_clip_max,
                          settings.highlight_clip_max)
