"""HEIC, AVIF and camera RAW through Loupe's reader, on real files made from real photos
(tests/factories/formats.py: pillow-heif, Pillow's AVIF encoder, and DNGs of a photo's Bayer mosaic)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from app.core.errors import ImageTooLarge, InvalidImage, UnsupportedMediaType
from app.imaging.decode import decode_image, probe
from app.imaging.formats import may_be_raw, sniff_format
from tests.factories.formats import (
    avif_bytes,
    claim_size_dng,
    claim_size_heic,
    displayed,
    dng_bytes,
    heic_bytes,
)
from tests.helpers import encode, photo

MAX_PIXELS = 60_000_000


def read(data: bytes, **kw):
    return decode_image(data, max_pixels=kw.pop("max_pixels", MAX_PIXELS), **kw)


def gray(rgb: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(rgb).convert("L"), dtype=np.float64)


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson r of two grey images, the second resized to the first's size."""
    if a.shape != b.shape:
        b = np.asarray(Image.fromarray(b.astype(np.uint8)).resize((a.shape[1], a.shape[0]), Image.Resampling.BOX),
                       dtype=np.float64)
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
@pytest.mark.parametrize("fmt", ["HEIF", "AVIF"])
def test_heic_and_avif_are_read_upright(fmt, orientation):
    rgb = photo("chelsea")  # 451 x 300: not square, so a missed rotation shows in the size
    data = (heic_bytes if fmt == "HEIF" else avif_bytes)(rgb, orientation=orientation)
    assert sniff_format(data) == fmt
    img = read(data)
    want = displayed(rgb, orientation)
    assert (img.height, img.width) == want.shape[:2] and img.pixels.shape == want.shape
    assert img.format == fmt and img.decoded_from is None
    assert np.abs(img.pixels.astype(int) - want).mean() < 4


def test_ten_and_twelve_bit_heic_become_8_bit_rgb():
    rgb = photo("coffee")
    for depth in (10, 12):
        data = heic_bytes(rgb, bit_depth=depth)
        assert Image.open(__import__("io").BytesIO(data)).info["bit_depth"] == depth
        img = read(data)
        assert img.pixels.dtype == np.uint8 and np.abs(img.pixels.astype(int) - rgb).mean() < 4


