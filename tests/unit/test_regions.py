"""Crops and face boxes map between original pixels and a reduced decode without drifting."""

from __future__ import annotations

import cv2
import numpy as np

from app.imaging.decode import DecodedImage
from app.tasks.regions import ImageRegions, crop_image, shift_faces
from tests.helpers import photo


def reduced(rgb: np.ndarray, factor: int) -> DecodedImage:
    """A decode at 1/factor of the original size, as a reduced JPEG decode gives."""
    small = cv2.resize(rgb, (rgb.shape[1] // factor, rgb.shape[0] // factor), interpolation=cv2.INTER_AREA)
    return DecodedImage(pixels=small, width=rgb.shape[1], height=rgb.shape[0], sha256="", format="JPEG", n_bytes=0)


def test_a_crop_of_a_reduced_decode_shows_the_same_content_as_the_original_crop():
    rgb = photo("astronaut")
    box = (179, 60, 271, 176)
    crop = crop_image(reduced(rgb, 2), box)
    assert (crop.width, crop.height) == (92, 116)  # original pixels
    h, w = crop.pixels.shape[:2]
    assert abs(h - 58) <= 1 and abs(w - 46) <= 1  # half, as the decode (cut outwards to whole pixels)
    want = cv2.resize(rgb[60:176, 179:271], (w, h), interpolation=cv2.INTER_AREA).astype(float)
    assert np.abs(crop.pixels.astype(float) - want).mean() < 8  # the same face, not a shifted one
    shifted = cv2.resize(rgb[60:176, 199:291], (w, h), interpolation=cv2.INTER_AREA).astype(float)
    assert np.abs(crop.pixels.astype(float) - shifted).mean() > np.abs(crop.pixels.astype(float) - want).mean()


def test_faces_found_in_a_context_crop_land_in_whole_image_pixels():
    faces = [{"box": {"x": 10, "y": 20, "w": 30, "h": 40}, "confidence": 0.9},
             {"box": {"x": 400, "y": 5, "w": 50, "h": 50}, "confidence": 0.8},
             {"box": {"x": 450, "y": 5, "w": 50, "h": 50}, "confidence": 0.7}]
    out = shift_faces(faces, (100, 200), (520, 600))
    assert out[0] == {"box": (110, 220, 140, 260), "confidence": 0.9}
    assert out[1]["box"] == (500, 205, 520, 255)  # clipped to the image
    assert len(out) == 2  # a face wholly outside the image is dropped


def test_crops_are_made_once_and_the_whole_image_is_not_copied():
    img = reduced(photo("coffee"), 1)
    reg = ImageRegions(img)
    assert reg.crop(reg.whole) is img
    box = (10, 20, 200, 150)
    assert reg.crop(box) is reg.crop(box)
