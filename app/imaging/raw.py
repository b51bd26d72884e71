"""Camera RAW (DNG, CR2/CR3, NEF, ARW, RAF, ORF, RW2 …) → pixels, through LibRaw (rawpy).

Two ways, chosen from the header before any pixel is decoded (`raw_plan`):

* `raw_preview` — the camera's own embedded JPEG preview, when its longest side is at least what the
  analyses need (`min_dim`; without one, half the sensor's size, what a demosaic would give). It is the
  camera's rendering (white balance, tone curve, noise reduction), and decoding it costs a JPEG decode
  (reduced with libjpeg's scaling like any JPEG). The RAW's orientation is applied when the preview does
  not carry its own.
* `raw_demosaic` — otherwise LibRaw demosaics at half size (each 2x2 Bayer block → one RGB pixel: no
  interpolation, a quarter of the memory) with the camera's white balance and *without* auto-brightening,
  so an underexposed shot stays underexposed for the exposure analysis (LibRaw's default would stretch it
  until 1 % of pixels clip). 8-bit sRGB; LibRaw applies the orientation.

The pixel limit (MAX_IMAGE_PIXELS) is checked against the RAW header's sensor size before unpacking;
the memory a decode needs is estimated from the same header (`RawPlan.cost_bytes`) and reserved from
the decode budget first, like any image.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from app.core.errors import ImageTooLarge, InvalidImage

#: LibRaw's `flip` → the EXIF orientation that displays the image the same way
FLIP_TO_ORIENTATION = {0: 1, 3: 3, 5: 8, 6: 6}


@dataclass
class RawPlan:
    width: int  # displayed size (after orientation)
    height: int
    sensor_size: tuple[int, int]  # raw_width, raw_height
    orientation: int
    preview: bytes | None  # the embedded JPEG when it is used
    preview_size: tuple[int, int] | None
    cost_bytes: int

    @property
    def decoded_from(self) -> str:
        return "raw_preview" if self.preview is not None else "raw_demosaic"


class RawUnsupported(InvalidImage):
    """LibRaw does not take the file (for a TIFF-structured one: decode it as the TIFF it is)."""


def open_raw(data: bytes) -> Any:
    """A rawpy handle on `data`: LibRaw has parsed the metadata, nothing is unpacked yet."""
    import rawpy

    return rawpy.imread(io.BytesIO(data))


def raw_errors(fmt: str) -> Any:
    """LibRaw's errors → ImageTooLarge / InvalidImage (the caller's guard turns the rest into 400s)."""
    from contextlib import contextmanager

    import rawpy

    @contextmanager
    def guard():
        try:
            yield
        except (rawpy.LibRawTooBigError, rawpy.LibRawUnsufficientMemoryError, rawpy.LibRawMemPoolOverflowError) as exc:
            raise ImageTooLarge(f"The {fmt} file is too large for LibRaw to decode.", detail={"format": fmt}) from exc
        except rawpy.LibRawFileUnsupportedError as exc:
            raise RawUnsupported(f"The file looks like a {fmt} camera RAW but LibRaw cannot read it (unsupported or "
                               "not a RAW).", detail={"format": fmt, "reason": str(exc)[:200]}) from exc
        except rawpy.LibRawError as exc:
            raise InvalidImage(f"The {fmt} data could not be decoded: it is truncated or corrupt.",
                               detail={"format": fmt, "reason": str(exc)[:200]}) from exc

    return guard()


def embedded_jpeg(raw: Any) -> bytes | None:
    """The RAW's embedded JPEG preview, or None (no preview, or a bitmap one)."""
    import rawpy

    try:
        thumb = raw.extract_thumb()
    except (rawpy.LibRawNoThumbnailError, rawpy.LibRawUnsupportedThumbnailError, rawpy.LibRawRequestForNonexistentImageError):
        return None
    if thumb.format != rawpy.ThumbFormat.JPEG:
        return None
    data = bytes(thumb.data)
    return data if data[:3] == b"\xff\xd8\xff" else None


def raw_plan(data: bytes, fmt: str, *, max_pixels: int, min_dim: int | None) -> RawPlan:
    """The header's sizes, the pixel-limit check, and which way to decode (preview or demosaic)."""
    with raw_errors(fmt), open_raw(data) as raw:
        s = raw.sizes
        w, h, rw, rh = int(s.width), int(s.height), int(s.raw_width), int(s.raw_height)
        if min(w, h, rw, rh) <= 0:
            raise InvalidImage(f"The {fmt} header gives no image size.", detail={"format": fmt})
        if max(w * h, rw * rh) > max_pixels:
            raise ImageTooLarge(
                f"The {fmt} sensor is {rw}x{rh} = {rw * rh} pixels; the limit is {max_pixels}.",
                detail={"width_px": rw, "height_px": rh, "max_image_pixels": max_pixels})
        orientation = FLIP_TO_ORIENTATION.get(int(s.flip), 1)
        swap = orientation in (5, 6, 7, 8)
        need = min_dim or max(w, h) // 2
        preview = embedded_jpeg(raw)
        preview_size = None
        if preview is not None:
            try:
                preview_size = Image.open(io.BytesIO(preview), formats=["JPEG"]).size
            except Exception:  # noqa: BLE001 - a broken preview: demosaic instead
                preview = None
        if preview is not None and (preview_size is None or max(preview_size) < need):
            preview = None
        if preview is not None and preview_size is not None:
            # a JPEG decode: its buffer at most the preview's size in RGB (libjpeg's scaling only lowers it)
            cost = preview_size[0] * preview_size[1] * 4 + len(preview)
        else:
            # unpacked 16-bit mosaic + LibRaw's half-size 4x16-bit image + the 8-bit result and its copy
            cost = rw * rh * 2 + (w // 2 + 1) * (h // 2 + 1) * (8 + 3 + 3)
        return RawPlan(width=h if swap else w, height=w if swap else h, sensor_size=(rw, rh), orientation=orientation,
                       preview=preview, preview_size=preview_size, cost_bytes=cost + len(data))


def demosaic_half(data: bytes, fmt: str) -> np.ndarray:
    """LibRaw's half-size demosaic: 8-bit sRGB, camera white balance, no auto-brightening, oriented."""
    with raw_errors(fmt), open_raw(data) as raw:
        rgb = raw.postprocess(half_size=True, use_camera_wb=True, no_auto_bright=True, output_bps=8)
    return np.ascontiguousarray(rgb)
