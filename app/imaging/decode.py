"""Bytes → one `DecodedImage` that every analysis of a request shares.

The format is sniffed from the bytes (never the file name or a Content-Type),
the pixel count is checked from the header before any pixel is decoded, EXIF
orientation is applied, alpha is composited on white, and every mode (CMYK,
16-bit, palette, LA, I;16 …) ends as 8-bit RGB. Animated images give their first
frame. For JPEG, Pillow's `draft` asks libjpeg for a reduced-size decode (1/2,
1/4, 1/8) when the analyses need fewer pixels than the original has, which is
most of the cost of decoding a large photo.

Memory: the decoder's own buffer (width x height x bytes per pixel of its mode) is
the one full-size allocation. Any image still at least twice the size the analyses
need is box-reduced right after decoding (integer factor, `Image.reduce`; 16-bit grey
with OpenCV's area filter on uint16), and only then transposed, composited and
converted, so no full-size RGB, float or second copy is ever made. `probe` reads
the header and says what that one buffer will cost (`DecodePlan.cost_bytes`), so the
caller can reserve it from the process-wide budget before decoding.
"""

from __future__ import annotations

import hashlib
import io
import struct
import threading
import warnings
from dataclasses import dataclass, field

import cv2
import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from app.core.errors import ImageTooLarge, InvalidImage, UnsupportedMediaType
from app.imaging.formats import GUESSED_RAW, SUPPORTED_FORMATS, is_raw, sniff_format
from app.imaging.jpeg import estimate_quality

# We do our own pixel-count check; let Pillow not second-guess it with warnings.
Image.MAX_IMAGE_PIXELS = None
ImageFile.LOAD_TRUNCATED_IMAGES = False

try:  # HEIF/HEIC through pillow-heif (an opener registered with Pillow); AVIF is Pillow's own
    import pillow_heif

    pillow_heif.register_heif_opener()
    HEIF_AVAILABLE = True
except ImportError:  # pragma: no cover - pillow-heif is in requirements.txt
    HEIF_AVAILABLE = False


def resize_max(arr: np.ndarray, max_dim: int) -> np.ndarray:
    """Downscale so the longest side is at most `max_dim` (area interpolation); never upscale."""
    h, w = arr.shape[:2]
    longest = max(h, w)
    if longest <= max_dim:
        return arr
    scale = max_dim / longest
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(arr, size, interpolation=cv2.INTER_AREA)


@dataclass(eq=False)
class DecodedImage:
    """One decoded image, shared by every analysis of a request.

    `pixels` is HxWx3 uint8 RGB after EXIF transpose, or HxW uint8 grey when only
    grey analyses were asked for (a grey JPEG decode skips colour conversion and
    chroma upsampling). It may be smaller than the original when a reduced decode
    was enough; `width`/`height` are always the original's (after orientation).
    Derived arrays are cached per size, so each model's input is made once.
    """

    pixels: np.ndarray
    width: int
    height: int
    sha256: str
    format: str
    n_bytes: int
    frames: int = 1
    jpeg_quality: int | None = None  # IJG quality estimated from the quantisation tables (JPEG only)
    #: for camera RAW: "raw_preview" (the embedded JPEG) or "raw_demosaic" (LibRaw, half size)
    decoded_from: str | None = None
    _cache: dict = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def _cached(self, key, make):
        with self._lock:
            if key in self._cache:
                return self._cache[key]
        value = make()
        with self._lock:
            return self._cache.setdefault(key, value)

    @property
    def is_gray(self) -> bool:
        return self.pixels.ndim == 2

    @property
    def rgb(self) -> np.ndarray:
        """Full decoded RGB (grey decodes are expanded once, cached)."""
        if not self.is_gray:
            return self.pixels
        return self._cached(("rgb_full",), lambda: cv2.cvtColor(self.pixels, cv2.COLOR_GRAY2RGB))

    def rgb_max(self, max_dim: int) -> np.ndarray:
        """RGB uint8 with the longest side at most `max_dim` (cached)."""
        return self._cached(("rgb", max_dim), lambda: resize_max(self.rgb, max_dim))

    def gray_max(self, max_dim: int) -> np.ndarray:
        """Grey uint8 (ITU-R 601 luma) with the longest side at most `max_dim` (cached)."""
        if self.is_gray:
            return self._cached(("gray", max_dim), lambda: resize_max(self.pixels, max_dim))
        return self._cached(
            ("gray", max_dim), lambda: cv2.cvtColor(self.rgb_max(max_dim), cv2.COLOR_RGB2GRAY)
        )

    def cached(self, key, make):
        """Cache any derived input (e.g. a model's preprocessed tensor) on this image."""
        return self._cached(("custom", key), make)


