"""64-bit DCT perceptual hash (pHash) and Hamming-distance grouping.

`phash64` is the classic DCT hash: the grey image is shrunk to 32×32 with area
interpolation (an exact box filter, so no aliasing whatever the source size), a
2-D DCT-II is taken, and the 8×8 lowest frequencies (row-major, DC included) are
thresholded at their median: bit = coefficient > median, so (ties aside) exactly
32 of the 64 bits are set — which is why measured distances are even. The first
coefficient is the most significant bit. The DCT is scaled like the unnormalised
DCT-II (scipy.fftpack.dct's default, as imagehash.phash uses), so from the same
32×32 input the bits equal imagehash's (imagehash shrinks with Lanczos instead).

Why the DC term is kept: it is always the largest coefficient (32 × the mean
level, positive), so its bit is always 1 and costs one of the 64 bits; keeping it
keeps the common layout. Measured on the photos below, dropping it (median over
the 63 AC terms) changed no distance, while pHash.org's variant (the 8×8 block
at [1:9, 1:9], losing the lowest horizontal/vertical frequencies) made 5 % crops
and 3 % shifts cost up to 22 bits instead of 14.

Invariances that follow from the construction: a global gain (exposure ×k)
scales every coefficient by k and does not move the median threshold; an offset
only changes DC; resizing and re-encoding change mostly high frequencies, which
are not in the hash. Crops and shifts move content and do flip bits, about 2.5–3
bits per percent of the frame.

`DEFAULT_MAX_DISTANCE` = 12 bits (of 64), from measurements on real photos
(scikit-image astronaut, coffee, chelsea, rocket, motorcycle_left; hashes of the
grey copy with the longest side ≤ 1024, as `phash_image` does):

    edit of the same photo                          max distance to the original
    JPEG q95 / q70, resize 50 % / 200 %,
      exposure ×0.8 / ×1.2, Gaussian blur σ 1.5         0
    Gaussian noise σ 8                                   2
    shift 1 % / 2 % (x, y, diagonal)                     8 / 12
    crop removing ≤ 5 % of the area (2.5 % per side,
      centred or from any side or corner)                12
    crop 5 % per side (~10 % of the area), shift 3 %     14  (beyond the default)

    different photos                                 min distance
    the 5 photos above (10 pairs)                      26 (mean 32, as for random hashes)
    27 scikit-image images (351 pairs)                 20 (cell vs hubble_deep_field);
                                                       22 between natural photos
    motorcycle_left vs motorcycle_right (stereo pair)   4 (a near-duplicate indeed)

12 is the largest distance of the edits above that we call "near-exact", and
leaves 8 bits to the nearest pair of different images seen (a random pair of
balanced 64-bit hashes is within 12 bits with probability ~5e-7).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from app.neighbors.union_find import UnionFind

HASH_BITS = 64
HASH_SIZE = 8  # 8×8 low-frequency block
DCT_SIZE = 32  # image shrunk to 32×32 before the DCT
DEFAULT_MAX_DISTANCE = 12
#: Longest side of the grey copy hashed by `phash_image` (area-shrunk again to 32×32).
DEFAULT_HASH_INPUT_DIM = 1024

_UNNORM = np.ones((HASH_SIZE, HASH_SIZE), dtype=np.float32)
_UNNORM[0, :] *= np.sqrt(2)
_UNNORM[:, 0] *= np.sqrt(2)

_HAS_BITWISE_COUNT = hasattr(np, "bitwise_count")
# popcount of every byte value, for the vectorised Hamming distance without np.bitwise_count
_POPCOUNT8 = np.array([i.bit_count() for i in range(256)], dtype=np.uint8)


def phash64(gray: np.ndarray) -> int:
    """64-bit DCT perceptual hash of a grey image (H×W uint8; RGB H×W×3 is converted)."""
    arr = np.asarray(gray)
    if arr.ndim == 3 and arr.shape[2] in (3, 4):
        arr = cv2.cvtColor(np.ascontiguousarray(arr[..., :3]).astype(np.uint8, copy=False), cv2.COLOR_RGB2GRAY)
    if arr.ndim != 2:
        raise ValueError(f"phash64 needs a 2-D grey image, got shape {arr.shape}.")
    if arr.size == 0:
        raise ValueError("phash64 got an empty image.")
    if arr.dtype != np.uint8 and (not np.issubdtype(arr.dtype, np.number) or not np.isfinite(arr).all()):
        raise ValueError("phash64 needs finite numeric pixels.")
    small = cv2.resize(np.ascontiguousarray(arr).astype(np.float32), (DCT_SIZE, DCT_SIZE), interpolation=cv2.INTER_AREA)
    # cv2.dct is the orthonormal DCT-II; scaling its first row and column by √2 gives
    # the unnormalised DCT-II (up to one global factor, which the median ignores).
    coeffs = cv2.dct(small)[:HASH_SIZE, :HASH_SIZE] * _UNNORM
    coeffs = coeffs.ravel()
    bits = coeffs > np.median(coeffs)
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def phash_image(image: Any, max_dim: int = DEFAULT_HASH_INPUT_DIM) -> int:
    """pHash of a `DecodedImage`, from its shared grey copy, cached on the image."""
    return image.cached(("phash64", max_dim), lambda: phash64(image.gray_max(max_dim)))


def to_hex(h: int) -> str:
    return f"{h:016x}"


def hamming(a: int, b: int) -> int:
    """Number of differing bits between two 64-bit hashes."""
    return int(a ^ b).bit_count()


def _as_u64(hashes: Sequence[int] | np.ndarray) -> np.ndarray:
    arr = np.asarray(hashes, dtype=object) if not isinstance(hashes, np.ndarray) else hashes
    if arr.dtype == np.uint64:
        return arr.ravel()
    out = np.empty(len(arr), dtype=np.uint64)
    for i, h in enumerate(arr):
        h = int(h)
        if not 0 <= h < 1 << HASH_BITS:
            raise ValueError(f"hash {i} is not a 64-bit unsigned integer: {h}")
        out[i] = h
    return out


def hamming_matrix(hashes: Sequence[int] | np.ndarray) -> np.ndarray:
    """All pairwise Hamming distances (N×N uint8). Meant for N up to a few thousand.

    XOR of the uint64 hashes, then a popcount: numpy's `bitwise_count` ufunc
    (numpy ≥ 2; hardware popcount) or, without it, a byte lookup table. Done in
    row blocks so the temporaries stay ~32 MB (5000 hashes: ~0.1 s).
    """
    h = _as_u64(hashes)
    n = h.size
    out = np.empty((n, n), dtype=np.uint8)
    step = max(1, (4 << 20) // max(1, n))  # rows per block: step × n × 8 bytes ≈ 32 MB
    for s in range(0, n, step):
        x = h[s : s + step, None] ^ h[None, :]
        if _HAS_BITWISE_COUNT:
            np.bitwise_count(x, out=out[s : s + step])
        else:
            out[s : s + step] = _POPCOUNT8[x.view(np.uint8).reshape(*x.shape, 8)].sum(axis=2, dtype=np.uint8)
    return out


def group_by_hash(hashes: Sequence[int] | np.ndarray, max_distance: int = DEFAULT_MAX_DISTANCE) -> list[list[int]]:
    """Connected components of "Hamming distance <= max_distance" (union-find).

    Returns every component, singletons included, each sorted, ordered by its
    first member. Linking is transitive (A~B, B~C ⇒ one group), as for a burst
    whose first and last frames drifted apart.
    """
    if not 0 <= int(max_distance) <= HASH_BITS:
        raise ValueError(f"max_distance must be within 0..{HASH_BITS}, got {max_distance}.")
    h = _as_u64(hashes)
    n = h.size
    uf = UnionFind(n)
    if n > 1:
        d = hamming_matrix(h)
        ii, jj = np.nonzero(np.triu(d <= max_distance, k=1))
        for i, j in zip(ii.tolist(), jj.tolist()):
            uf.union(i, j)
    return uf.components()
