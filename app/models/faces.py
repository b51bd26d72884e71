"""Faces: the YuNet face detector ("faces"), and what every face model shares.

`YunetAdapter` ("faces") runs OpenCV's `FaceDetectorYN` on a BGR copy of the image
whose longest side is at most EMOTION_MAX_DIM, and maps every box and landmark back
to the ORIGINAL image's pixel coordinates (`DecodedImage.width/height`).

The emotion model (emotion.py and its backends deepface_emotion.py, mini_xception.py)
takes the same per-image `FaceInput`, maps its boxes back with the same `map_box`, and
reports each face with `emotion_result` in the FER2013 label order. Those live here,
next to the detector, because they are one contract: a face is a box in the original
image, found on one shared downscaled copy. The mini-Xception backend also finds its
faces with `YunetAdapter`.

Nothing is ever downloaded at run time: a missing file raises `ModelNotFound` naming
the path where it is expected. `YunetAdapter.download()` fetches the public file for
scripts/download_models.py.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import cv2
import numpy as np

from app.imaging.decode import DecodedImage
from app.models.base import ModelAdapter, ModelNotFound
from app.models.download import fetch, weights_file

#: FER2013 / DeepFace class order (both models use it).
EMOTION_LABELS: tuple[str, ...] = (
    "angry",
    "disgust",
    "fear",
    "happy",
    "sad",
    "surprise",
    "neutral",
)
#: YuNet's five landmarks, in its output order. "right"/"left" are the SUBJECT's
#: (a frontal face's right eye is on the image's left), as in DeepFace.
LANDMARK_NAMES: tuple[str, ...] = ("right_eye", "left_eye", "nose", "mouth_right", "mouth_left")

YUNET_FILE = "face_detection_yunet_2023mar.onnx"
YUNET_URLS = (
    "https://github.com/opencv/opencv_zoo/raw/main/models/face_detection_yunet/face_detection_yunet_2023mar.onnx",
    "https://github.com/ShiqiYu/libfacedetection.train/raw/master/onnx/yunet_s_640_640.onnx",
)
YUNET_SHA256 = "8f2383e4dd3cfbb4553ea8718107fc0423210dc964f9f4280604804ed2552fa4"


# --------------------------------------------------------------------------- input and boxes
@dataclass(frozen=True, eq=False)
class FaceInput:
    """What both adapters get per image: a downscaled BGR copy and the original size."""

    bgr: np.ndarray  # HxWx3 uint8 BGR, contiguous, longest side <= EMOTION_MAX_DIM
    width: int  # original image width (after EXIF orientation)
    height: int

    @property
    def scale(self) -> tuple[float, float]:
        """(sx, sy): multiply a coordinate in `bgr` by these to get original pixels."""
        h, w = self.bgr.shape[:2]
        return self.width / w, self.height / h


def face_input(image: DecodedImage, max_dim: int) -> FaceInput:
    """BGR copy (longest side <= max_dim) cached on the image, shared by faces and emotion."""
    bgr = image.cached(
        ("bgr", max_dim), lambda: np.ascontiguousarray(image.rgb_max(max_dim)[:, :, ::-1])
    )
    return FaceInput(bgr=bgr, width=image.width, height=image.height)


def as_face_input(item: Any, max_dim: int) -> FaceInput:
    """A FaceInput as is, or made from a DecodedImage (what `predict` accepts)."""
    if isinstance(item, FaceInput):
        return item
    if isinstance(item, DecodedImage):
        return face_input(item, max_dim)
    raise TypeError(f"expected FaceInput or DecodedImage, got {type(item).__name__}")


def map_box(x: float, y: float, w: float, h: float, inp: FaceInput) -> dict[str, int] | None:
    """A box in `inp.bgr` pixels → {x, y, w, h} in original pixels, clipped to the image."""
    sx, sy = inp.scale
    x, y, w, h = float(x), float(y), float(w), float(h)
    x0 = min(max(x * sx, 0.0), inp.width)
    y0 = min(max(y * sy, 0.0), inp.height)
    x1 = min(max((x + w) * sx, 0.0), inp.width)
    y1 = min(max((y + h) * sy, 0.0), inp.height)
    bx, by = round(x0), round(y0)
    bw, bh = round(x1) - bx, round(y1) - by
    if bw <= 0 or bh <= 0:
        return None
    return {"x": bx, "y": by, "w": bw, "h": bh}


def map_point(x: float, y: float, inp: FaceInput) -> dict[str, int]:
    """A point in `inp.bgr` pixels → {x, y} in original pixels, inside the image."""
    sx, sy = inp.scale
    return {
        "x": min(max(round(float(x) * sx), 0), inp.width - 1),
        "y": min(max(round(float(y) * sy), 0), inp.height - 1),
    }


def emotion_result(box: dict[str, int], confidence: float, probs: np.ndarray) -> dict[str, Any]:
    """One face's result; `probs` (7,) non-negative, renormalised to sum to 1."""
    p = np.clip(np.asarray(probs, dtype=np.float64).reshape(-1), 0.0, None)
    total = float(p.sum())
    p = p / total if total > 0 else np.full(len(EMOTION_LABELS), 1.0 / len(EMOTION_LABELS))
    return {
        "box": box,
        "confidence": float(min(max(confidence, 0.0), 1.0)),
        "dominant_emotion": EMOTION_LABELS[int(np.argmax(p))],
        "emotions": {label: float(v) for label, v in zip(EMOTION_LABELS, p)},
    }


