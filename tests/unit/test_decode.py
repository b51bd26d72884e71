"""Decoding real photos and hostile files."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from app.core.errors import ImageTooLarge, InvalidImage, UnsupportedMediaType
from app.imaging.decode import decode_image, sniff_format
from app.services.blur import laplacian_variance
from tests.helpers import encode, photo, upscale

MAXPIX = 60_000_000


def png_with_header_size(width: int, height: int) -> bytes:
    """A real small PNG whose IHDR claims another size (a decompression-bomb header)."""
    data = bytearray(encode(np.zeros((8, 8, 3), np.uint8), "PNG"))
    ihdr = 8 + 8  # signature + length/type
    data[ihdr : ihdr + 8] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[12 : 12 + 4 + 13])) & 0xFFFFFFFF
    data[12 + 4 + 13 : 12 + 4 + 13 + 4] = struct.pack(">I", crc)
    return bytes(data)


def test_real_jpeg_decodes_to_rgb_with_sha():
    raw = encode(photo("astronaut"))
    img = decode_image(raw, max_pixels=MAXPIX)
    assert (img.width, img.height, img.format) == (512, 512, "JPEG")
    assert img.pixels.shape == (512, 512, 3) and img.pixels.dtype == np.uint8
    import hashlib

    assert img.sha256 == hashlib.sha256(raw).hexdigest()
    # decoded pixels are the photo (JPEG q92 error is small)
    assert np.abs(img.pixels.astype(int) - photo("astronaut").astype(int)).mean() < 4


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "BMP", "TIFF", "GIF"])
def test_other_formats_are_sniffed_from_bytes(fmt):
    raw = encode(photo("coffee"), fmt)
    assert sniff_format(raw) == fmt
    img = decode_image(raw, max_pixels=MAXPIX)
    assert img.format == fmt and (img.width, img.height) == (600, 400)


def test_zero_bytes_is_invalid():
    with pytest.raises(InvalidImage, match="empty"):
        decode_image(b"", max_pixels=MAXPIX)


def test_text_named_jpg_is_unsupported():
    with pytest.raises(UnsupportedMediaType):
        decode_image(b"hello, I am a text file pretending to be photo.jpg\n" * 10, max_pixels=MAXPIX)


def test_truncated_jpeg_is_invalid():
    raw = encode(photo("chelsea"))
    with pytest.raises(InvalidImage) as exc:
        decode_image(raw[: len(raw) // 2], max_pixels=MAXPIX)
    assert exc.value.status_code == 400


def test_corrupt_png_is_invalid():
    raw = bytearray(encode(photo("rocket"), "PNG"))
    raw[200:400] = b"\x00" * 200
    with pytest.raises(InvalidImage):
        decode_image(bytes(raw), max_pixels=MAXPIX)


def test_bomb_header_is_refused_before_decoding():
    bomb = png_with_header_size(100_000, 100_000)
    with pytest.raises(ImageTooLarge) as exc:
        decode_image(bomb, max_pixels=MAXPIX)
    assert exc.value.status_code == 413
    assert exc.value.detail["width_px"] == 100_000


def test_huge_dimensions_over_pixel_limit():
    big = encode(upscale(photo("coffee"), 3000))  # 3000 x 2000 = 6 MP
    with pytest.raises(ImageTooLarge):
        decode_image(big, max_pixels=5_000_000)
    assert decode_image(big, max_pixels=6_000_000).width == 3000


def test_cmyk_jpeg_becomes_rgb():
    rgb = photo("coffee")
    buf = io.BytesIO()
    Image.fromarray(rgb).convert("CMYK").save(buf, "JPEG", quality=95)
    img = decode_image(buf.getvalue(), max_pixels=MAXPIX)
    assert img.pixels.shape == (400, 600, 3)
    assert np.abs(img.pixels.astype(int) - rgb.astype(int)).mean() < 12


def test_16bit_png_is_scaled_to_8bit():
    gray8 = np.asarray(Image.fromarray(photo("camera") if False else photo("coffee")).convert("L"))
    gray16 = gray8.astype(np.uint16) * 257
    buf = io.BytesIO()
    Image.fromarray(gray16).save(buf, "PNG")
    assert Image.open(io.BytesIO(buf.getvalue())).mode.startswith("I")
    img = decode_image(buf.getvalue(), max_pixels=MAXPIX)
    assert img.pixels.dtype == np.uint8
    assert np.abs(img.pixels[..., 0].astype(int) - gray8.astype(int)).max() <= 1


def test_palette_and_alpha_are_composited_on_white():
    rgba = np.zeros((40, 40, 4), np.uint8)
    rgba[..., 0] = 255  # red, fully transparent on the left half
    rgba[:, 20:, 3] = 255
    img = decode_image(encode(rgba, "PNG"), max_pixels=MAXPIX)
    assert tuple(img.pixels[5, 5]) == (255, 255, 255)
    assert tuple(img.pixels[5, 30]) == (255, 0, 0)
    pal = Image.fromarray(photo("chelsea")).convert("P", palette=Image.ADAPTIVE, colors=64)
    buf = io.BytesIO()
    pal.save(buf, "PNG")
    assert decode_image(buf.getvalue(), max_pixels=MAXPIX).pixels.shape == (300, 451, 3)


def test_animated_gif_gives_first_frame():
    frames = [Image.fromarray(np.full((32, 48, 3), v, np.uint8)) for v in (10, 200, 90)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    img = decode_image(buf.getvalue(), max_pixels=MAXPIX)
    assert img.frames == 3
    assert abs(int(img.pixels.mean()) - 10) <= 2


def test_exif_orientation_is_applied():
    rgb = photo("coffee")  # 600 wide, 400 high
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=95, exif=exif.tobytes())
    img = decode_image(buf.getvalue(), max_pixels=MAXPIX)
    assert (img.width, img.height) == (400, 600)
    assert img.pixels.shape == (600, 400, 3)
    expected = np.rot90(rgb, k=-1)
    assert np.abs(img.pixels.astype(int) - expected.astype(int)).mean() < 5


def test_reduced_jpeg_decode_keeps_scores_and_saves_pixels():
    big = encode(upscale(photo("motorcycle_left"), 4000), quality=95)
    full = decode_image(big, max_pixels=MAXPIX)
    reduced = decode_image(big, max_pixels=MAXPIX, min_dim=1024)
    assert (reduced.width, reduced.height) == (full.width, full.height)  # original size is reported
    assert 1024 <= max(reduced.pixels.shape[:2]) < 4000  # libjpeg decoded at 1/2 scale or less
    a = laplacian_variance(full.gray_max(1024))
    b = laplacian_variance(reduced.gray_max(1024))
    assert abs(a - b) / a < 0.1


def test_gray_decode_matches_rgb_then_gray():
    raw = encode(photo("astronaut"))
    rgb = decode_image(raw, max_pixels=MAXPIX)
    gray = decode_image(raw, max_pixels=MAXPIX, gray=True)
    assert gray.is_gray and gray.pixels.shape == (512, 512)
    assert np.abs(gray.gray_max(1024).astype(int) - rgb.gray_max(1024).astype(int)).mean() < 1.5
    assert gray.rgb_max(256).shape == (256, 256, 3)
