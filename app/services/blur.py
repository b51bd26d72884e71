"""Sharpness: variance of the Laplacian of a grey image at a fixed analysis size.

The image is first scaled so its longest side is ANALYSIS_MAX_DIM (never
upscaled), so a 12 MP upload and its 1080p copy score alike. Higher variance =
more high-frequency detail = sharper; below BLUR_THRESHOLD the image is blurry.
"""

from __future__ import annotations

import math

import cv2
import numpy as np


def laplacian_variance(gray: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Variance of the 3x3 Laplacian (OpenCV's ksize=1 kernel) of a uint8 grey image (over `mask`
    only, when given: e.g. JPEG block interiors, see app.services.compression)."""
    lap = cv2.Laplacian(gray, cv2.CV_32F, ksize=1)
    _, std = cv2.meanStdDev(lap, mask=None if mask is None else mask.astype(np.uint8))
    return float(std[0, 0]) ** 2


#: Immerkaer's noise operator; its response to white noise of std σ has std 6σ (Σ m² = 36)
_NOISE_KERNEL = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float32)
_MAD_TO_STD = 1.0 / 0.6745  # std of a zero-mean Gaussian = median(|x|) / 0.6745
_CROSS = np.ones((3, 3), np.uint8)


def _unclipped(gray: np.ndarray) -> np.ndarray:
    """Interior pixels whose 3x3 neighbourhood holds no 0 or 255: clipping squeezes the noise there."""
    lo = cv2.erode(gray, _CROSS)
    hi = cv2.dilate(gray, _CROSS)
    return ((lo > 0) & (hi < 255))[1:-1, 1:-1]


def _robust_std(response: np.ndarray, keep: np.ndarray, upper: bool = False) -> float:
    """MAD-based std of `response` over the unclipped pixels (all of them when too few are left).

    The median is taken over every other row and column once there are enough pixels: a quarter
    million samples pin it to a fraction of a percent, at a quarter of the cost. `upper`: the
    response is integer-valued (a 3x3 integer kernel on uint8 pixels), so its median m only says the
    underlying one lies within m ± 0.5; return the top of that interval (the largest std the
    measurement allows) instead of its middle."""
    if response.size > 1 << 18:
        response, keep = response[::2, ::2], keep[::2, ::2]
    values = np.abs(response[keep]) if keep.mean() >= 0.05 else np.abs(response)
    return (float(np.median(values)) + (0.5 if upper else 0.0)) * _MAD_TO_STD


def noise_measures(gray: np.ndarray, mask: np.ndarray | None = None) -> tuple[float, float]:
    """(noise_sigma, laplacian_noise_variance) with the clipped-pixel mask computed once."""
    if min(gray.shape[:2]) < 3:
        return 0.0, 0.0
    unclipped = _unclipped(gray)
    return noise_sigma(gray, unclipped), laplacian_noise_variance(gray, mask, unclipped)


def noise_sigma(gray: np.ndarray, unclipped: np.ndarray | None = None) -> float:
    """Std of additive noise in grey levels, at the scale of `gray`.

    Immerkaer's operator (a difference of two Laplacians, blind to edges and to linear and
    quadratic shading) with a median (MAD) instead of a mean, so that texture and edges, a minority
    of pixels, barely move it; pixels next to clipped black or white are left out, where clipping
    hides noise. Measured on skimage's photos with Gaussian noise of std 2–50 added at this scale:
    within ±20 % for 96 % of (photo, std) pairs of soft photos (scripts/bench.py noise). An image
    with fewer than 3 rows or columns has no interior to measure: 0."""
    if min(gray.shape[:2]) < 3:
        return 0.0
    r = cv2.filter2D(gray, cv2.CV_32F, _NOISE_KERNEL, borderType=cv2.BORDER_REFLECT)[1:-1, 1:-1]
    return _robust_std(r, _unclipped(gray) if unclipped is None else unclipped) / 6.0


def laplacian_noise_variance(gray: np.ndarray, mask: np.ndarray | None = None,
                             unclipped: np.ndarray | None = None) -> float:
    """What noise adds to `laplacian_variance(gray)`, measured on the Laplacian itself: the square of
    its robust (MAD) std over the unclipped pixels.

    Edges and texture make the Laplacian's tails, which carry its variance; the bulk of its values,
    which the median sees, is noise. For white noise of std σ this is 20σ² (the kernel's Σk²), but
    noise that a resize made spatially correlated (any photo larger than ANALYSIS_MAX_DIM) feeds the
    Laplacian differently than 20σ² says, so a correction from σ alone under-compensates and lets
    grain pass for detail.

    The Laplacian of uint8 pixels is integer-valued, so its median m is known only to ±0.5: this
    returns the top of that interval, the largest noise share the measurement allows. On a soft photo
    with noise, detail is a small difference of two large numbers (e.g. 918 − 879 for noise of std 10,
    where a median of 20 ± 0.5 spans 836–924), and taking the middle credited that rounding to the
    photo as detail: adding noise raised its sharpness. What remains is detail the measurement can
    tell from grain. `mask`: only these pixels (as in laplacian_variance). 0 for images with fewer
    than 3 rows or columns."""
    if min(gray.shape[:2]) < 3:
        return 0.0
    lap = cv2.Laplacian(gray, cv2.CV_32F, ksize=1)[1:-1, 1:-1]
    keep = _unclipped(gray) if unclipped is None else unclipped
    if mask is not None:
        keep = keep & mask[1:-1, 1:-1]
    return _robust_std(lap, keep, upper=True) ** 2


def noise_compensated_variance(variance: float, noise_variance: float) -> float:
    """Laplacian variance minus what noise contributes to it (`laplacian_noise_variance`): detail, not grain.

    Noise raises the raw variance (a noisy blurred photo can look sharp); the quality score
    uses this one so that adding noise never buys a better sharpness component."""
    return max(variance - noise_variance, 1e-6)


def is_blurry(variance: float, threshold: float) -> bool:
    return variance < threshold


def sharpness_score(variance: float, threshold: float) -> float:
    """0..1, higher = sharper: linear in log10(variance), 0 at threshold/4, 0.5 at the
    threshold, 1 at 4x the threshold and above (saturates, so that noise, which also
    raises the Laplacian's variance, cannot buy a sharp photo a better score)."""
    if threshold <= 0:
        return 1.0
    if variance <= 0:
        return 0.0
    x = (math.log10(variance) - math.log10(threshold / 4.0)) / math.log10(16.0)
    return float(min(1.0, max(0.0, x)))
