"""The HEIC/AVIF/DNG factories write what they claim, checked with the third-party readers.

Only pillow_heif/libheif, Pillow (its AVIF plugin), LibRaw through rawpy and tifffile
read the files here; none of Loupe's code is involved.
"""

from __future__ import annotations

import io
import struct
from functools import cache

import numpy as np
import pillow_heif
import pytest
import rawpy
import tifffile
from PIL import Image, ImageOps, UnidentifiedImageError

from tests.factories.formats import (
    LIBRAW_FLIP,
    avif_bytes,
    avif_frame,
    bayer_mosaic,
    claim_size_dng,
    claim_size_heic,
    displayed,
    dng_bytes,
    heic_bytes,
    ispe_sizes,
)
from tests.helpers import photo

pillow_heif.register_heif_opener()  # as the service does (app/imaging/decode.py)

ORIENTATIONS = (1, 3, 6, 8)


def mae(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean())


def boxes_in(data: bytes) -> set[bytes]:
    """The 4-character box types named anywhere in a BMFF file (cheap, for presence checks)."""
    return {bytes(t) for t in (b"irot", b"imir", b"clap", b"ispe", b"auxC", b"hvcC", b"av1C") if t in data}


@cache
def coffee() -> np.ndarray:
    return photo("coffee")  # 400 x 600, even sides


@cache
def heic(**kw) -> bytes:
    return heic_bytes(coffee(), **kw)


def _alpha(shape) -> np.ndarray:
    h, w = shape[:2]
    return np.ascontiguousarray(np.tile(np.linspace(0, 255, w).astype(np.uint8), (h, 1)))


# ----------------------------------------------------------------------------- displayed


@pytest.mark.parametrize("orientation", range(1, 9))
def test_displayed_matches_pillow_exif_transpose(orientation):
    rgb = photo("chelsea")[:40, :70]
    img = Image.fromarray(np.ascontiguousarray(rgb))
    img.getexif()[0x0112] = orientation
    want = np.asarray(ImageOps.exif_transpose(img))
    assert np.array_equal(displayed(rgb, orientation), want)


def test_displayed_by_hand():
    a = np.arange(6).reshape(2, 3)  # [[0 1 2] [3 4 5]]
    assert displayed(a, 1).tolist() == [[0, 1, 2], [3, 4, 5]]
    assert displayed(a, 2).tolist() == [[2, 1, 0], [5, 4, 3]]
    assert displayed(a, 3).tolist() == [[5, 4, 3], [2, 1, 0]]
    assert displayed(a, 4).tolist() == [[3, 4, 5], [0, 1, 2]]
    assert displayed(a, 5).tolist() == [[0, 3], [1, 4], [2, 5]]
    assert displayed(a, 6).tolist() == [[3, 0], [4, 1], [5, 2]]  # 90° clockwise
    assert displayed(a, 7).tolist() == [[5, 2], [4, 1], [3, 0]]
    assert displayed(a, 8).tolist() == [[2, 5], [1, 4], [0, 3]]  # 90° counter-clockwise
    with pytest.raises(ValueError):
        displayed(a, 9)


# ----------------------------------------------------------------------------- HEIC


def test_heic_is_an_8bit_hevc_heic():
    data = heic()
    assert data[4:12] == b"ftypheic"
    assert {b"hvcC", b"ispe"} <= boxes_in(data) and b"irot" not in data
    img = Image.open(io.BytesIO(data))
    assert img.format == "HEIF" and img.mode == "RGB" and img.size == (600, 400)
    assert img.info["bit_depth"] == 8 and img.n_frames == 1
    assert mae(np.asarray(img), coffee()) < 3
    assert ispe_sizes(data) == [(600, 400)]


