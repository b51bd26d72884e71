"""The 0–1 quality score: one number from blur, noise, exposure, BRISQUE and NIMA technical.

Each available measurement is mapped to 0..1 (higher = better) by a monotone,
clamped function, then the mapped values are combined by a weighted geometric
mean (each value floored at 0.01 so one zero does not erase the rest). A
geometric mean is increasing in every component, and every mapping is monotone
in the direction its measurement degrades, so more blur, noise, JPEG damage or
exposure error can never raise the score through the combination itself. One
bad component pulls the score down hard (a very blurred photo cannot be "good"
because its exposure is fine), unlike an arithmetic mean.

    sharpness  = blur.sharpness_score of detail_variance (0.5 at BLUR_THRESHOLD)        weight 1.0
    (each mapping u is used as 0.01 + 0.99·u, and below 0.01 a tail past its bad end, so that two
    images both past it are still ordered: see `tailed`)
    noise      = 1 - log(σ/c)/log(16/c), clamped       (1 at σ ≤ c, 0 at ≥ 16; c from 0.5 for an image
                 with no detail to 2 for a sharp one: noise_allowance)                     weight 1.0
    blocking   = 1 - log(r/1.1)/log(3/1.1), clamped    (JPEG 8x8 grid ratio r; 1 at ≤ 1.1, 0 at ≥ 3) weight 1.0
    exposure   = exposure.exposure_score               (0.5 at each exposure threshold) weight 1.0
    brisque    = min(clamp((75 - BRISQUE) / 60), noise²) (1 at ≤ 15, 0.5 at 45, 0 at ≥ 75) weight 1.0
    nima_tech  = clamp((NIMA_koniq - lo) / (hi - lo))  (its native range, linear)        weight 1.5
    score      = exp( Σ wᵢ·ln(max(sᵢ, 0.01)) / Σ wᵢ )  over the components that ran

Bands: < 0.25 very_poor, < 0.45 poor, < 0.6 decent, < 0.85 good, else excellent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from app.models import outputs
from app.schemas.common import Band

OverallQuality = Literal["low", "medium", "high"]

BANDS: tuple[tuple[Band, float, float], ...] = (
    ("very_poor", 0.0, 0.25),
    ("poor", 0.25, 0.45),
    ("decent", 0.45, 0.6),
    ("good", 0.6, 0.85),
    ("excellent", 0.85, 1.0000001),
)

WEIGHTS = {"sharpness": 1.0, "noise": 1.0, "blocking": 1.0, "exposure": 1.0, "brisque": 1.0, "nima_technical": 1.5}
#: every mapping runs from 1 (good) down to TAIL at its "bad" end, and keeps falling past it (a tail),
#: so that two images both past the bad end are still told apart; FLOOR only guards log(0)
TAIL = 0.01
FLOOR = 1e-6
BRISQUE_GOOD, BRISQUE_BAD = 15.0, 75.0
#: noise std (grey levels, at the analysis size) that scores 1 and 0; linear in log σ between them
NOISE_CLEAN, NOISE_BAD = 2.0, 16.0
#: the clean level of an image with no detail (see `noise_allowance`)
NOISE_CLEAN_SOFT = 0.5


@dataclass(frozen=True)
class Component:
    name: str
    raw: float
    raw_range: tuple[float | None, float | None]
    higher_is_better: bool
    score: float
    weight: float


def clamp01(x: float) -> float:
    return 0.0 if x != x else min(1.0, max(0.0, x))  # NaN → 0


def tailed(unit: float, beyond: float) -> float:
    """A 0..1 mapping made strictly monotone at its bad end: `unit` > 0 maps to TAIL..1, and `unit` == 0
    to TAIL · `beyond`, where `beyond` (1 at the bad end, falling past it) says how far past it is."""
    if unit > 0:
        return TAIL + (1.0 - TAIL) * unit
    return max(FLOOR, TAIL * min(1.0, beyond))


def brisque_to_unit(brisque: float) -> float:
    """1 at ≤ 15, about 0.5 at 45, TAIL at 75 and falling beyond (as (75 / BRISQUE)⁴)."""
    unit = clamp01((BRISQUE_BAD - brisque) / (BRISQUE_BAD - BRISQUE_GOOD))
    return tailed(unit, (BRISQUE_BAD / brisque) ** 4 if brisque > BRISQUE_BAD else 1.0)


def noise_allowance(detail: float, threshold: float) -> float:
    """The σ that still scores as clean, from 0.5 (no detail) to 2 (sharp: sharpness_score 1).

    Clean sharp photos read σ 1–2 because fine texture leaks into the noise operator; clean soft
    photos read 0.2–0.5. Texture that leaks into σ also shows in the (noise-compensated) Laplacian
    variance, so an image without detail has none to excuse its reading: there σ above 0.5 is noise.
    Without this, noise of std 10 added to a large soft photo (σ ≈ 1.5 at the analysis size) went
    unpenalised while BRISQUE, which reads grain on a soft image as restored detail, rose."""
    from app.services.blur import sharpness_score

    return NOISE_CLEAN_SOFT + (NOISE_CLEAN - NOISE_CLEAN_SOFT) * sharpness_score(detail, threshold)


def brisque_component(brisque: float, noise_sigma: float, clean: float = NOISE_CLEAN) -> float:
    """The BRISQUE term, never above the noise term: the LIVE-trained model rates mild noise on a soft
    photo as *more* natural (on skimage's soft photos its term rises from 0.1–0.4 to 0.8–0.9 with noise
    of std 10), so on a noisy image it counts for less than the noise term: capped by the noise term
    itself, noise still paid for itself there (0.44 · 0.44 > 0.13 on soft coffee with noise of std
    10); capped by its square it no longer does. A clean image (σ ≤ `clean`) is not affected."""
    return min(brisque_to_unit(brisque), noise_to_unit(noise_sigma, clean) ** 2)


def noise_to_unit(sigma: float, clean: float = NOISE_CLEAN) -> float:
    """1 at σ ≤ `clean` grey levels (what clean photos read: 2 for sharp ones, whose fine texture passes
    for noise of std 1–2, less for soft ones: `noise_allowance`), TAIL at 16 and falling beyond (as
    (16 / σ)²); linear in log σ in between (about 0.5 at 5.7 for clean = 2)."""
    if sigma <= clean:
        return 1.0
    unit = clamp01(1.0 - math.log(sigma / clean) / math.log(NOISE_BAD / clean))
    return tailed(unit, (NOISE_BAD / sigma) ** 2)


def sharpness_to_unit(detail: float, threshold: float) -> float:
    """blur.sharpness_score (0 at threshold/4, 0.5 at the threshold, 1 from 4x) as TAIL..1. No tail below
    threshold/4: there the noise-compensated detail is a small difference of two large numbers, and a
    tail would rank very soft photos by its noise."""
    from app.services.blur import sharpness_score

    return tailed(sharpness_score(detail, threshold), 1.0)


def range_to_unit(value: float, lo: float, hi: float) -> float:
    """Linear over [lo, hi], as TAIL..1 (NIMA technical)."""
    return tailed(clamp01((value - lo) / (hi - lo)), 1.0)


def sharpness_term(detail: float, threshold: float) -> Component:
    return Component("sharpness", detail, (0.0, None), True, sharpness_to_unit(detail, threshold), WEIGHTS["sharpness"])


def noise_term(sigma: float, clean: float = NOISE_CLEAN) -> Component:
    return Component("noise", sigma, (0.0, None), False, noise_to_unit(sigma, clean), WEIGHTS["noise"])


def exposure_term(exposure_score: float) -> Component:
    return Component("exposure", exposure_score, (0.0, 1.0), True, exposure_score, WEIGHTS["exposure"])


def brisque_term(brisque: float, noise_sigma: float, clean: float = NOISE_CLEAN) -> Component:
    return Component("brisque", brisque, outputs.BRISQUE.range, False, brisque_component(brisque, noise_sigma, clean),
                     WEIGHTS["brisque"])


def combine(components: list[Component]) -> float | None:
    total = sum(c.weight for c in components)
    if not components or total <= 0:
        return None
    log_sum = sum(c.weight * math.log(max(c.score, FLOOR)) for c in components)
    return clamp01(math.exp(log_sum / total))


def band(score: float) -> Band:
    for name, lo, hi in BANDS:
        if lo <= score < hi:
            return name
    return "excellent" if score >= 1 else "very_poor"


def overall_quality(score: float) -> OverallQuality:
    """festora's coarse label: low / medium / high."""
    if score < 0.45:
        return "low"
    if score < 0.6:
        return "medium"
    return "high"


def bands_dict() -> dict[str, tuple[float, float]]:
    return {name: (lo, min(hi, 1.0)) for name, lo, hi in BANDS}