def test_alpha_is_composited_on_white_and_the_primary_image_is_read():
    rgb = photo("astronaut")
    alpha = np.full(rgb.shape[:2], 255, np.uint8)
    alpha[:, : rgb.shape[1] // 2] = 0  # the left half transparent
    for data in (heic_bytes(rgb, alpha=alpha), avif_bytes(rgb, alpha=alpha)):
        px = read(data).pixels
        assert px[:, : rgb.shape[1] // 2 - 8].mean() > 250  # white where transparent
        assert np.abs(px[:, rgb.shape[1] // 2 + 8:].astype(int) - rgb[:, rgb.shape[1] // 2 + 8:]).mean() < 5
    many = heic_bytes(rgb, extra_images=2)
    assert np.abs(read(many).pixels.astype(int) - rgb).mean() < 4
    animated = avif_bytes(rgb, frames=3)
    img = read(animated)
    assert img.frames == 3 and np.abs(img.pixels.astype(int) - rgb).mean() < 5


def test_a_large_heic_is_reduced_and_its_cost_known_from_the_header():
    rgb = np.asarray(Image.fromarray(photo("coffee")).resize((2400, 1600)))
    data = heic_bytes(rgb, quality=80)
    plan = probe(data, max_pixels=MAX_PIXELS, min_dim=512)
    assert (plan.width, plan.height) == (2400, 1600) and plan.cost_bytes >= 2400 * 1600 * 4
    img = read(data, min_dim=512)
    assert (img.width, img.height) == (2400, 1600) and 512 <= max(img.pixels.shape) < 1200


@pytest.mark.parametrize("orientation", [1, 6])
def test_a_dng_without_preview_is_demosaiced_at_half_size(orientation):
    rgb = photo("astronaut")
    data = dng_bytes(rgb, bits=12, orientation=orientation)
    assert sniff_format(data) == "DNG" and may_be_raw(data[:64])
    img = read(data, min_dim=1024)
    want = displayed(rgb, orientation)
    assert img.format == "DNG" and img.decoded_from == "raw_demosaic"
    assert (img.height, img.width) == want.shape[:2]
    assert img.pixels.shape[:2] == (want.shape[0] // 2, want.shape[1] // 2)  # half size: one pixel per Bayer block
    assert correlation(gray(img.pixels), gray(want)) > 0.95
    assert img.jpeg_quality is None


def test_a_dng_preview_is_used_when_it_is_large_enough():
    rgb = photo("coffee")  # 600 x 400
    preview = np.asarray(Image.fromarray(rgb).resize((300, 200)))
    data = dng_bytes(rgb, preview=preview)
    small_need = read(data, min_dim=256)
    assert small_need.decoded_from == "raw_preview" and small_need.pixels.shape == (200, 300, 3)
    assert (small_need.width, small_need.height) == (600, 400)  # the photo's size, not the preview's
    assert correlation(gray(small_need.pixels), gray(rgb)) > 0.95
    big_need = read(data, min_dim=512)  # the preview is smaller than the analyses need: demosaic
    assert big_need.decoded_from == "raw_demosaic" and big_need.pixels.shape == (200, 300, 3)
    full = read(data)  # no size asked: the preview must reach half the sensor, as a demosaic would
    assert full.decoded_from == "raw_preview"


def test_the_raw_orientation_turns_a_preview_that_has_none():
    rgb = photo("coffee")
    preview = np.asarray(Image.fromarray(rgb).resize((300, 200)))
    img = read(dng_bytes(rgb, preview=preview, orientation=6), min_dim=256)
    assert img.decoded_from == "raw_preview" and img.pixels.shape == (300, 200, 3)
    assert (img.width, img.height) == (400, 600)
    assert correlation(gray(img.pixels), gray(displayed(rgb, 6))) > 0.95


def test_an_underexposed_raw_stays_underexposed():
    """No auto-brightening in the demosaic: a shot two stops under reads darker than the correct one."""
    rgb = photo("coffee")
    normal = read(dng_bytes(rgb)).pixels.mean()
    dark = read(dng_bytes((rgb.astype(np.float32) * 0.25).astype(np.uint8))).pixels.mean()
    assert dark < 0.6 * normal


def test_bad_files_get_the_right_4xx():
    rgb = photo("chelsea")
    heic, avif, dng = heic_bytes(rgb), avif_bytes(rgb), dng_bytes(rgb)
    for data in (heic[: len(heic) // 2], avif[: len(avif) // 2], dng[: len(dng) // 3]):
        with pytest.raises(InvalidImage):
            read(data)
    with pytest.raises(ImageTooLarge):  # a HEIC bomb: the header claims 20000 x 20000
        probe(claim_size_heic(heic, 20000, 20000), max_pixels=MAX_PIXELS)
    with pytest.raises(ImageTooLarge):
        read(claim_size_heic(heic, 20000, 20000))
    with pytest.raises(ImageTooLarge):  # a RAW whose header claims 30000 x 30000: refused before unpacking
        read(claim_size_dng(dng, 30000, 30000))
    with pytest.raises(InvalidImage):  # beyond what LibRaw accepts at all
        read(claim_size_dng(dng, 70000, 70000))
    with pytest.raises(UnsupportedMediaType):  # a "RAW" that is text
        read(b"this is not a NEF file, only its name says so" * 10)
    # a JPEG under a RAW name is just a JPEG: names are never looked at
    assert read(encode(rgb)).format == "JPEG"


def test_a_plain_tiff_is_still_a_tiff():
    rgb = photo("coffee")
    data = encode(rgb, "TIFF")
    assert sniff_format(data) == "TIFF" and may_be_raw(data[:64])
    img = read(data)
    assert img.format == "TIFF" and img.decoded_from is None and np.array_equal(img.pixels, rgb)
