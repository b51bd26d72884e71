"""Prominent people ("person"): boxes around the people in an image, most prominent first.

The task layer needs one region per image, "the person this photo is about", to crop before it
tags, embeds or looks for a face. A segmentation model answers that better than a detector: the
person's own pixels say how much of the frame they fill, so "prominent" can mean "largest".
Two backends, chosen by PERSON_MODEL; both return, per image, a list of

    {"box": [xmin, ymin, xmax, ymax], "score": float, "area_share": float}

in ORIGINAL image pixels (`DecodedImage.width/height`, after EXIF rotation, whatever size the
pixels were decoded at): ints, clipped to the image, xmax/ymax the right/bottom pixel edges (so
width = xmax - xmin, as `app.tasks.regions` crops). An empty list means no person.

* ``deeplabv3`` (default): DeepLabV3 MobileNetV2 trained on PASCAL VOC, the uint8-quantised
  TFLite from google-coral/test_data (Apache-2.0), run on LiteRT (`ai_edge_litert`, XNNPACK on
  CPU). It takes uint8 RGB 513x513 and returns the argmaxed class map (class 15 = person).
  The image is fitted as DeepLab's own pipeline does: resized keeping its aspect ratio so the
  longest side is 513 (area filter when shrinking, bilinear when growing), placed top-left and
  padded bottom/right with 128, the input zero point, i.e. DeepLab's mean-pixel padding (a
  stretched square would distort people; padding elsewhere would shift the map). Only the
  image's part of the map is read back, scaled separately in x and y to the original size.
  The person pixels are split into 8-connected components (`cv2.connectedComponentsWithStats`).
  Components whose boxes overlap heavily (intersection >= MERGE_OVERLAP of the smaller box) are
  merged first: a person broken into interleaved pieces by something in front (a guitar or a bag
  strap across the body, a chair back) is one person, and specks inside a person's box join it.
  Pieces cut apart by a straight occluder (a pole) have side-by-side boxes, which is also what two
  people standing apart look like; those stay separate, as do boxes that barely overlap.
  `area_share` = the blob's pixels / the image's pixels (0..1). The model's output is already
  argmaxed, so no per-pixel confidence exists: `score` is the blob's share of all the person
  pixels in the image, dropped specks included (0..1, higher = this blob holds more of the
  "person" label; 1.0 = the only person blob; the scores of one image sum to at most 1). It is
  NOT a detection probability and is not comparable with ssdlite's.
* ``ssdlite``: torchvision's `ssdlite320_mobilenet_v3_large` COCO detector (label 1 = person),
  from the torchvision release's own state_dict file in the same folder. The image is stretched
  to 320x320 as torchvision's transform does (we do it with an area filter, so a large photo is
  not aliased), boxes are scaled back per axis. `score` is the detector's softmax score (0..1,
  higher = more confident); boxes under SSDLITE_SCORE_MIN (0.5) are dropped. With no mask,
  `area_share` is the box's share of the image (an overestimate of the person's pixels). It runs
  on the CPU (3.4 M parameters): `uses_torch` is a class declaration and the default backend
  is not torch.

Both backends drop people whose `area_share` is under PERSON_MIN_AREA (default 0.005: specks,
far-away passers-by) and order the rest with `rank_people`: larger `area_share` first; ties by
the box centre's distance to the image centre (nearer first), then top-most, then left-most, so
the order never depends on the model's output order.

A LiteRT Interpreter is not thread-safe, so the registry runs this adapter on its own thread.
Nothing is ever downloaded at run time: a missing file raises `ModelNotFound` naming where it
is expected; `PersonAdapter.download()` fetches the public file for scripts/download_models.py.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import cv2
import numpy as np

from app.imaging.decode import DecodedImage
from app.models.base import ModelAdapter, ModelNotFound
from app.models.download import fetch, weights_file
from app.models.litert import open_uint8_image_model

DEEPLAB_FILE = "deeplabv3_mnv2_pascal_quant.tflite"
DEEPLAB_URLS = ("https://github.com/google-coral/test_data/raw/master/deeplabv3_mnv2_pascal_quant.tflite",)
DEEPLAB_SHA256 = "350af47fd346ea6d74b58833a351f583ba860e9806ec5bd292ff8d8f1f249398"
DEEPLAB_INPUT_SIZE = 513
#: the input's zero point: 128 dequantises to 0.0, DeepLab's (mean-subtracted) padding value
DEEPLAB_PAD_VALUE = 128
#: PASCAL VOC class index of "person"
VOC_PERSON = 15

SSDLITE_FILE = "ssdlite320_mobilenet_v3_large_coco-a79551df.pth"
SSDLITE_URLS = ("https://download.pytorch.org/models/ssdlite320_mobilenet_v3_large_coco-a79551df.pth",)
#: torchvision publishes the sha256 prefix in the file name (torch.hub's check_hash)
SSDLITE_SHA256 = "a79551df"
SSDLITE_INPUT_SIZE = 320
#: COCO label of "person" in torchvision's 91-entry category list
COCO_PERSON = 1
SSDLITE_NUM_CLASSES = 91
#: torchvision's published parameter count for these weights (the architecture check in tests)
SSDLITE_NUM_PARAMS = 3_440_060
#: detector score under which a box is not a person (the usual operating point for COCO detectors)
SSDLITE_SCORE_MIN = 0.5

#: two person blobs merge when their boxes' intersection covers this share of the smaller box
MERGE_OVERLAP = 0.5

BACKENDS: tuple[str, ...] = ("deeplabv3", "ssdlite")


# --------------------------------------------------------------------------- input
@dataclass(frozen=True, eq=False)
class PersonInput:
    """One image as a backend takes it, and what maps its output back to original pixels."""

    pixels: np.ndarray  # HxWx3 uint8 RGB, the model's input size
    valid_w: int  # the image occupies pixels[:valid_h, :valid_w]; the rest is padding
    valid_h: int
    width: int  # original image size (after EXIF orientation)
    height: int


def letterbox(rgb: np.ndarray, size: int, pad_value: int) -> tuple[np.ndarray, int, int]:
    """`rgb` resized keeping its aspect ratio so its longest side is `size`, top-left on a
    size x size canvas of `pad_value`. Returns (canvas, valid_w, valid_h)."""
    h, w = rgb.shape[:2]
    scale = size / max(h, w)
    vw, vh = min(size, max(1, round(w * scale))), min(size, max(1, round(h * scale)))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    resized = rgb if (vw, vh) == (w, h) else cv2.resize(np.ascontiguousarray(rgb), (vw, vh), interpolation=interpolation)
    canvas = np.full((size, size, 3), pad_value, np.uint8)
    canvas[:vh, :vw] = resized
    return canvas, vw, vh


def deeplab_input(image: DecodedImage) -> PersonInput:
    """The 513x513 letterboxed input, made from the shared reduced copy (cached on the image)."""

    def make() -> PersonInput:
        canvas, vw, vh = letterbox(image.rgb_max(DEEPLAB_INPUT_SIZE), DEEPLAB_INPUT_SIZE, DEEPLAB_PAD_VALUE)
        return PersonInput(canvas, vw, vh, image.width, image.height)

    return image.cached(("person_deeplab", DEEPLAB_INPUT_SIZE), make)


def ssdlite_input(image: DecodedImage) -> PersonInput:
    """The 320x320 stretched input torchvision's SSDlite transform would make (cached on the image)."""

    def make() -> PersonInput:
        src = image.rgb_max(4 * SSDLITE_INPUT_SIZE)
        size = (SSDLITE_INPUT_SIZE, SSDLITE_INPUT_SIZE)
        interpolation = cv2.INTER_AREA if max(src.shape[:2]) > SSDLITE_INPUT_SIZE else cv2.INTER_LINEAR
        pixels = cv2.resize(np.ascontiguousarray(src), size, interpolation=interpolation)
        return PersonInput(pixels, SSDLITE_INPUT_SIZE, SSDLITE_INPUT_SIZE, image.width, image.height)

    return image.cached(("person_ssdlite", SSDLITE_INPUT_SIZE), make)


