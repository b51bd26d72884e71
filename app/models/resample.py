"""torchvision's antialiased resize of uint8 images, exactly, in numpy (no torch): one port for every
preprocessing that needs it (CLIP, DINOv2, BLIP), checked pixel for pixel against torchvision in
tests/unit/test_onnx_clip.py and tests/unit/test_onnx_dinov2_emotion.py.

Resample codes are PIL's (0 nearest, 2 bilinear, 3 bicubic), as the processors' configs give them.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

import numpy as np

NEAREST, BILINEAR, BICUBIC = 0, 2, 3


def _keys_filter(x: np.ndarray) -> np.ndarray:
    """torch's antialiased bicubic filter (Keys, a = -0.5: Pillow's, not the -0.75 of plain bicubic)."""
    a = -0.5
    x = np.abs(x)
    return np.where(x < 1.0, ((a + 2.0) * x - (a + 3.0)) * x * x + 1,
                    np.where(x < 2.0, (((x - 5) * x + 8) * x - 4) * a, 0.0))


def _triangle_filter(x: np.ndarray) -> np.ndarray:
    x = np.abs(x)
    return np.where(x < 1.0, 1.0 - x, 0.0)


#: PIL resampling code → (filter, half-width in source pixels at scale 1)
_AA_FILTERS = {2: (_triangle_filter, 1.0), 3: (_keys_filter, 2.0)}


@lru_cache(maxsize=256)
def _aa_matrix(in_size: int, out_size: int, resample: int) -> tuple[Any, int]:
    """torch's uint8 antialiased resampling along one axis, as a sparse (out, in) matrix of int16-range integer
    weights and their fixed-point precision (aten UpSampleKernel.cpp, `_compute_index_ranges_int16_weights`).

    Each output pixel i has float64 weights filter((j - centre + 0.5) / scale) over the source pixels within
    the filter's support around centre = scale * (i + 0.5), normalised to sum 1 (summed in source order,
    as torch does). They become integers w * 2**p rounded half away from zero, with the largest p <= 22
    that keeps the largest weight under 2**14 (one precision for the whole axis).
    """
    import scipy.sparse

    filt, half = _AA_FILTERS[resample]
    scale = in_size / out_size
    support = half * scale if scale >= 1.0 else half
    invscale = 1.0 / scale if scale >= 1.0 else 1.0
    taps = int(math.ceil(support)) * 2 + 1
    centre = scale * (np.arange(out_size, dtype=np.float64) + 0.5)
    # int64 casts truncate toward zero, as static_cast does (then clamped to the image)
    xmin = np.maximum(np.trunc(centre - support + 0.5), 0).astype(np.int64)
    xsize = np.clip(np.minimum(np.trunc(centre + support + 0.5).astype(np.int64), in_size) - xmin, 0, taps)
    j = np.arange(taps)
    w = filt((j[None, :] + xmin[:, None] - centre[:, None] + 0.5) * invscale)
    w[j[None, :] >= xsize[:, None]] = 0.0
    total = np.zeros(out_size)
    for k in range(taps):  # sequential sum, in torch's order
        total += w[:, k]
    w = np.divide(w, total[:, None], out=w, where=total[:, None] != 0.0)
    wt_max = float(w.max())
    precision = 0
    while precision < 22 and int(0.5 + wt_max * (1 << (precision + 1))) < (1 << 15):
        precision += 1
    v = w * (1 << precision)
    weights = np.where(v < 0, np.trunc(v - 0.5), np.trunc(v + 0.5)).astype(np.int32)
    cols = np.minimum(xmin[:, None] + j[None, :], in_size - 1)  # past xsize the weight is 0
    matrix = scipy.sparse.csr_matrix((weights.ravel(), cols.ravel(), np.arange(0, out_size * taps + 1, taps)),
                                     shape=(out_size, in_size))
    matrix.sum_duplicates()
    return matrix, precision


def _resample_rows(src: np.ndarray, out_size: int, resample: int, window: tuple[int, int] | None = None) -> np.ndarray:
    """(in, ...) uint8 → (out_size, ...) uint8 along the first axis: torch's integer kernel, Σ src·w plus half
    an LSB, shifted right by the precision (floor), clamped to 0..255. Integer arithmetic in int32 is exact:
    |Σ| <= 255 · 1.2 · 2**22 < 2**31. `window` (start, count): only those outputs (each depends on its own
    weights alone, so a crop of the result is computed without the rest)."""
    matrix, precision = _aa_matrix(src.shape[0], out_size, resample)
    start, count = window if window is not None else (0, out_size)
    if window is not None:
        matrix = matrix[start:start + count]
    acc = matrix @ src.reshape(src.shape[0], -1).astype(np.int32)
    acc += 1 << (precision - 1)
    np.right_shift(acc, precision, out=acc)
    return np.clip(acc, 0, 255).astype(np.uint8).reshape((count, *src.shape[1:]))


def _nearest_index(in_size: int, out_size: int) -> np.ndarray:
    """torch's `nearest` source index: floor(i * (in / out)) in float32, capped at the last pixel."""
    if out_size == in_size:
        return np.arange(out_size)
    if out_size == 2 * in_size:
        return np.arange(out_size) >> 1
    scale = np.float32(in_size) / np.float32(out_size)
    return np.minimum(np.floor(np.arange(out_size, dtype=np.float32) * scale).astype(np.int64), in_size - 1)


def resize_uint8(rgb: np.ndarray, hw: tuple[int, int], resample: int,
                 box: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """torchvision's `resize(uint8 image, hw, antialias=True)` on CPU, exactly, in numpy.

    Bicubic and bilinear are torch's native uint8 kernels (bicubic always, bilinear on AVX2/AVX512/arm64
    CPUs: every server this runs on): one separable pass per changed axis, width first, each rounded to
    uint8, with the integer weights of `_aa_matrix`. Nearest is torch's `interpolate(mode="nearest")` (no
    antialias). `box` (top, left, height, width): only that part of the result (a centre crop), computed
    without the rest. tests/unit/test_onnx_dinov2_emotion.py checks it pixel for pixel against torchvision.
    """
    import cv2

    h, w = hw
    top, left, bh, bw = box if box is not None else (0, 0, h, w)
    if resample == 0:
        rows = _nearest_index(rgb.shape[0], h)[top:top + bh]
        return rgb[rows][:, _nearest_index(rgb.shape[1], w)[left:left + bw]]
    out = np.ascontiguousarray(rgb)
    if out.shape[1] != w:  # columns become rows and back (OpenCV transposes 3-byte pixels 5x faster than numpy)
        out = cv2.transpose(_resample_rows(cv2.transpose(out), w, resample, (left, bw)))
    else:
        out = out[:, left:left + bw]
    if out.shape[0] != h:
        out = _resample_rows(np.ascontiguousarray(out), h, resample, (top, bh))
    else:
        out = out[top:top + bh]
    return np.ascontiguousarray(out)
