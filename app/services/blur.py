"""Sharpness: variance of the Laplacian of a grey image at a fixed analysis size.

The image is first scaled so its longest side is ANALYSIS_MAX_DIM (never
upscaled), so a 12 MP upload and its 1080p copy score alike. Higher variance =
more high-frequency detail = sharper; below BLUR_THRESHOLD the image is blurry.
"""

from __future__ import annotations

import math

import cv2
import numpy as np


def laplacian_variance(gray: np.ndarray) -> float:
    """Variance of the 3x3 Laplacian (OpenCV's ksize=1 kernel) of a uint8 grey image."""
    lap = cv2.Laplacian(gray, cv2.CV_32F, ksize=1)
    _, std = cv2.meanStdDev(lap)
    return float(std[0, 0]) ** 2


#: Immerkaer's noise operator; its response to white noise of std σ has std 6σ (Σ m² = 36)
_NOISE_KERNEL = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float32)
#: Σ k² of the 3x3 Laplacian above: white noise of std σ adds 20σ² to its variance
LAPLACIAN_NOISE_GAIN = 20.0


def noise_sigma(gray: np.ndarray) -> float:
    """Robust estimate of the std of additive noise (grey levels): Immerkaer's operator with a
    median (MAD) instead of the mean, so edges and texture barely count. An image with fewer
    than 3 rows or columns has no interior to measure: 0 (no noise that can be told from detail)."""
    if min(gray.shape[:2]) < 3:
        return 0.0
    r = cv2.filter2D(gray, cv2.CV_32F, _NOISE_KERNEL, borderType=cv2.BORDER_REFLECT)[1:-1, 1:-1]
    return float(np.median(np.abs(r))) / (0.6745 * 6.0)


def noise_compensated_variance(variance: float, sigma: float) -> float:
    """Laplacian variance minus what noise of std `sigma` contributes (20σ²): detail, not grain.

    Noise raises the raw variance (a noisy blurred photo can look sharp); the quality score
    uses this one so that adding noise never buys a better sharpness component."""
    return max(variance - LAPLACIAN_NOISE_GAIN * sigma * sigma, 1e-6)


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