# --------------------------------------------------------------------------- YuNet
class YunetAdapter(ModelAdapter):
    name = "faces"
    title = "Face detection (YuNet 2023mar, OpenCV FaceDetectorYN)"
    path_setting = "yunet_path"
    default_subdir = "yunet"
    source = YUNET_URLS[0]
    files: ClassVar[tuple[str, ...]] = (YUNET_FILE,)
    sha256: ClassVar[dict[str, str]] = {YUNET_FILE: YUNET_SHA256}
    max_batch = 16

    # FACE_SCORE_THRESHOLD (default 0.8): OpenCV zoo / DeepFace use 0.9; the astronaut's face
    # scores 0.93, so 0.8 keeps some margin for harder photos without letting in the background.
    NMS_THRESHOLD: ClassVar[float] = 0.3
    TOP_K: ClassVar[int] = 5000

    def load(self, path: Path, device: str) -> None:
        model_file = weights_file(path, YUNET_FILE)
        if not model_file.is_file():
            raise ModelNotFound(
                f"YuNet face detector weights not found: {model_file} does not exist. Put "
                f"{YUNET_FILE} there (scripts/download_models.py fetches it from {YUNET_URLS[0]}) "
                "or point YUNET_PATH at the file or its folder."
            )
        if not hasattr(cv2, "FaceDetectorYN"):
            raise RuntimeError(f"OpenCV {cv2.__version__} has no FaceDetectorYN (needs >= 4.8)")
        self.score_threshold = float(self.settings.face_score_threshold)
        self._detector = cv2.FaceDetectorYN.create(
            str(model_file), "", (320, 320), self.score_threshold, self.NMS_THRESHOLD, self.TOP_K
        )
        # setInputSize + detect mutate the detector: one image at a time per instance.
        self._lock = threading.Lock()

    def prepare(self, image: DecodedImage) -> FaceInput:
        return face_input(image, self.settings.emotion_max_dim)

    def predict(self, batch: Sequence[Any]) -> list[list[dict[str, Any]]]:
        return [self.detect(as_face_input(item, self.settings.emotion_max_dim)) for item in batch]

    def detect_raw(self, bgr: np.ndarray) -> np.ndarray:
        """YuNet rows (n, 15) in `bgr` pixels: x, y, w, h, 5 landmarks (x, y), score."""
        h, w = bgr.shape[:2]
        with self._lock:
            self._detector.setInputSize((w, h))
            _, faces = self._detector.detect(bgr)
        if faces is None:
            return np.zeros((0, 15), np.float32)
        return faces[np.argsort(-faces[:, 14])]

    def detect(self, inp: FaceInput) -> list[dict[str, Any]]:
        out = []
        for row in self.detect_raw(inp.bgr):
            box = map_box(row[0], row[1], row[2], row[3], inp)
            if box is None:
                continue
            landmarks = {
                name: map_point(row[4 + 2 * i], row[5 + 2 * i], inp)
                for i, name in enumerate(LANDMARK_NAMES)
            }
            out.append({"box": box, "confidence": float(row[14]), "landmarks": landmarks})
        return out

    @classmethod
    def download(cls, dest: Path) -> list[Path]:
        """Fetch the YuNet ONNX into the folder `dest` (MODEL_DIR/yunet)."""
        return [fetch(YUNET_URLS, weights_file(Path(dest), YUNET_FILE), YUNET_SHA256)]
