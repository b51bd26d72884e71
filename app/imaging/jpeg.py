"""JPEG quality from the file's quantisation tables (no pixels needed).

libjpeg (IJG), and most encoders after it, scale the two example tables of the JPEG standard
(ITU-T T.81, Annex K, tables K.1 and K.2) by a factor S from the quality setting q:
S = 5000 / q for q < 50, else 200 - 2q, and entry = clamp((base * S + 50) // 100, 1, 255).
The estimate is the q whose scaled tables are closest to the file's (least absolute difference
over the luminance table, and the chrominance table when present). For files written by
libjpeg/Pillow/ImageMagick it is the setting used; for a camera's own tables it is the IJG quality
that quantises as coarsely, which is what matters when two copies of one shot are compared.
"""

from __future__ import annotations

import numpy as np

# ITU-T T.81 Annex K, K.1 (luminance) and K.2 (chrominance), in natural (row-major) order,
# the order Pillow's `Image.quantization` gives them in.
_LUMA = np.array([
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99], np.int64)
_CHROMA = np.array([
    17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99,
    24, 26, 56, 99, 99, 99, 99, 99, 47, 66, 99, 99, 99, 99, 99, 99] + [99] * 32, np.int64)


def scaled_table(base: np.ndarray, quality: int) -> np.ndarray:
    s = 5000 // quality if quality < 50 else 200 - 2 * quality
    return np.clip((base * s + 50) // 100, 1, 255)


_QUALITIES = np.arange(1, 101)
#: every quality's scaled tables, one row each (100 x 64): the estimate is one vectorised comparison
_LUMA_TABLES = np.stack([scaled_table(_LUMA, int(q)) for q in _QUALITIES])
_CHROMA_TABLES = np.stack([scaled_table(_CHROMA, int(q)) for q in _QUALITIES])


def estimate_quality(tables: dict[int, list[int]] | None) -> int | None:
    """The IJG quality (1–100) closest to a JPEG's quantisation tables (ties: the higher quality); None
    without tables."""
    if not tables or 0 not in tables or len(tables[0]) != 64:
        return None
    distance = np.abs(_LUMA_TABLES - np.asarray(tables[0], np.int64)).sum(axis=1)
    if len(tables.get(1, ())) == 64:
        distance = distance + np.abs(_CHROMA_TABLES - np.asarray(tables[1], np.int64)).sum(axis=1)
    best = np.flatnonzero(distance == distance.min())
    return int(_QUALITIES[best[-1]])
