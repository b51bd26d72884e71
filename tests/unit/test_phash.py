"""pHash on real photos: edits stay within the default distance, different photos do not."""

from __future__ import annotations

import itertools

import cv2
import numpy as np
import pytest
import scipy.fftpack

from app.imaging.decode import decode_image
from app.services.phash import (
    DEFAULT_MAX_DISTANCE,
    group_by_hash,
    hamming,
    hamming_matrix,
    phash64,
    phash_image,
    to_hex,
)
from tests.helpers import PHOTO_NAMES, encode, exposure, jpeg_roundtrip, photo

MAX_PIXELS = 50_000_000


def _hash(rgb: np.ndarray, fmt: str = "PNG") -> int:
    """Hash through the service's own path: encoded bytes → decode → grey copy → pHash."""
    return phash_image(decode_image(encode(rgb, fmt), max_pixels=MAX_PIXELS))


def _resize(rgb: np.ndarray, factor: float) -> np.ndarray:
    h, w = rgb.shape[:2]
    interp = cv2.INTER_AREA if factor < 1 else cv2.INTER_CUBIC
    return cv2.resize(np.ascontiguousarray(rgb), (round(w * factor), round(h * factor)), interpolation=interp)


def _crop(rgb: np.ndarray, frac: float, where: str) -> np.ndarray:
    """Cut `frac` of the height and of the width, centred or from one side/corner."""
    h, w = rgb.shape[:2]
    dh, dw = round(h * frac), round(w * frac)
    return {
        "centre": rgb[dh // 2 : h - (dh - dh // 2), dw // 2 : w - (dw - dw // 2)],
        "top-left": rgb[dh:, dw:],
        "bottom-right": rgb[: h - dh, : w - dw],
        "top": rgb[dh:, :],
        "left": rgb[:, dw:],
    }[where]


def _shift(rgb: np.ndarray, fx: float, fy: float) -> np.ndarray:
    h, w = rgb.shape[:2]
    m = np.float32([[1, 0, fx * w], [0, 1, fy * h]])
    return cv2.warpAffine(np.ascontiguousarray(rgb), m, (w, h), borderMode=cv2.BORDER_REPLICATE)


# 2.5 % of the height and width ≈ 5 % of the area.
EDITS = {
    "jpeg_q95": lambda x: jpeg_roundtrip(x, 95),
    "jpeg_q70": lambda x: jpeg_roundtrip(x, 70),
    "resize_50": lambda x: _resize(x, 0.5),
    "resize_200": lambda x: _resize(x, 2.0),
    "brighter_20": lambda x: exposure(x, 1.2),
    "darker_20": lambda x: exposure(x, 0.8),
    **{f"crop5area_{w}": (lambda x, w=w: _crop(x, 0.025, w)) for w in ("centre", "top-left", "bottom-right", "top", "left")},
    **{f"shift2_{k}": (lambda x, v=v: _shift(x, *v)) for k, v in
       {"right": (0.02, 0), "left": (-0.02, 0), "down": (0, 0.02), "up": (0, -0.02), "diag": (0.02, 0.02)}.items()},
}


@pytest.fixture(scope="module")
def originals() -> dict[str, int]:
    return {name: _hash(photo(name)) for name in PHOTO_NAMES}


@pytest.mark.parametrize("edit", sorted(EDITS))
def test_edits_stay_within_default_distance(originals, edit):
    for name in PHOTO_NAMES:
        edited = EDITS[edit](photo(name))
        d = hamming(originals[name], _hash(edited))
        assert d <= DEFAULT_MAX_DISTANCE, f"{name} {edit}: {d} bits"


def test_resave_and_exposure_are_almost_free(originals):
    for name in PHOTO_NAMES:
        for edit in ("jpeg_q95", "jpeg_q70", "resize_50", "resize_200", "brighter_20", "darker_20"):
            assert hamming(originals[name], _hash(EDITS[edit](photo(name)), "JPEG")) <= 4, (name, edit)


def test_different_photos_are_far_apart(originals):
    dists = {(a, b): hamming(originals[a], originals[b]) for a, b in itertools.combinations(PHOTO_NAMES, 2)}
    assert min(dists.values()) > DEFAULT_MAX_DISTANCE + 8, dists  # measured minimum: 26


def test_groups_of_real_bursts():
    names = list(PHOTO_NAMES)
    hashes, truth = [], []
    for k, name in enumerate(names):
        for edit in ("jpeg_q70", "resize_50", "crop5area_top-left", "shift2_diag", "darker_20"):
            hashes.append(_hash(EDITS[edit](photo(name))))
            truth.append(k)
        hashes.append(_hash(photo(name)))
        truth.append(k)
    order = np.random.default_rng(0).permutation(len(hashes))
    groups = group_by_hash([hashes[i] for i in order])
    got = sorted(sorted(truth[order[i]] for i in g) for g in groups)
    assert got == [[k] * 6 for k in range(len(names))]


def test_matches_textbook_formula():
    """Same bits as the unnormalised DCT-II (scipy.fftpack) on the 32×32 area-shrunk image."""
    for name in PHOTO_NAMES:
        gray = cv2.cvtColor(np.ascontiguousarray(photo(name)), cv2.COLOR_RGB2GRAY)
        small = cv2.resize(gray.astype(np.float32), (32, 32), interpolation=cv2.INTER_AREA).astype(np.float64)
        low = scipy.fftpack.dct(scipy.fftpack.dct(small, axis=0), axis=1)[:8, :8].ravel()
        want = int("".join("1" if b else "0" for b in low > np.median(low)), 2)
        h = phash64(gray)
        assert h == want
        assert 0 <= h < 2**64 and h >> 63 == 1  # the DC bit is always set
        assert h.bit_count() == 32
        assert len(to_hex(h)) == 16


def test_rgb_input_and_determinism():
    rgb = np.ascontiguousarray(photo("coffee"))
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    assert phash64(rgb) == phash64(gray) == phash64(gray.copy())


@pytest.mark.parametrize("bad", [np.zeros((0, 5), np.uint8), np.zeros(10, np.uint8), np.zeros((4, 4, 2), np.uint8)])
def test_invalid_images(bad):
    with pytest.raises(ValueError):
        phash64(bad)


@pytest.mark.parametrize("hardware_popcount", [True, False])
def test_hamming_and_matrix(monkeypatch, hardware_popcount):
    import app.services.phash as phash_module

    monkeypatch.setattr(phash_module, "_HAS_BITWISE_COUNT", hardware_popcount and hasattr(np, "bitwise_count"))
    assert hamming(0, 0) == 0
    assert hamming(0, 2**64 - 1) == 64
    assert hamming(0b1011, 0b0001) == 2
    rng = np.random.default_rng(0)
    hashes = [int(x) for x in rng.integers(0, 2**63, 700, dtype=np.uint64) * 2 + rng.integers(0, 2, 700, dtype=np.uint64)]
    hashes[:3] = [0, 2**64 - 1, 2**63]
    m = hamming_matrix(hashes)
    assert m.shape == (700, 700) and m.dtype == np.uint8
    assert np.array_equal(m, m.T) and not m.diagonal().any()
    for i, j in rng.integers(0, 700, (300, 2)):
        assert m[i, j] == hamming(hashes[i], hashes[j])
    assert m[0, 1] == 64 and m[0, 2] == 1
    assert np.array_equal(hamming_matrix(np.array(hashes, dtype=np.uint64)), m)


def test_group_by_hash_is_transitive_and_keeps_singletons():
    a = 0
    b = a ^ 0b111  # 3 bits from a
    c = b ^ (0b111 << 8)  # 3 from b, 6 from a
    far = 2**64 - 1
    assert group_by_hash([c, far, a, b], max_distance=3) == [[0, 2, 3], [1]]
    assert group_by_hash([c, far, a, b], max_distance=2) == [[0], [1], [2], [3]]
    assert group_by_hash([], 5) == []
    assert group_by_hash([7], 5) == [[0]]
    with pytest.raises(ValueError):
        group_by_hash([1, 2], max_distance=65)
    with pytest.raises(ValueError):
        group_by_hash([-1, 2])
    with pytest.raises(ValueError):
        hamming_matrix([2**64])
