"""Real HEIC, AVIF and DNG files, written from real photos, for testing the decoders.

Every factory returns the bytes of a complete file in the format a phone or camera
writes, made by the format's own encoder (libheif/x265 through pillow_heif for HEIC,
libavif through Pillow for AVIF) or, for DNG, laid out here with `struct` as a
little-endian TIFF/EP file following the DNG 1.4 specification (pidng needs a
compiler; tifffile would need imagecodecs, not installed, to JPEG-compress the preview,
and writing the IFDs by hand keeps every tag and offset explicit).

What the readers do with orientation (pillow_heif 1.8.1 / libheif 1.23, Pillow 13):

* HEIC: pillow_heif turns the EXIF orientation given on save into `irot`/`imir`
  boxes and keeps the EXIF Orientation tag in the stored EXIF too (as iPhones do).
  On read libheif applies `irot`/`imir`, so `Image.open` already returns displayed
  pixels; pillow_heif then rewrites Orientation to 1 in `info["exif"]` (so
  `getexif()[0x0112] == 1` and `ImageOps.exif_transpose` is a no-op) and puts the
  original value in `info["original_orientation"]` (None when it was 1).
* AVIF: Pillow pops Orientation out of the EXIF it stores and writes `irot`/`imir`
  instead (no EXIF item at all when orientation was the only tag). On read Pillow
  does NOT apply them to the pixels: it returns the stored pixels and reports the
  transform as `getexif()[0x0112]`, so `ImageOps.exif_transpose` gives the
  displayed image.
* DNG: the TIFF Orientation tag in IFD0; LibRaw reports it as `sizes.flip`
  (1→0, 2→1, 3→3, 4→2, 5→4, 6→6, 7→7, 8→5) and `postprocess` applies it.
"""

from __future__ import annotations

import io
import struct

import numpy as np
import pillow_heif
from PIL import Image

#: EXIF orientation → Pillow transpose that turns stored pixels into displayed pixels
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}

#: TIFF/EXIF Orientation → LibRaw's `sizes.flip`
LIBRAW_FLIP = {1: 0, 2: 1, 3: 3, 4: 2, 5: 4, 6: 6, 7: 7, 8: 5}


def displayed(rgb: np.ndarray, orientation: int) -> np.ndarray:
    """The pixels a viewer shows for stored pixels `rgb` (H x W or H x W x C) with EXIF `orientation`.

    Standard EXIF semantics (row 0 / column 0 of the stored image is …):
    1 as stored; 2 mirrored left↔right; 3 rotated 180°; 4 mirrored top↔bottom;
    5 transposed (mirrored about the main diagonal); 6 rotated 90° clockwise;
    7 transversed (mirrored about the anti-diagonal); 8 rotated 90° counter-clockwise.
    The same as `PIL.ImageOps.exif_transpose`. Returns a new contiguous array.
    """
    a = np.asarray(rgb)
    if orientation not in range(1, 9):
        raise ValueError(f"EXIF orientation must be 1..8, not {orientation!r}")
    if orientation == 2:
        a = a[:, ::-1]
    elif orientation == 3:
        a = a[::-1, ::-1]
    elif orientation == 4:
        a = a[::-1]
    elif orientation == 5:
        a = a.swapaxes(0, 1)
    elif orientation == 6:
        a = np.rot90(a, -1)
    elif orientation == 7:
        a = a[::-1, ::-1].swapaxes(0, 1)
    elif orientation == 8:
        a = np.rot90(a, 1)
    return np.ascontiguousarray(a)


def _exif_orientation(orientation: int) -> bytes:
    if orientation not in range(1, 9):
        raise ValueError(f"EXIF orientation must be 1..8, not {orientation!r}")
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


def _with_alpha(rgb: np.ndarray, alpha: np.ndarray | None) -> np.ndarray:
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an H x W x 3 RGB array, got {rgb.shape}")
    if alpha is None:
        return rgb
    alpha = np.asarray(alpha, dtype=np.uint8)
    if alpha.shape != rgb.shape[:2]:
        raise ValueError(f"alpha {alpha.shape} does not match the image {rgb.shape[:2]}")
    return np.ascontiguousarray(np.dstack([rgb, alpha]))