# --------------------------------------------------------------------------- boxes
def to_original_box(x0: float, y0: float, x1: float, y1: float, sx: float, sy: float,
                    width: int, height: int) -> list[int]:
    """A box in model pixels → [xmin, ymin, xmax, ymax] in original pixels: scaled, rounded,
    clipped to the image and at least one pixel wide and high."""
    bx0 = min(max(round(x0 * sx), 0), width - 1)
    by0 = min(max(round(y0 * sy), 0), height - 1)
    bx1 = min(max(round(x1 * sx), bx0 + 1), width)
    by1 = min(max(round(y1 * sy), by0 + 1), height)
    return [bx0, by0, bx1, by1]


def rank_people(people: list[dict[str, Any]], width: int, height: int) -> list[dict[str, Any]]:
    """Most prominent first: larger `area_share`; ties by the box centre's distance to the image
    centre (nearer first), then top-most, then left-most."""
    cx, cy = width / 2.0, height / 2.0

    def key(p: dict[str, Any]) -> tuple[float, float, int, int]:
        x0, y0, x1, y1 = p["box"]
        return -p["area_share"], math.hypot((x0 + x1) / 2.0 - cx, (y0 + y1) / 2.0 - cy), y0, x0

    return sorted(people, key=key)


@dataclass
class Blob:
    """One connected group of person pixels in the mask: its pixel count and box (mask pixels,
    x1/y1 exclusive)."""

    pixels: int
    x0: int
    y0: int
    x1: int
    y1: int

    def overlap_of_smaller(self, other: Blob) -> float:
        """Intersection of the two boxes / the smaller box's area."""
        iw = min(self.x1, other.x1) - max(self.x0, other.x0)
        ih = min(self.y1, other.y1) - max(self.y0, other.y0)
        if iw <= 0 or ih <= 0:
            return 0.0
        smaller = min((self.x1 - self.x0) * (self.y1 - self.y0), (other.x1 - other.x0) * (other.y1 - other.y0))
        return iw * ih / smaller

    def absorb(self, other: Blob) -> None:
        self.pixels += other.pixels
        self.x0, self.y0 = min(self.x0, other.x0), min(self.y0, other.y0)
        self.x1, self.y1 = max(self.x1, other.x1), max(self.y1, other.y1)


