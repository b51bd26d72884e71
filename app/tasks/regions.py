"""Regions of one image: the prominent person, the prominent face, and their crops, each made once.

A request's tasks may name the same region many times (a face's CLIP vector, its box and its
tags); the region is detected once per image and shared, and each crop is cut once and cached.
Boxes are `[xmin, ymin, xmax, ymax]` in original-image pixels (after EXIF rotation), as the
decoded image's `width`/`height` are; the pixels may be a reduced decode, so a crop is cut from
the decoded pixels at the matching scale and keeps the original size as its `width`/`height`.

* prominent person: the `person` model's first box (largest first). None found → the whole
  image, and the task result says so (`fallback`).
* prominent face: YuNet on the face context — the prominent person's crop (default) or the
  whole image — and the largest face (ties: the more confident). None found → the task is
  skipped with the reason.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from app.imaging.decode import DecodedImage, resize_max

Box = tuple[int, int, int, int]


@dataclass
class Region:
    """A resolved target: its box, whether it fell back to the whole image, and what found it."""

    box: Box
    kind: str  # "whole_image" | "person" | "face"
    fallback: bool = False
    score: float | None = None
    area_share: float | None = None


@dataclass
class ImageRegions:
    """Everything region-related for one image of a request."""

    image: DecodedImage
    persons: list[dict[str, Any]] | None = None  # the person model's boxes, largest first; None: not run
    person_error: str | None = None
    faces: dict[str, list[dict[str, Any]] | None] = field(default_factory=dict)  # face context → faces (orig px)
    face_error: dict[str, str] = field(default_factory=dict)
    _crops: dict[Box, DecodedImage] = field(default_factory=dict)

    @property
    def whole(self) -> Box:
        return (0, 0, self.image.width, self.image.height)

    def person(self) -> Region:
        """The prominent person, or the whole image (fallback) when the model found none."""
        if self.persons:
            p = self.persons[0]
            return Region(tuple(int(v) for v in p["box"]), "person", score=p.get("score"),  # type: ignore[arg-type]
                          area_share=p.get("area_share"))
        return Region(self.whole, "whole_image", fallback=True)

    def face_context(self, context: str) -> Region:
        return self.person() if context == "prominent_person" else Region(self.whole, "whole_image")

    def face(self, context: str) -> Region | None:
        faces = self.faces.get(context)
        if not faces:
            return None
        best = max(faces, key=lambda f: (box_area(f["box"]), f.get("confidence", 0.0)))
        return Region(tuple(best["box"]), "face", score=float(best.get("confidence", 0.0)),
                      area_share=box_area(best["box"]) / float(self.image.width * self.image.height))

    def crop(self, box: Box) -> DecodedImage:
        """The region as a DecodedImage (made once per box): pixels cut at the decoded scale, the
        original size as width/height, so that models and detectors map back as for a whole image."""
        if box == self.whole:
            return self.image
        if box not in self._crops:
            self._crops[box] = crop_image(self.image, box)
        return self._crops[box]


def box_area(box: Any) -> float:
    x0, y0, x1, y1 = box
    return max(0.0, float(x1) - float(x0)) * max(0.0, float(y1) - float(y0))


def crop_image(image: DecodedImage, box: Box) -> DecodedImage:
    x0, y0, x1, y1 = box
    h, w = image.pixels.shape[:2]
    sx, sy = w / image.width, h / image.height
    px0, py0 = int(np.floor(x0 * sx)), int(np.floor(y0 * sy))
    px1, py1 = max(px0 + 1, int(np.ceil(x1 * sx))), max(py0 + 1, int(np.ceil(y1 * sy)))
    pixels = np.ascontiguousarray(image.pixels[py0:min(py1, h), px0:min(px1, w)])
    return DecodedImage(pixels=pixels, width=max(1, x1 - x0), height=max(1, y1 - y0), sha256=image.sha256,
                        format=image.format, n_bytes=0, jpeg_quality=image.jpeg_quality)


def shift_faces(faces: list[dict[str, Any]], offset: tuple[int, int], limit: tuple[int, int]) -> list[dict[str, Any]]:
    """YuNet's faces in a context crop ({x, y, w, h} in the crop's original pixels) → boxes
    [xmin, ymin, xmax, ymax] in the whole image's original pixels."""
    ox, oy = offset
    out = []
    for f in faces:
        b = f["box"]
        x0, y0 = int(b["x"]) + ox, int(b["y"]) + oy
        x1, y1 = min(limit[0], x0 + int(b["w"])), min(limit[1], y0 + int(b["h"]))
        if x1 > x0 and y1 > y0:
            out.append({"box": (x0, y0, x1, y1), "confidence": float(f.get("confidence", 0.0))})
    return out


def png_base64(image: DecodedImage, max_dim: int) -> str:
    """The crop as a PNG (longest side at most `max_dim`), base64."""
    rgb = resize_max(image.rgb, max_dim)
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:  # pragma: no cover - PNG encoding of a uint8 array does not fail
        raise RuntimeError("PNG encoding failed")
    return base64.b64encode(buf.tobytes()).decode("ascii")
