"""Equal terms for the members of a photo-set group: their common content at a common size.

Each member is aligned to the largest (ORB features and a RANSAC similarity fit; phase correlation
of edge maps for featureless images), cropped to the field of view they all share, and brought to
the group's smallest common size; sharpness, noise and exposure are measured again there. Detail
per pixel rises when an image is shrunk, and a crop that cuts away flat or dark margins gains detail
and brightness per pixel, so measured on their own frames either would beat its source. Members
that cannot be aligned are compared on whole frames (and the group's reason says so).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from app.core.config import Settings
from app.imaging.decode import DecodedImage, resize_max
from app.services import blur as blur_svc
from app.services import exposure as exp_svc
from app.services.orchestrator import Ingested


def decoded(it: Ingested) -> DecodedImage:
    """The image of an item that was read (only those are grouped and ranked)."""
    assert it.image is not None, f"image {it.image_id} was not read"
    return it.image


@dataclass
class EqualTerms:
    """What the members of a group are compared on: their common content at a common size."""

    size: int  # longest side every member's copy was brought to
    aligned: bool  # True: the common field of view was found; False: whole frames were compared
    details: list[float]  # noise-compensated Laplacian variance of each member's copy
    noise: list[float]  # noise_sigma of each member's copy
    exposure: list[float]  # exposure_score of each member's copy
    brightness: list[float]  # mean grey level (0..255) of each member's copy
    views: list[np.ndarray]  # each member's grey copy as compared (common content, common size)


#: ORB + RANSAC similarity: fewest inlier matches, and the scale range, for a member to count as aligned
MIN_INLIERS = 12
SCALE_RANGE = (0.2, 5.0)


def align_to(ref: np.ndarray, img: np.ndarray) -> tuple[float, float, float] | None:
    """(scale, tx, ty) mapping `img`'s pixels onto `ref`'s (x_ref = scale·x + tx), from ORB features and a
    RANSAC similarity fit; None when the two cannot be aligned (too few features, or a rotation)."""
    orb = cv2.ORB.create(1500)
    k1, d1 = orb.detectAndCompute(ref, None)
    k2, d2 = orb.detectAndCompute(img, None)
    if d1 is None or d2 is None or len(k1) < MIN_INLIERS or len(k2) < MIN_INLIERS:
        return None
    matches = cv2.BFMatcher(cv2.NORM_HAMMING, crossCheck=True).match(d2, d1)
    if len(matches) < MIN_INLIERS:
        return None
    src = np.array([k2[m.queryIdx].pt for m in matches], dtype=np.float32)
    dst = np.array([k1[m.trainIdx].pt for m in matches], dtype=np.float32)
    M, inliers = cv2.estimateAffinePartial2D(src, dst, method=cv2.RANSAC, ransacReprojThreshold=3.0)
    if M is None or int(inliers.sum()) < MIN_INLIERS:
        return None
    scale = float(np.hypot(M[0, 0], M[1, 0]))
    if abs(M[1, 0]) > 0.02 * scale or not SCALE_RANGE[0] <= scale <= SCALE_RANGE[1]:
        return None
    return scale, float(M[0, 2]), float(M[1, 2])


def align_by_correlation(ref: np.ndarray, img: np.ndarray) -> tuple[float, float, float] | None:
    """(scale, tx, ty) for images without enough features (flat synthetic graphics): the two scales a
    near-duplicate usually has — the same (a crop) or the size ratio (a resized copy) — each tried with
    phase correlation of edge maps; None unless one gives a clear peak."""
    best = None
    for scale in {1.0, round(ref.shape[1] / img.shape[1], 4)}:
        if scale <= 0 or not SCALE_RANGE[0] <= scale <= SCALE_RANGE[1]:
            continue
        moved = cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
        h, w = min(ref.shape[0], moved.shape[0]), min(ref.shape[1], moved.shape[1])
        canvas = np.zeros(ref.shape[:2], np.float32)
        canvas[:h, :w] = cv2.Laplacian(moved[:h, :w], cv2.CV_32F)
        (dx, dy), response = cv2.phaseCorrelate(cv2.Laplacian(ref, cv2.CV_32F), canvas)
        if response >= 0.2 and (best is None or response > best[0]):
            best = (response, scale, -dx, -dy)
    return None if best is None else (best[1], best[2], best[3])


def common_content(grays: list[np.ndarray]) -> list[np.ndarray] | None:
    """Each grey image cropped to the field of view all of them share (found by aligning each to the
    largest); None when one of them cannot be aligned or the shared part is too small."""
    ref_k = max(range(len(grays)), key=lambda k: grays[k].size)
    ref = grays[ref_k]
    transforms = []
    for k, g in enumerate(grays):
        t = (1.0, 0.0, 0.0) if k == ref_k else (align_to(ref, g) or align_by_correlation(ref, g))
        if t is None:
            return None
        transforms.append(t)
    x0 = max(tx for s, tx, ty in transforms) + 2
    y0 = max(ty for s, tx, ty in transforms) + 2
    x1 = min(s * g.shape[1] + tx for (s, tx, ty), g in zip(transforms, grays)) - 2
    y1 = min(s * g.shape[0] + ty for (s, tx, ty), g in zip(transforms, grays)) - 2
    if x1 - x0 < 0.5 * ref.shape[1] or y1 - y0 < 0.5 * ref.shape[0]:
        return None
    crops = []
    for (s, tx, ty), g in zip(transforms, grays):
        a, b = int(np.ceil((x0 - tx) / s)), int(np.floor((x1 - tx) / s))
        c, d = int(np.ceil((y0 - ty) / s)), int(np.floor((y1 - ty) / s))
        crops.append(g[max(0, c):min(g.shape[0], d), max(0, a):min(g.shape[1], b)])
    return crops


def equal_terms(items: list[Ingested], settings: Settings) -> EqualTerms:
    """Every member brought to the group's common content (when the members can be aligned; else the
    whole frames) and then to the smallest common size; sharpness, noise and exposure measured there."""
    grays = [decoded(it).gray_max(settings.analysis_max_dim) for it in items]
    crops = common_content(grays)
    views = crops if crops is not None else grays
    size = min(max(v.shape[:2]) for v in views)
    details, noise, exposure, brightness, kept = [], [], [], [], []
    for v in views:
        small = np.ascontiguousarray(resize_max(v, size))
        kept.append(small)
        sigma, noise_var = blur_svc.noise_measures(small)
        details.append(blur_svc.noise_compensated_variance(blur_svc.laplacian_variance(small), noise_var))
        noise.append(sigma)
        stats = exp_svc.exposure_stats(small)
        exposure.append(exp_svc.exposure_score_for(stats, settings))
        brightness.append(stats.mean_brightness)
    return EqualTerms(size=size, aligned=crops is not None, details=details, noise=noise, exposure=exposure,
                      brightness=brightness, views=kept)