def heic_bytes(
    rgb: np.ndarray,
    *,
    quality: int = 90,
    orientation: int = 1,
    bit_depth: int = 8,
    alpha: np.ndarray | None = None,
    extra_images: int = 0,
) -> bytes:
    """A HEIC file (HEVC, x265 via pillow_heif) whose primary image is `rgb`.

    * `quality`: x265 quality 0..100.
    * `orientation`: EXIF orientation 1..8 given to pillow_heif on save; it writes the
      matching `irot`/`imir` boxes and also keeps Orientation=`orientation` in the
      stored EXIF, so a correct reader (libheif applies irot/imir, ignores EXIF)
      shows `displayed(rgb, orientation)`. The coded pixels and the `ispe` size are
      those of `rgb` as stored (odd sides: x265 codes the next even size, e.g. ispe
      452x300 for 451x300, and libheif adds a `clap` crop back to 451x300).
    * `bit_depth` 8, 10 or 12: 10/12 encode from 16-bit data (`rgb * 257`, mode
      "RGB;16"), so the HEVC stream really is 10/12-bit (`info["bit_depth"]`).
    * `alpha`: an H x W uint8 plane → an RGBA HEIC (alpha as an auxiliary image).
    * `extra_images`: that many more top-level images after the primary (a
      multi-image HEIC like a burst): image k (1-based) is `rgb` at half size
      (`rgb[::2, ::2]`) flipped upside down and rolled right by k*W/8 columns, 8-bit
      RGB, no EXIF. The primary is image 0, the one `Image.open` shows.
    """
    if bit_depth not in (8, 10, 12):
        raise ValueError("bit_depth must be 8, 10 or 12")
    pixels = _with_alpha(rgb, alpha)
    h, w = pixels.shape[:2]
    mode = "RGBA" if pixels.shape[2] == 4 else "RGB"
    if bit_depth > 8:
        heif = pillow_heif.from_bytes(mode + ";16", (w, h), (pixels.astype(np.uint16) * 257).tobytes())
    else:
        heif = pillow_heif.from_bytes(mode, (w, h), pixels.tobytes())
    half = np.asarray(rgb, dtype=np.uint8)[::2, ::2]
    for k in range(1, extra_images + 1):
        extra = np.ascontiguousarray(np.roll(half[::-1], k * half.shape[1] // 8, axis=1))
        heif.add_frombytes("RGB", (extra.shape[1], extra.shape[0]), extra.tobytes())
    buf = io.BytesIO()
    heif.save(buf, quality=quality, bit_depth=bit_depth, exif=_exif_orientation(orientation), primary_index=0)
    return buf.getvalue()


def avif_frame(rgb: np.ndarray, index: int, frames: int) -> np.ndarray:
    """Frame `index` of `avif_bytes(rgb, frames=frames)` as stored: `rgb` rolled right by index*W/frames columns."""
    return np.ascontiguousarray(np.roll(np.asarray(rgb), index * rgb.shape[1] // frames, axis=1))


def avif_bytes(
    rgb: np.ndarray,
    *,
    quality: int = 80,
    orientation: int = 1,
    alpha: np.ndarray | None = None,
    frames: int = 1,
) -> bytes:
    """An AVIF file (AV1 via libavif, Pillow's own AVIF plugin) of `rgb`.

    * `orientation`: given to Pillow as EXIF Orientation; Pillow removes the tag from
      the EXIF it stores and writes `irot`/`imir` boxes instead, so a correct reader
      shows `displayed(rgb, orientation)`. Pillow reads the boxes back as
      `getexif()[0x0112] == orientation` without rotating the pixels.
    * `alpha`: an H x W uint8 plane → RGBA AVIF.
    * `frames > 1`: an animated AVIF (`avis` brand, image sequence, 100 ms a frame,
      looping) whose first frame is `rgb` and frame i is `avif_frame(rgba_or_rgb, i,
      frames)` (a horizontal pan; the alpha pans with it). Only with `orientation=1`:
      Pillow 13.0 segfaults in `enc.finish()` when saving an animated AVIF with an
      EXIF orientation other than 1, so that combination raises ValueError here.
    """
    if frames < 1:
        raise ValueError("frames must be >= 1")
    if frames > 1 and orientation != 1:
        raise ValueError("Pillow 13 crashes (SIGSEGV) writing an animated AVIF with an orientation; not supported")
    pixels = _with_alpha(rgb, alpha)
    images = [Image.fromarray(avif_frame(pixels, i, frames)) for i in range(frames)]
    buf = io.BytesIO()
    kw: dict = {"quality": quality, "exif": _exif_orientation(orientation)}
    if frames > 1:
        kw.update(save_all=True, append_images=images[1:], duration=100, loop=0)
    images[0].save(buf, "AVIF", **kw)
    return buf.getvalue()


# ----------------------------------------------------------------------------- DNG

_BYTE, _ASCII, _SHORT, _LONG, _RATIONAL, _UNDEFINED, _SRATIONAL = 1, 2, 3, 4, 5, 7, 10
_TYPE_FMT = {_BYTE: "B", _ASCII: "B", _SHORT: "H", _LONG: "I", _RATIONAL: "I", _UNDEFINED: "B", _SRATIONAL: "i"}

#: XYZ (D65) → linear sRGB: with this as ColorMatrix1 the "camera" space is linear sRGB
_XYZ_TO_SRGB = ((3.2406, -1.5372, -0.4986), (-0.9689, 1.8758, 0.0415), (0.0557, -0.2040, 1.0570))
_CFA_CODES = {"R": 0, "G": 1, "B": 2}


def _entry(tag: int, typ: int, values) -> tuple[int, int, int, bytes]:
    if typ == _ASCII:
        raw = values.encode("ascii") + b"\0"
        return tag, typ, len(raw), raw
    values = list(values) if isinstance(values, list | tuple) else [values]
    count = len(values) // 2 if typ in (_RATIONAL, _SRATIONAL) else len(values)
    return tag, typ, count, struct.pack("<" + _TYPE_FMT[typ] * len(values), *values)


def _ifd_size(entries) -> int:
    return 2 + 12 * len(entries) + 4 + sum(len(e[3]) + len(e[3]) % 2 for e in entries if len(e[3]) > 4)


def _ifd_bytes(entries, offset: int) -> bytes:
    """One IFD at file offset `offset`, its out-of-line values right after it."""
    entries = sorted(entries)
    data_at = offset + 2 + 12 * len(entries) + 4
    head, tail = [struct.pack("<H", len(entries))], []
    for tag, typ, count, raw in entries:
        if len(raw) <= 4:
            head.append(struct.pack("<HHI", tag, typ, count) + raw.ljust(4, b"\0"))
        else:
            head.append(struct.pack("<HHII", tag, typ, count, data_at))
            padded = raw + b"\0" * (len(raw) % 2)
            tail.append(padded)
            data_at += len(padded)
    head.append(struct.pack("<I", 0))  # no next IFD
    out = b"".join(head + tail)
    assert len(out) == _ifd_size(entries)
    return out


def bayer_mosaic(rgb: np.ndarray, bits: int = 12, pattern: str = "RGGB") -> np.ndarray:
    """The uint16 CFA mosaic `dng_bytes` stores for `rgb` (cropped to even height and width).

    Each 8-bit sRGB value is decoded to linear light (the sRGB transfer curve), scaled to
    0..2**bits-1 and rounded; the 2x2 `pattern` (e.g. "RGGB": R at (0,0), G at (0,1)
    and (1,0), B at (1,1)) picks which channel each photosite keeps.
    """
    pattern = pattern.upper()
    if len(pattern) != 4 or set(pattern) - set("RGB"):
        raise ValueError(f"bad CFA pattern {pattern!r}")
    rgb = np.asarray(rgb)
    h, w = rgb.shape[0] // 2 * 2, rgb.shape[1] // 2 * 2
    v = rgb[:h, :w, :3].astype(np.float64) / 255.0
    linear = np.where(v <= 0.04045, v / 12.92, ((v + 0.055) / 1.055) ** 2.4)
    scaled = np.round(linear * (2**bits - 1)).astype(np.uint16)
    mosaic = np.empty((h, w), np.uint16)
    for i, colour in enumerate(pattern):
        dy, dx = divmod(i, 2)
        mosaic[dy::2, dx::2] = scaled[dy::2, dx::2, _CFA_CODES[colour]]
    return mosaic


def _jpeg(rgb: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8)).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def dng_bytes(
    rgb: np.ndarray,
    *,
    bits: int = 12,
    pattern: str = "RGGB",
    orientation: int = 1,
    preview: np.ndarray | None = None,
    preview_quality: int = 90,
    make: str = "Loupe",
    model: str = "Test camera",
) -> bytes:
    """A DNG 1.4 file holding the Bayer mosaic of `rgb`, uncompressed, little-endian.

    The raw image is `bayer_mosaic(rgb, bits, pattern)` (H x W, cropped to even size):
    linear `bits`-bit values (8..16) stored as 16-bit samples in one strip,
    PhotometricInterpretation 32803 (CFA), CFARepeatPatternDim 2x2, CFAPattern
    `pattern`, BlackLevel 0, WhiteLevel 2**bits-1, NewSubFileType 0.
    IFD0 carries DNGVersion 1.4.0.0, DNGBackwardVersion 1.1.0.0, Make, Model,
    UniqueCameraModel ("`make` `model`"), Orientation `orientation` (TIFF/EXIF 1..8),
    ColorMatrix1 = XYZ→linear-sRGB (so camera RGB is linear sRGB),
    CalibrationIlluminant1 21 (D65) and AsShotNeutral 1,1,1.

    Without `preview` the raw image is IFD0 (all tags in one IFD), and LibRaw finds
    no thumbnail. With `preview` (an RGB uint8 array, stored as given, i.e. in the
    same stored orientation as the raw) IFD0 is the preview the way cameras and
    Adobe's converter write it: NewSubFileType 1, a baseline JPEG (Pillow,
    `preview_quality`, 4:2:0) as a single strip with Compression 7,
    PhotometricInterpretation 6 (YCbCr), 8,8,8 bits, and a SubIFDs tag pointing to
    the raw IFD. LibRaw's `extract_thumb()` returns that JPEG stream unchanged.
    """
    if not 8 <= bits <= 16:
        raise ValueError("bits must be 8..16")
    if orientation not in range(1, 9):
        raise ValueError(f"orientation must be 1..8, not {orientation!r}")
    mosaic = bayer_mosaic(rgb, bits, pattern)
    h, w = mosaic.shape
    raw_data = mosaic.astype("<u2").tobytes()
    cfa = [_CFA_CODES[c] for c in pattern.upper()]

    def srational(x: float) -> tuple[int, int]:
        return round(x * 10000), 10000

    camera = [
        _entry(271, _ASCII, make),
        _entry(272, _ASCII, model),
        _entry(274, _SHORT, orientation),
        _entry(50706, _BYTE, [1, 4, 0, 0]),  # DNGVersion
        _entry(50707, _BYTE, [1, 1, 0, 0]),  # DNGBackwardVersion
        _entry(50708, _ASCII, f"{make} {model}"),  # UniqueCameraModel
        _entry(50721, _SRATIONAL, [v for row in _XYZ_TO_SRGB for x in row for v in srational(x)]),  # ColorMatrix1
        _entry(50728, _RATIONAL, [1, 1, 1, 1, 1, 1]),  # AsShotNeutral
        _entry(50778, _SHORT, 21),  # CalibrationIlluminant1: D65
    ]

    def raw_ifd(strip_offset: int) -> list:
        return [
            _entry(254, _LONG, 0),  # NewSubFileType: main image
            _entry(256, _LONG, w),
            _entry(257, _LONG, h),
            _entry(258, _SHORT, 16),
            _entry(259, _SHORT, 1),  # uncompressed
            _entry(262, _SHORT, 32803),  # CFA
            _entry(273, _LONG, strip_offset),
            _entry(277, _SHORT, 1),
            _entry(278, _LONG, h),
            _entry(279, _LONG, len(raw_data)),
            _entry(284, _SHORT, 1),
            _entry(33421, _SHORT, [2, 2]),  # CFARepeatPatternDim
            _entry(33422, _BYTE, cfa),  # CFAPattern
            _entry(50714, _LONG, 0),  # BlackLevel
            _entry(50717, _LONG, 2**bits - 1),  # WhiteLevel
        ]

    header = b"II*\0" + struct.pack("<I", 8)
    if preview is None:
        size0 = _ifd_size(raw_ifd(0) + camera)
        strip = 8 + size0
        return header + _ifd_bytes(raw_ifd(strip) + camera, 8) + raw_data

    preview = np.asarray(preview, dtype=np.uint8)
    jpeg = _jpeg(preview, preview_quality)
    ph, pw = preview.shape[:2]

    def preview_ifd(jpeg_offset: int, sub_offset: int) -> list:
        return camera + [
            _entry(254, _LONG, 1),  # NewSubFileType: reduced-resolution preview
            _entry(256, _LONG, pw),
            _entry(257, _LONG, ph),
            _entry(258, _SHORT, [8, 8, 8]),
            _entry(259, _SHORT, 7),  # JPEG
            _entry(262, _SHORT, 6),  # YCbCr
            _entry(273, _LONG, jpeg_offset),
            _entry(277, _SHORT, 3),
            _entry(278, _LONG, ph),
            _entry(279, _LONG, len(jpeg)),
            _entry(284, _SHORT, 1),
            _entry(330, _LONG, sub_offset),  # SubIFDs
            _entry(530, _SHORT, [2, 2]),  # YCbCrSubSampling (Pillow's default 4:2:0)
        ]

    size0 = _ifd_size(preview_ifd(0, 0))
    sub_at = 8 + size0
    jpeg_at = sub_at + _ifd_size(raw_ifd(0))
    raw_at = jpeg_at + len(jpeg) + len(jpeg) % 2
    return b"".join(
        [
            header,
            _ifd_bytes(preview_ifd(jpeg_at, sub_at), 8),
            _ifd_bytes(raw_ifd(raw_at), sub_at),
            jpeg + b"\0" * (len(jpeg) % 2),
            raw_data,
        ]
    )


# ----------------------------------------------------------------------------- bombs


def _ifd_entries(data: bytes, offset: int) -> dict[int, tuple[int, int, int, int]]:
    """tag → (entry offset, type, count, value-or-offset) of the little-endian IFD at `offset`."""
    (n,) = struct.unpack_from("<H", data, offset)
    out = {}
    for i in range(n):
        at = offset + 2 + 12 * i
        tag, typ, count, value = struct.unpack_from("<HHII", data, at)
        out[tag] = (at, typ, count, value)
    return out


def _raw_ifd_offset(data: bytes) -> int:
    if data[:4] != b"II*\0":
        raise ValueError("not a little-endian TIFF/DNG written by dng_bytes")
    (ifd0,) = struct.unpack_from("<I", data, 4)
    entries = _ifd_entries(data, ifd0)
    if entries.get(254, (0, 0, 0, 0))[3] == 1 and 330 in entries:  # IFD0 is the preview
        return entries[330][3]
    return ifd0


def claim_size_dng(data: bytes, width: int, height: int) -> bytes:
    """`data` (from `dng_bytes`) with the raw IFD's ImageWidth/ImageLength set to `width` x `height`.

    Only those two LONG values change: the strip (offset, byte count, RowsPerStrip)
    stays the small original one, so the file cannot hold that many pixels and
    decoding must not be attempted. What LibRaw 0.22 (rawpy 0.28) does with it:

    * `rawpy.imread` succeeds and `sizes.raw_width/raw_height` (and width/height)
      report the claimed size, as long as neither side exceeds 64000; a side above
      64000 makes `imread` raise `LibRawFileUnsupportedError`.
    * `extract_thumb()` (before any unpack) still returns the preview.
    * unpacking (`raw_image`, `postprocess`) raises `LibRawTooBigError` when the raw
      buffer (width*height*2 bytes) would reach LibRaw's 2 GiB limit (e.g. 32768x32768),
      and below that allocates the buffer, then fails with `LibRawIOError` (LibRaw
      prints "unknown file: Unexpected end of file" to stderr).
    """
    out = bytearray(data)
    entries = _ifd_entries(data, _raw_ifd_offset(data))
    for tag, value in ((256, width), (257, height)):
        at, typ, _, _ = entries[tag]
        if typ != _LONG:
            raise ValueError("ImageWidth/ImageLength are not LONG")
        struct.pack_into("<I", out, at + 8, value)
    return bytes(out)


def _boxes(data: bytes, start: int, end: int):
    """(type, box start, payload start, box end) of the ISO-BMFF boxes in data[start:end]."""
    at = start
    while at + 8 <= end:
        size, typ = struct.unpack_from(">I4s", data, at)
        header = 8
        if size == 1:
            (size,) = struct.unpack_from(">Q", data, at + 8)
            header = 16
        elif size == 0:
            size = end - at
        if size < header or at + size > end:
            raise ValueError(f"corrupt box {typ!r} at {at}")
        yield typ, at, at + header, at + size
        at += size


def _ipco_children(data: bytes):
    """(type, payload start, box end) of every property box in the `ipco` of a HEIF/AVIF file."""
    for typ, _, payload, end in _boxes(data, 0, len(data)):
        if typ != b"meta":
            continue
        for typ2, _, p2, e2 in _boxes(data, payload + 4, end):  # meta is a FullBox
            if typ2 != b"iprp":
                continue
            for typ3, _, p3, e3 in _boxes(data, p2, e2):
                if typ3 == b"ipco":
                    yield from ((t, p, e) for t, _, p, e in _boxes(data, p3, e3))


def ispe_sizes(data: bytes) -> list[tuple[int, int]]:
    """The (width, height) of every `ispe` property in a HEIF/AVIF file, in file order.

    Properties are shared between items, so images of one size have one `ispe`. For an
    odd-sized HEIC, x265 codes an even size (e.g. 452 for 451) and libheif adds a
    `clap` (clean aperture) box that crops it back.
    """
    return [struct.unpack_from(">II", data, p + 4) for t, p, _ in _ipco_children(data) if t == b"ispe"]


def claim_size_heic(data: bytes, width: int, height: int) -> bytes:
    """`data` (a HEIC or AVIF) claiming to be `width` x `height`; the coded stream is untouched.

    Every `ispe` box (primary, alpha, extra images: one per distinct size) is set to
    `width` x `height`, and every `clap` box to a full-frame aperture of that size
    (otherwise the crop of an odd-sized HEIC keeps the reported size at the real one).
    `ispe` is the coded size, before `irot`: for orientations 5..8 readers report
    (height, width). What readers then do (pinned down by the unit test):

    * HEIC, `Image.open` (pillow_heif): reports the claimed size; up to 89M pixels
      silently, then Pillow's DecompressionBombWarning, and above 2x that
      (178,956,970 px) `DecompressionBombError` from `Image.open`. A side of 2**31 or
      more makes pillow_heif see a (0, 0) image and `Image.open` raises
      `UnidentifiedImageError`. `load()` raises ValueError ("Decoded image does not
      have the size signaled in the file") below libheif's 1<<30-pixel security limit,
      RuntimeError ("Security limit exceeded") above it.
    * AVIF, Pillow: libavif refuses more than 16384*16384 pixels at open
      (`UnidentifiedImageError`); below that Image.open reports the claimed size and
      `load()` succeeds, libavif *upscaling* the decoded frame to the claimed size.
    """
    out = bytearray(data)
    found = False
    for typ, payload, _ in _ipco_children(data):
        if typ == b"ispe":
            struct.pack_into(">II", out, payload + 4, width, height)
            found = True
        elif typ == b"clap":
            struct.pack_into(">IIIIiIiI", out, payload, width, 1, height, 1, 0, 1, 0, 1)
    if not found:
        raise ValueError("no ispe box found")
    return bytes(out)