@pytest.mark.parametrize("orientation", ORIENTATIONS)
def test_heic_orientation_is_shown_as_displayed(orientation):
    rgb = coffee()
    data = heic(orientation=orientation)
    assert (b"irot" in data) == (orientation != 1)  # 3, 6, 8 are rotations: no imir
    assert b"imir" not in data
    assert ispe_sizes(data) == [(600, 400)]  # the coded size is the stored one
    img = Image.open(io.BytesIO(data))
    # libheif has applied irot; pillow_heif resets EXIF Orientation to 1 and keeps the original aside
    assert img.getexif().get(0x0112) == 1
    assert img.info["original_orientation"] == (None if orientation == 1 else orientation)
    shown = np.asarray(ImageOps.exif_transpose(img))
    assert mae(shown, displayed(rgb, orientation)) < 3
    if orientation == 3:
        assert mae(shown, rgb) > 20  # the check can tell orientations apart
    # the file itself keeps Orientation in its EXIF, like an iPhone's
    stored = Image.Exif()
    stored.load(pillow_heif.open_heif(io.BytesIO(data)).info["exif"])
    assert stored[0x0112] == orientation


@pytest.mark.parametrize("bit_depth", [10, 12])
def test_heic_high_bit_depth(bit_depth):
    data = heic(bit_depth=bit_depth)
    img = Image.open(io.BytesIO(data))
    assert img.info["bit_depth"] == bit_depth and img.mode == "RGB"
    assert mae(np.asarray(img), coffee()) < 3
    hdr = pillow_heif.open_heif(io.BytesIO(data), convert_hdr_to_8bit=False)
    assert hdr.mode == "RGB;16" and hdr.info["bit_depth"] == bit_depth
    wide = np.asarray(hdr)
    assert wide.dtype == np.uint16
    assert mae(wide / 257.0, coffee()) < 3
    assert len(np.unique(wide[..., 1])) > 256  # really more than 8 bits of levels


def test_heic_with_alpha_and_orientation():
    rgb, alpha = coffee(), _alpha(coffee().shape)
    data = heic_bytes(rgb, alpha=alpha, orientation=6)
    assert b"auxC" in data
    img = Image.open(io.BytesIO(data))
    assert img.mode == "RGBA" and img.size == (400, 600)
    got = np.asarray(img)
    assert mae(got[..., 3], displayed(alpha, 6)) < 2
    assert mae(got[..., :3], displayed(rgb, 6)) < 3