# Bytes per pixel of the buffer Pillow decodes into: Pillow stores 1-band 8-bit modes in one byte,
# 16-bit grey in two and every other mode (RGB included) in four.
_MODE_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2}
#: working bytes per pixel of the reduced image while it is converted: a composite over white
#: holds RGBA, the background and the result (4 + 4 + 4) and then the RGB array (3)
_CONVERT_BYTES = 15
#: bytes per pixel a decoder holds besides Pillow's buffer (measured at 12 MP with scripts/bench.py formats' files:
#: peak RSS rise of one decode: HEIC 88 MiB, AVIF 107 MiB, WebP 184 MiB): libheif/libavif's own surface (up to
#: 16-bit RGBA), libwebp's RGBA output and its conversion
_DECODER_SURFACE_BYTES = {"HEIF": 8, "AVIF": 8, "WEBP": 12}
#: the reduction works in horizontal bands of about this many source bytes
_BAND_BYTES = 8 << 20
_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
              5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
              8: Image.Transpose.ROTATE_90}


def reduce_factor(size: tuple[int, int], min_dim: int | None) -> int:
    """Integer box-reduction factor that keeps the longest side >= min_dim (1 = keep)."""
    if not min_dim:
        return 1
    factor = max(size) // min_dim
    return factor if factor >= 2 else 1


@dataclass
class DecodePlan:
    """What the header says, before any pixel is decoded."""

    format: str
    width: int  # after EXIF orientation
    height: int
    decode_size: tuple[int, int]  # what the decoder will produce (after a JPEG draft)
    mode: str
    frames: int
    orientation: int
    cost_bytes: int  # estimated peak working memory of the decode


def _open(data: bytes, fmt: str) -> Image.Image:
    return Image.open(io.BytesIO(data), formats=[fmt])


def _decode_errors(fmt: str):
    """Pillow's many ways of saying "corrupt" → InvalidImage / ImageTooLarge."""
    from contextlib import contextmanager

    @contextmanager
    def guard():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                yield
        except (ImageTooLarge, InvalidImage):
            raise
        except Image.DecompressionBombError as exc:
            raise ImageTooLarge(str(exc)) from exc
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, RuntimeError,
                struct.error, Image.DecompressionBombWarning) as exc:
            raise InvalidImage(
                f"The {fmt} data could not be decoded: it is truncated or corrupt.",
                detail={"format": fmt, "reason": str(exc)[:200]},
            ) from exc

    return guard()