def mask_blobs(mask: np.ndarray) -> list[Blob]:
    """8-connected components of a boolean mask."""
    n, _, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    return [Blob(int(a), int(x), int(y), int(x + w), int(y + h))
            for x, y, w, h, a in stats[1:n]]  # row 0 is the background


def merge_overlapping(blobs: list[Blob], overlap: float = MERGE_OVERLAP) -> list[Blob]:
    """Merge blobs whose boxes overlap by at least `overlap` of the smaller box, until none do.
    Larger blobs absorb smaller ones, so the result does not depend on the input order."""
    merged: list[Blob] = []
    for blob in sorted(blobs, key=lambda b: (-b.pixels, b.y0, b.x0)):
        merged.append(Blob(blob.pixels, blob.x0, blob.y0, blob.x1, blob.y1))
        changed = True
        while changed:  # a grown box may now reach blobs it did not reach before
            changed = False
            last = merged[-1]
            for other in merged[:-1]:
                if last.overlap_of_smaller(other) >= overlap:
                    other.absorb(last)
                    merged.remove(last)
                    merged.remove(other)
                    merged.append(other)
                    changed = True
                    break
    return merged


def people_from_class_map(class_map: np.ndarray, width: int, height: int, min_area: float,
                          person_class: int = VOC_PERSON) -> list[dict[str, Any]]:
    """The image's part of a segmentation class map → ranked person boxes in original pixels.

    `class_map` is HxW (the valid region only, any resolution); `width`/`height` the original
    size it stands for. See the module docstring for `score`, `area_share` and the merge rule."""
    mask = np.asarray(class_map) == person_class
    total = int(mask.sum())
    if total == 0:
        return []
    mh, mw = mask.shape
    sx, sy = width / mw, height / mh
    people = []
    for blob in merge_overlapping(mask_blobs(mask)):
        area_share = blob.pixels / float(mask.size)
        if area_share < min_area:
            continue
        people.append({"box": to_original_box(blob.x0, blob.y0, blob.x1, blob.y1, sx, sy, width, height),
                       "score": blob.pixels / float(total), "area_share": area_share})
    return rank_people(people, width, height)