def test_heic_extra_images_come_after_the_primary():
    rgb = coffee()
    data = heic(extra_images=2)
    heif = pillow_heif.open_heif(io.BytesIO(data))
    assert len(heif) == 3 and heif.primary_index == 0
    assert [im.info["primary"] for im in heif] == [True, False, False]
    img = Image.open(io.BytesIO(data))
    assert img.n_frames == 3 and img.size == (600, 400)
    assert mae(np.asarray(img), rgb) < 3
    half = rgb[::2, ::2]
    for k in (1, 2):
        img.seek(k)
        assert img.size == (300, 200)
        want = np.roll(half[::-1], k * 300 // 8, axis=1)
        assert mae(np.asarray(img), want) < 4
        assert mae(np.asarray(img), half) > 20


def test_claim_size_heic_even_size():
    data = claim_size_heic(heic(), 10_000, 8_000)
    assert ispe_sizes(data) == [(10_000, 8_000)]
    img = Image.open(io.BytesIO(data))
    assert img.size == (10_000, 8_000)
    with pytest.raises(ValueError, match="does not have the size signaled"):
        img.load()
    # rotated by irot: the claimed coded size is reported turned
    rotated = Image.open(io.BytesIO(claim_size_heic(heic(orientation=6), 10_000, 8_000)))
    assert rotated.size == (8_000, 10_000)


def test_claim_size_heic_odd_size_with_clap_alpha_and_extra_images():
    rgb = photo("chelsea")  # 300 x 451: x265 codes 452 wide, libheif adds a clap crop
    data = heic_bytes(rgb, alpha=_alpha(rgb.shape), extra_images=1)
    assert b"clap" in data and (452, 300) in ispe_sizes(data)
    assert Image.open(io.BytesIO(data)).size == (451, 300)
    bomb = claim_size_heic(data, 12_345, 6_789)
    assert set(ispe_sizes(bomb)) == {(12_345, 6_789)}
    img = Image.open(io.BytesIO(bomb))
    assert img.size == (12_345, 6_789) and img.mode == "RGBA"
    with pytest.raises(ValueError):
        img.load()


def test_claim_size_heic_beyond_the_limits(monkeypatch):
    data = heic()
    # Pillow's own decompression-bomb check fires in Image.open above 2 * MAX_IMAGE_PIXELS (its default here:
    # Loupe's reader switches it off and checks MAX_IMAGE_PIXELS itself)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 89_478_485)
    with pytest.raises(Image.DecompressionBombError):
        Image.open(io.BytesIO(claim_size_heic(data, 20_000, 10_000)))
    # libheif parses the header and only refuses at decode (security limit: 1 << 30 pixels)
    heif = pillow_heif.open_heif(io.BytesIO(claim_size_heic(data, 40_000, 40_000)))
    assert heif.size == (40_000, 40_000)
    with pytest.raises(RuntimeError, match="Security limit"):
        heif[0].load()
    # 2**31 and more wraps to a (0, 0) image that Pillow then cannot identify
    assert pillow_heif.open_heif(io.BytesIO(claim_size_heic(data, 2**31, 2**31))).size == (0, 0)
    with pytest.raises(UnidentifiedImageError):
        Image.open(io.BytesIO(claim_size_heic(data, 2**31, 2**31)))


# ----------------------------------------------------------------------------- AVIF


def test_avif_is_a_still_avif():
    data = avif_bytes(coffee())
    assert data[4:12] == b"ftypavif" and b"av1C" in data and b"irot" not in data
    img = Image.open(io.BytesIO(data))
    assert img.format == "AVIF" and img.mode == "RGB" and img.size == (600, 400)
    assert img.n_frames == 1 and not img.is_animated
    assert "exif" not in img.info  # orientation 1 alone: no EXIF item at all
    assert mae(np.asarray(img), coffee()) < 4


@pytest.mark.parametrize("orientation", ORIENTATIONS)
def test_avif_orientation(orientation):
    rgb = coffee()
    data = avif_bytes(rgb, orientation=orientation)
    assert (b"irot" in data) == (orientation != 1) and b"imir" not in data
    assert b"Exif" not in data  # Pillow moved Orientation out of EXIF into irot, leaving none
    img = Image.open(io.BytesIO(data))
    assert img.size == (600, 400)  # Pillow does not rotate AVIF pixels ...
    assert mae(np.asarray(img), rgb) < 4
    assert img.getexif().get(0x0112) == (None if orientation == 1 else orientation)  # ... it reports irot as EXIF
    shown = np.asarray(ImageOps.exif_transpose(img))
    assert mae(shown, displayed(rgb, orientation)) < 4


def test_avif_mirror_orientation_uses_imir():
    data = avif_bytes(coffee(), orientation=2)
    assert b"imir" in data and b"irot" not in data
    img = Image.open(io.BytesIO(data))
    assert img.getexif()[0x0112] == 2
    assert mae(np.asarray(ImageOps.exif_transpose(img)), displayed(coffee(), 2)) < 4


def test_avif_alpha():
    rgb, alpha = coffee(), _alpha(coffee().shape)
    img = Image.open(io.BytesIO(avif_bytes(rgb, alpha=alpha, orientation=8)))
    assert img.mode == "RGBA"
    shown = np.asarray(ImageOps.exif_transpose(img))
    assert mae(shown[..., 3], displayed(alpha, 8)) < 2
    assert mae(shown[..., :3], displayed(rgb, 8)) < 4


def test_avif_animation():
    rgb = coffee()
    data = avif_bytes(rgb, frames=3)
    assert data[4:12] == b"ftypavis"
    img = Image.open(io.BytesIO(data))
    assert img.format == "AVIF" and img.is_animated and img.n_frames == 3
    assert mae(np.asarray(img), rgb) < 4  # the first frame is what Image.open shows
    for i in (1, 2):
        img.seek(i)
        assert mae(np.asarray(img), avif_frame(rgb, i, 3)) < 4
        assert mae(np.asarray(img), rgb) > 10
    with pytest.raises(ValueError):
        avif_bytes(rgb, frames=2, orientation=6)  # Pillow 13 segfaults on this


def test_claim_size_avif():
    data = avif_bytes(coffee())
    bomb = claim_size_heic(data, 1_200, 800)
    assert ispe_sizes(bomb) == [(1_200, 800)]
    img = Image.open(io.BytesIO(bomb))
    assert img.size == (1_200, 800)
    img.load()  # libavif scales the 600 x 400 frame up to the claimed ispe
    assert np.asarray(img).shape == (800, 1_200, 3)
    with pytest.raises(UnidentifiedImageError):  # libavif's 16384 * 16384 pixel limit
        Image.open(io.BytesIO(claim_size_heic(data, 20_000, 20_000)))


# ----------------------------------------------------------------------------- DNG


def _half(rgb: np.ndarray) -> np.ndarray:
    h, w = rgb.shape[0] // 2 * 2, rgb.shape[1] // 2 * 2
    return rgb[:h, :w].astype(np.float64).reshape(h // 2, 2, w // 2, 2, 3).mean(axis=(1, 3))


def _r(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])


DNG_CASES = [
    # orientation, bits, pattern, with preview
    (1, 12, "RGGB", False),
    (6, 14, "BGGR", False),
    (1, 14, "BGGR", True),
    (6, 12, "RGGB", True),
    (3, 12, "GRBG", False),
    (8, 16, "GBRG", True),
]


@pytest.mark.parametrize(("orientation", "bits", "pattern", "with_preview"), DNG_CASES)
def test_dng(orientation, bits, pattern, with_preview):
    rgb = photo("chelsea")  # 300 x 451: the mosaic is cropped to 300 x 450
    preview = np.ascontiguousarray(rgb[::4, ::4]) if with_preview else None
    data = dng_bytes(rgb, bits=bits, pattern=pattern, orientation=orientation, preview=preview)

    raw = rawpy.imread(io.BytesIO(data))
    assert raw.raw_type == rawpy.RawType.Flat
    sizes = raw.sizes
    assert (sizes.raw_height, sizes.raw_width) == (300, 450) == (sizes.height, sizes.width)
    assert sizes.flip == LIBRAW_FLIP[orientation]
    assert raw.white_level == 2**bits - 1
    assert list(raw.black_level_per_channel) == [0, 0, 0, 0]
    assert list(raw.camera_whitebalance[:3]) == [1.0, 1.0, 1.0]
    desc = raw.color_desc.decode()
    assert "".join(desc[i] for i in raw.raw_pattern.ravel()) == pattern
    assert np.array_equal(raw.raw_image_visible, bayer_mosaic(rgb, bits, pattern))

    out = raw.postprocess(half_size=True, use_camera_wb=True, no_auto_bright=True, output_bps=8)
    want = displayed(_half(rgb), orientation)
    assert out.shape == want.shape
    assert _r(out.mean(axis=2), want.mean(axis=2)) > 0.9
    out = out.astype(np.float64)
    for c in range(3):
        assert _r(out[..., c], want[..., c]) > 0.9
    for c in (0, 2):  # chroma (R-G, B-G) comes out right (~0.85) only if the CFA pattern is (≤0.1 if not)
        assert _r(out[..., c] - out[..., 1], want[..., c] - want[..., 1]) > 0.6

    if with_preview:
        thumb = raw.extract_thumb()
        assert thumb.format == rawpy.ThumbFormat.JPEG
        assert thumb.data[:2] == b"\xff\xd8"
        shown = Image.open(io.BytesIO(thumb.data))
        assert shown.format == "JPEG" and shown.size == (preview.shape[1], preview.shape[0])
        assert mae(np.asarray(shown.convert("RGB")), preview) < 4
    else:
        with pytest.raises(rawpy.LibRawNoThumbnailError):
            raw.extract_thumb()
    raw.close()


def _raw_page(tif: tifffile.TiffFile) -> tifffile.TiffPage:
    """The raw CFA IFD as tifffile reads it: IFD0, or IFD0's first SubIFD when IFD0 is the preview."""
    ifd0 = tif.pages[0]
    if not ifd0.subifds:
        return ifd0
    tif.filehandle.seek(ifd0.subifds[0])
    return tifffile.TiffPage(tif, index=(0, 0))


@pytest.mark.parametrize("with_preview", [False, True])
def test_dng_structure(with_preview):
    rgb = photo("chelsea")
    preview = np.ascontiguousarray(rgb[::4, ::4]) if with_preview else None
    data = dng_bytes(rgb, orientation=6, preview=preview, make="Acme", model="X1")
    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        assert tif.is_dng
        ifd0 = tif.pages[0]
        tags = {t.name: t.value for t in ifd0.tags.values()}
        assert bytes(tags["DNGVersion"]) == b"\x01\x04\x00\x00"
        assert tags["Make"] == "Acme" and tags["Model"] == "X1" and tags["UniqueCameraModel"] == "Acme X1"
        assert tags["Orientation"] == 6 and tags["CalibrationIlluminant1"] == 21
        assert "ColorMatrix1" in tags and "AsShotNeutral" in tags
        if with_preview:
            assert tags["NewSubfileType"] == 1 and ifd0.compression == 7 and ifd0.photometric == 6
            assert ifd0.shape == (75, 113, 3) and len(ifd0.subifds) == 1
        else:
            assert tags["NewSubfileType"] == 0 and not ifd0.subifds
        raw_ifd = _raw_page(tif)
        raw_tags = {t.name: t.value for t in raw_ifd.tags.values()}
        assert raw_ifd.photometric == 32803 and raw_ifd.compression == 1
        assert raw_tags["NewSubfileType"] == 0
        assert raw_tags["CFARepeatPatternDim"] == (2, 2) and raw_tags["CFAPattern"] == b"\x00\x01\x01\x02"
        assert raw_tags["BlackLevel"] == 0 and raw_tags["WhiteLevel"] == 4095
        assert np.array_equal(raw_ifd.asarray(), bayer_mosaic(rgb, 12, "RGGB"))


def _dng_wh(data: bytes) -> tuple[int, int]:
    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        page = _raw_page(tif)
        return page.imagewidth, page.imagelength


@pytest.mark.parametrize("with_preview", [False, True])
def test_claim_size_dng(with_preview):
    rgb = photo("chelsea")
    preview = np.ascontiguousarray(rgb[::4, ::4]) if with_preview else None
    data = dng_bytes(rgb, preview=preview)
    assert _dng_wh(data) == (450, 300)

    bomb = claim_size_dng(data, 4_000, 3_000)
    assert len(bomb) == len(data) and _dng_wh(bomb) == (4_000, 3_000)
    raw = rawpy.imread(io.BytesIO(bomb))  # LibRaw believes the header
    assert (raw.sizes.raw_width, raw.sizes.raw_height) == (4_000, 3_000)
    if with_preview:
        assert raw.extract_thumb().format == rawpy.ThumbFormat.JPEG  # still there, before unpacking
    with pytest.raises(rawpy.LibRawIOError):  # the strip is far too short
        raw.raw_image  # noqa: B018

    raw = rawpy.imread(io.BytesIO(claim_size_dng(data, 40_000, 40_000)))
    assert (raw.sizes.raw_width, raw.sizes.raw_height) == (40_000, 40_000)
    with pytest.raises(rawpy.LibRawTooBigError):  # 40000 * 40000 * 2 bytes > LibRaw's 2 GiB
        raw.raw_image  # noqa: B018

    for wh in ((64_001, 100), (100, 64_001), (2**32 - 1, 2**32 - 1)):  # LibRaw: no side over 64000
        with pytest.raises(rawpy.LibRawFileUnsupportedError):
            rawpy.imread(io.BytesIO(claim_size_dng(data, *wh)))


def test_dng_bad_arguments():
    rgb = photo("chelsea")[:8, :8]
    with pytest.raises(ValueError):
        dng_bytes(rgb, pattern="RGGX")
    with pytest.raises(ValueError):
        dng_bytes(rgb, bits=18)
    with pytest.raises(ValueError):
        dng_bytes(rgb, orientation=0)
    with pytest.raises(ValueError):
        claim_size_dng(b"MM\0*" + struct.pack(">I", 8), 1, 1)