def _plan(img: Image.Image, fmt: str, *, max_pixels: int, min_dim: int | None, gray: bool) -> DecodePlan:
    """Header checks and the decode plan; applies the JPEG draft to `img`."""
    w0, h0 = img.size
    if w0 <= 0 or h0 <= 0:
        raise InvalidImage("The image has no pixels.")
    if w0 * h0 > max_pixels:
        raise ImageTooLarge(
            f"The image is {w0}x{h0} = {w0 * h0} pixels; the limit is {max_pixels}.",
            detail={"width_px": w0, "height_px": h0, "max_image_pixels": max_pixels},
        )
    frames = int(getattr(img, "n_frames", 1) or 1)
    if frames > 1:
        img.seek(0)
    try:
        orientation = int(img.getexif().get(0x0112, 1) or 1)
    except Exception:  # noqa: BLE001 - broken EXIF is not a broken image
        orientation = 1
    if orientation not in _TRANSPOSE:
        orientation = 1
    swap = orientation in (5, 6, 7, 8)
    if fmt == "JPEG" and min_dim and max(w0, h0) > min_dim:
        # draft keeps the size >= the requested one, choosing scale 1/2, 1/4 or 1/8.
        scale = min_dim / max(w0, h0)
        img.draft("L" if gray else "RGB", (max(1, int(w0 * scale)), max(1, int(h0 * scale))))
    elif fmt == "JPEG" and gray:
        img.draft("L", (w0, h0))
    dw, dh = img.size
    factor = reduce_factor((dw, dh), min_dim)
    out_px = (dw // factor + 1) * (dh // factor + 1)
    buffer = dw * dh * _MODE_BYTES.get(img.mode, 4)
    buffer += dw * dh * _DECODER_SURFACE_BYTES.get(fmt, 0)
    if factor > 1:
        buffer += 4 * _BAND_BYTES  # a band, its converted copy and its reduction
    return DecodePlan(format=fmt, width=h0 if swap else w0, height=w0 if swap else h0, decode_size=(dw, dh),
                      mode=img.mode, frames=frames, orientation=orientation,
                      cost_bytes=buffer + out_px * _CONVERT_BYTES)


def probe(data: bytes, *, max_pixels: int, min_dim: int | None = None, gray: bool = False) -> DecodePlan:
    """Read only the header: the format (sniffed), the pixel-count check, and the decode's memory cost.

    Raises InvalidImage (400), UnsupportedMediaType (415) or ImageTooLarge (413)."""
    fmt = _sniff_or_raise(data)
    if is_raw(fmt):
        from app.imaging.raw import RawUnsupported, raw_plan

        try:
            rp = raw_plan(data, fmt, max_pixels=max_pixels, min_dim=min_dim)
        except RawUnsupported:
            if fmt not in GUESSED_RAW:
                raise
            fmt = "TIFF"  # a TIFF with a camera's Make that LibRaw does not take: the TIFF it also is
        else:
            size = rp.preview_size or (rp.sensor_size[0] // 2, rp.sensor_size[1] // 2)
            return DecodePlan(format=fmt, width=rp.width, height=rp.height, decode_size=size, mode="RGB", frames=1,
                              orientation=rp.orientation, cost_bytes=rp.cost_bytes)
    with _decode_errors(fmt):
        return _plan(_open(data, fmt), fmt, max_pixels=max_pixels, min_dim=min_dim, gray=gray)



def _sniff_or_raise(data: bytes) -> str:
    if not data:
        raise InvalidImage("The image is empty (0 bytes).")
    fmt = sniff_format(data)
    if fmt is None:
        raise UnsupportedMediaType(
            "The data is not an image in a supported format.",
            detail={"supported_formats": list(SUPPORTED_FORMATS)},
        )
    if fmt == "HEIF" and not HEIF_AVAILABLE:  # pragma: no cover
        raise UnsupportedMediaType("HEIF/HEIC support (pillow-heif) is not installed on this server.",
                                   detail={"format": fmt})
    return fmt


def _reduce(img: Image.Image, factor: int) -> Image.Image:
    """Box-reduce by an integer factor (mean of factor x factor blocks), band by band.

    Working in bands of rows keeps every copy small: Pillow premultiplies alpha images over the
    whole image before reducing, palette indices must become colours before they can be averaged,
    and NumPy sees a 16-bit image only through a full copy. The last `size % factor` rows and
    columns, which make no whole block, are left out."""
    if factor <= 1:
        return img
    w, h = img.size
    ow, oh = w // factor, h // factor
    rows = max(1, _BAND_BYTES // max(1, w * factor * 4))  # output rows per band
    sixteen = img.mode.startswith("I;16")
    if sixteen:
        out16 = np.empty((oh, ow), np.uint16)
    else:
        target = {"P": "RGBA" if "transparency" in img.info else "RGB", "PA": "RGBA", "1": "L"}.get(img.mode)
        out = Image.new(target or img.mode, (ow, oh))
    for y in range(0, oh, rows):
        n = min(rows, oh - y)
        band = img.crop((0, y * factor, ow * factor, (y + n) * factor))
        if sixteen:
            arr = np.asarray(band, dtype=np.uint16).reshape(n, factor, ow, factor)
            out16[y:y + n] = np.rint(arr.mean(axis=(1, 3)))
        else:
            if target:
                band = band.convert(target)
            out.paste(band.reduce(factor), (0, y))
    return Image.fromarray(out16) if sixteen else out


def _to_gray(img: Image.Image) -> np.ndarray:
    if img.mode == "L":
        return np.ascontiguousarray(np.asarray(img, dtype=np.uint8))
    if img.mode in ("RGB", "CMYK", "YCbCr", "1", "P") and "transparency" not in img.info:
        return np.ascontiguousarray(np.asarray(img.convert("L"), dtype=np.uint8))
    return cv2.cvtColor(_to_rgb(img), cv2.COLOR_RGB2GRAY)


def _to_rgb(img: Image.Image) -> np.ndarray:
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img)
        if mode.startswith("I;16") or arr.max() > 255:
            # 0..65535 → 0..255, rounded, in integers (no float copy)
            arr8 = ((np.clip(arr, 0, 65535).astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
        else:
            arr8 = np.clip(arr, 0, 255).astype(np.uint8)
        return cv2.cvtColor(np.ascontiguousarray(arr8), cv2.COLOR_GRAY2RGB)
    if mode == "F":
        arr = np.asarray(img, dtype=np.float32)
        arr8 = np.clip(arr * (255.0 if arr.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
        return cv2.cvtColor(np.ascontiguousarray(arr8), cv2.COLOR_GRAY2RGB)
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    if img.mode != "RGB":
        img = img.convert("RGB")  # CMYK, YCbCr, L, 1, P, RGBX …
    return np.ascontiguousarray(np.asarray(img, dtype=np.uint8))


def decode_image(data: bytes, *, max_pixels: int, min_dim: int | None = None, gray: bool = False) -> DecodedImage:
    """Decode `data` into a `DecodedImage`.

    `min_dim`: the largest size any analysis needs (longest side). A larger image is decoded at a
    reduced scale (JPEG) and/or box-reduced right after decoding, keeping the longest side
    >= min_dim. None = full size.
    `gray`: only grey analyses will run; decode straight to 8-bit grey.
    Raises InvalidImage (400), UnsupportedMediaType (415) or ImageTooLarge (413).
    """
    fmt = _sniff_or_raise(data)
    sha = hashlib.sha256(data).hexdigest()
    if is_raw(fmt):
        from app.imaging.raw import RawUnsupported

        try:
            return _decode_raw(data, fmt, sha, max_pixels=max_pixels, min_dim=min_dim, gray=gray)
        except RawUnsupported:
            if fmt not in GUESSED_RAW:
                raise
            fmt = "TIFF"
    with _decode_errors(fmt):
        if fmt == "PNG":
            # PNG carries a CRC per chunk; Pillow only checks them in verify(). A corrupt
            # PNG would otherwise decode to garbage pixels that look like a real image.
            _open(data, fmt).verify()
        img = _open(data, fmt)
        plan = _plan(img, fmt, max_pixels=max_pixels, min_dim=min_dim, gray=gray)
        jpeg_quality = estimate_quality(getattr(img, "quantization", None)) if fmt == "JPEG" else None
        img.load()
        img = _reduce(img, reduce_factor(img.size, min_dim))
        if plan.orientation != 1:
            img = img.transpose(_TRANSPOSE[plan.orientation])
        pixels = _to_gray(img) if gray else _to_rgb(img)
    if pixels.size == 0 or (pixels.ndim == 3 and pixels.shape[2] != 3):
        raise InvalidImage("The image decoded to no usable pixels.")
    return DecodedImage(pixels=pixels, width=plan.width, height=plan.height, sha256=sha, format=fmt,
                        n_bytes=len(data), frames=plan.frames, jpeg_quality=jpeg_quality)


def orient(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """`pixels` as displayed under EXIF `orientation` (1 = as stored)."""
    if orientation == 1:
        return pixels
    return np.ascontiguousarray(np.asarray(Image.fromarray(pixels).transpose(_TRANSPOSE[orientation])))


def _decode_raw(data: bytes, fmt: str, sha: str, *, max_pixels: int, min_dim: int | None, gray: bool) -> DecodedImage:
    """A camera RAW: its embedded JPEG preview when large enough, else LibRaw's half-size demosaic
    (app.imaging.raw explains the choice)."""
    from app.imaging.raw import demosaic_half, raw_plan

    plan = raw_plan(data, fmt, max_pixels=max_pixels, min_dim=min_dim)
    if plan.preview is not None:
        preview = decode_image(plan.preview, max_pixels=max_pixels, min_dim=min_dim, gray=gray)
        with _decode_errors("JPEG"):
            own = _plan(_open(plan.preview, "JPEG"), "JPEG", max_pixels=max_pixels, min_dim=None, gray=gray).orientation
        pixels = preview.pixels if own != 1 else orient(preview.pixels, plan.orientation)
    else:
        rgb = demosaic_half(data, fmt)  # oriented by LibRaw
        factor = reduce_factor((rgb.shape[1], rgb.shape[0]), min_dim)
        if factor > 1:
            rgb = np.ascontiguousarray(np.asarray(Image.fromarray(rgb).reduce(factor)))
        pixels = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY) if gray else rgb
    return DecodedImage(pixels=pixels, width=plan.width, height=plan.height, sha256=sha, format=fmt, n_bytes=len(data),
                        frames=1, jpeg_quality=None, decoded_from=plan.decoded_from)