def people_from_detections(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, inp: PersonInput,
                           min_area: float, score_min: float = SSDLITE_SCORE_MIN,
                           person_label: int = COCO_PERSON) -> list[dict[str, Any]]:
    """Detector output (boxes x0, y0, x1, y1 in `inp.pixels` coordinates) → ranked person boxes
    in original pixels; `area_share` is the box's share of the image."""
    sx, sy = inp.width / inp.valid_w, inp.height / inp.valid_h
    people = []
    for (x0, y0, x1, y1), score, label in zip(np.asarray(boxes, np.float64).reshape(-1, 4), scores, labels):
        if int(label) != person_label or float(score) < score_min:
            continue
        box = to_original_box(x0, y0, x1, y1, sx, sy, inp.width, inp.height)
        area_share = (box[2] - box[0]) * (box[3] - box[1]) / float(inp.width * inp.height)
        if area_share < min_area:
            continue
        people.append({"box": box, "score": float(score), "area_share": area_share})
    return rank_people(people, inp.width, inp.height)


# --------------------------------------------------------------------------- backends
class DeepLabPeople:
    """DeepLabV3 on LiteRT: one 513x513 image per invoke."""

    def __init__(self, file: Path, threads: int):
        size = DEEPLAB_INPUT_SIZE
        self.interpreter, inp, out = open_uint8_image_model(file, threads, size)
        if list(out["shape"][1:]) != [size, size]:
            raise ValueError(f"{file.name}: expected a {size}x{size} class map, got {list(out['shape'])}")
        self._in, self._out = inp["index"], out["index"]

    def class_map(self, inp: PersonInput) -> np.ndarray:
        """The argmaxed class map of the image's part of the input (valid_h x valid_w)."""
        self.interpreter.set_tensor(self._in, np.ascontiguousarray(inp.pixels, np.uint8)[None])
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self._out)[0, : inp.valid_h, : inp.valid_w].copy()

    def people(self, batch: Sequence[PersonInput], min_area: float) -> list[list[dict[str, Any]]]:
        return [people_from_class_map(self.class_map(x), x.width, x.height, min_area) for x in batch]


def build_ssdlite():
    """torchvision's ssdlite320_mobilenet_v3_large with the COCO release's architecture (91
    classes; no backbone weights, which also selects the reduced tail the release has), random
    weights, nothing downloaded."""
    from torchvision.models.detection import ssdlite320_mobilenet_v3_large

    return ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=SSDLITE_NUM_CLASSES)


