"""Real photos (scikit-image ships them) and degraded copies of them, for every test."""

from __future__ import annotations

import io
import os
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_WEIGHTS = Path(os.environ.get("LOUPE_SHARED_WEIGHTS", PROJECT_ROOT.parent / "shared" / "weights"))

PHOTO_NAMES = ("astronaut", "coffee", "chelsea", "rocket", "motorcycle_left")


@lru_cache(maxsize=None)
def _photo(name: str) -> np.ndarray:
    from skimage import data

    if name == "motorcycle_left":
        arr = data.stereo_motorcycle()[0]
    elif name == "clock_motion":
        arr = data.clock()  # a clock photographed with real motion blur
    else:
        arr = getattr(data, name)()
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    arr = arr[..., :3]
    arr.setflags(write=False)
    return arr


def photo(name: str) -> np.ndarray:
    """A real RGB uint8 photo from skimage.data (read-only array; copy before editing)."""
    return _photo(name)


def clock_motion() -> np.ndarray:
    """skimage's clock photographed with real motion blur (grey → RGB)."""
    return _photo("clock_motion")  # skimage.data.clock()


def gaussian_blur(rgb: np.ndarray, sigma: float) -> np.ndarray:
    return cv2.GaussianBlur(np.ascontiguousarray(rgb), (0, 0), sigmaX=sigma)


def motion_blur(rgb: np.ndarray, length: int) -> np.ndarray:
    kernel = np.zeros((length, length), np.float32)
    kernel[length // 2, :] = 1.0 / length
    return cv2.filter2D(np.ascontiguousarray(rgb), -1, kernel)


def add_noise(rgb: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    noisy = rgb.astype(np.float32) + rng.normal(0, sigma, rgb.shape).astype(np.float32)
    return np.clip(noisy, 0, 255).astype(np.uint8)


def jpeg_roundtrip(rgb: np.ndarray, quality: int) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(encode(rgb, "JPEG", quality=quality))).convert("RGB"))


def exposure(rgb: np.ndarray, gain: float) -> np.ndarray:
    return np.clip(rgb.astype(np.float32) * gain, 0, 255).astype(np.uint8)


def upscale(rgb: np.ndarray, width: int) -> np.ndarray:
    h, w = rgb.shape[:2]
    return cv2.resize(np.ascontiguousarray(rgb), (width, round(h * width / w)), interpolation=cv2.INTER_CUBIC)


def encode(rgb: np.ndarray, fmt: str = "JPEG", **kw) -> bytes:
    buf = io.BytesIO()
    img = Image.fromarray(np.ascontiguousarray(rgb))
    if fmt == "JPEG":
        kw.setdefault("quality", 92)
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def require_weights(subdir: str) -> Path:
    """Path of a folder in ../shared/weights, or skip the test with the reason."""
    path = SHARED_WEIGHTS / subdir
    if not path.is_dir():
        pytest.skip(f"real weights not available: {path} is missing (they live in ../shared/weights)")
    return path


def load_adapter(cls, **settings):
    """An adapter built from Settings(**settings) (no .env read) and loaded from the path it resolves,
    exactly as the registry loads it."""
    from app.core.config import Settings

    adapter = cls(Settings(_env_file=None, **settings))
    adapter.load(adapter.resolve_path(), "cpu")
    return adapter


def decoded(rgb: np.ndarray):
    """`rgb` through Loupe's own reader (as a PNG: no compression loss), as every analysis sees an image."""
    from app.imaging.decode import decode_image

    return decode_image(encode(np.ascontiguousarray(rgb), "PNG"), max_pixels=10**8)


def ramp_png(side: int, mode: str = "L") -> bytes:
    """A small PNG that decodes to side x side pixels (a left-to-right ramp compresses to a few KB):
    the shape of a decompression-amplification attack just under MAX_IMAGE_PIXELS. mode: L, I;16, RGBA."""
    ramp = np.linspace(0, 65535 if mode == "I;16" else 255, side)
    arr = (ramp[None, :] * np.ones((side, 1))).astype(np.uint16 if mode == "I;16" else np.uint8)
    if mode == "RGBA":
        arr = np.dstack([arr, arr, arr, np.full_like(arr, 200)])
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG", compress_level=9)
    return buf.getvalue()


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two (N, d) arrays."""
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(axis=1)


def read_jsonl(path: Path) -> list[dict]:
    """The CLI's JSONL output, a dict per line."""
    import json

    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def read_csv(path: Path) -> list[dict]:
    """The CLI's CSV output, a dict per row."""
    import csv

    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))
