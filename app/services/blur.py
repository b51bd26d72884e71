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