class SsdlitePeople:
    """torchvision SSDlite on the CPU; the whole batch in one forward."""

    def __init__(self, file: Path, settings: Any):
        import torch

        from app.models.torch_runtime import configure_torch_threads

        self.settings = settings
        configure_torch_threads(settings)
        try:
            state = torch.load(str(file), map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ValueError(f"{file} is not a readable PyTorch state_dict: {exc}") from exc
        if not isinstance(state, dict):
            raise TypeError(f"{file} does not contain a state_dict")
        net = build_ssdlite()
        try:
            net.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise ValueError(f"{file} is not torchvision's ssdlite320_mobilenet_v3_large COCO state_dict: "
                             f"{str(exc)[:400]}") from exc
        self.net = net.eval().requires_grad_(False)

    def people(self, batch: Sequence[PersonInput], min_area: float) -> list[list[dict[str, Any]]]:
        import torch

        from app.models.torch_runtime import configure_torch_threads

        if not batch:
            return []
        configure_torch_threads(self.settings)
        tensors = [torch.from_numpy(np.require(x.pixels, np.uint8, ["C", "W"])).permute(2, 0, 1).float().div_(255.0)
                   for x in batch]
        with torch.inference_mode():
            outs = self.net(tensors)
        return [people_from_detections(o["boxes"].numpy(), o["scores"].numpy(), o["labels"].numpy(), x, min_area)
                for o, x in zip(outs, batch)]


# --------------------------------------------------------------------------- adapter
class PersonAdapter(ModelAdapter):
    name = "person"
    title = "Prominent-person boxes (DeepLabV3 MobileNetV2 VOC person mask, TFLite; or torchvision SSDlite COCO)"
    path_setting = "person_path"
    default_subdir = "person"
    source = DEEPLAB_URLS[0]
    files: ClassVar[tuple[str, ...]] = (DEEPLAB_FILE,)
    #: the PERSON_MODEL=ssdlite file, which the same folder may hold
    alt_files: ClassVar[tuple[str, ...]] = (SSDLITE_FILE,)
    sha256: ClassVar[dict[str, str]] = {DEEPLAB_FILE: DEEPLAB_SHA256, SSDLITE_FILE: SSDLITE_SHA256}
    thread_safe = False
    max_batch = 8

    _impl: DeepLabPeople | SsdlitePeople  # set by load

    @property
    def backend(self) -> str:
        backend = str(self.settings.person_model or "deeplabv3").lower()
        if backend not in BACKENDS:
            raise ValueError(f"PERSON_MODEL must be one of {BACKENDS}, not {backend!r}")
        return backend

    def model_file(self, path: Path) -> Path:
        """The backend's file: `path` itself when it names one, else the file in folder `path`."""
        if self.backend == "ssdlite":
            return weights_file(path, SSDLITE_FILE, (".pth", ".pt"))
        return weights_file(path, DEEPLAB_FILE)

    def load(self, path: Path, device: str) -> None:  # CPU whatever `device` says (see the docstring)
        f = self.model_file(Path(path))
        if not f.is_file():
            wanted, url = (SSDLITE_FILE, SSDLITE_URLS[0]) if self.backend == "ssdlite" else (DEEPLAB_FILE, DEEPLAB_URLS[0])
            raise ModelNotFound(
                f"Person model ({self.backend}) not found: {f} does not exist. Put {wanted} there "
                f"(scripts/download_models.py person fetches it from {url}, or copies it with "
                "--from ../shared/weights) or point PERSON_PATH at the file or its folder.")
        self._impl = SsdlitePeople(f, self.settings) if self.backend == "ssdlite" else DeepLabPeople(f, self.settings.threads)

    def prepare(self, image: DecodedImage) -> PersonInput:
        return ssdlite_input(image) if self.backend == "ssdlite" else deeplab_input(image)

    def predict(self, batch: Sequence[Any]) -> list[list[dict[str, Any]]]:
        inputs = [x if isinstance(x, PersonInput) else self.prepare(x) for x in batch]
        return self._impl.people(inputs, float(self.settings.person_min_area))

    @classmethod
    def download(cls, dest: Path, backend: str = "deeplabv3") -> list[Path]:
        """Fetch the backend's file into the folder `dest` (MODEL_DIR/person)."""
        if backend == "ssdlite":
            return [fetch(SSDLITE_URLS, weights_file(Path(dest), SSDLITE_FILE, (".pth", ".pt")), SSDLITE_SHA256)]
        return [fetch(DEEPLAB_URLS, weights_file(Path(dest), DEEPLAB_FILE), DEEPLAB_SHA256)]
