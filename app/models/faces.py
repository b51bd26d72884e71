"""Faces: detection with YuNet, and the emotion of each face.

`YunetAdapter` ("faces") runs OpenCV's `FaceDetectorYN` on a BGR copy of the image
whose longest side is at most EMOTION_MAX_DIM, and maps every box and landmark back
to the ORIGINAL image's pixel coordinates (`DecodedImage.width/height`).

`EmotionAdapter` ("emotion") has two backends, chosen by EMOTION_MODEL:

* ``deepface`` (default): DeepFace's face detector (DEEPFACE_DETECTOR, default
  ``opencv``) and DeepFace's own 7-class emotion CNN on its PyTorch backend, read
  from ``DEEPFACE_HOME/.deepface/weights/facial_expression_model_weights.pth``
  (DEEPFACE_HOME = the DEEPFACE_HOME setting, else MODEL_DIR/deepface). DeepFace
  is not thread-safe, so the registry gives this adapter its own worker thread.
* ``mini_xception``: faces from YuNet, emotions from the FER2013 mini-Xception of
  oarriaga/face_classification (a Keras 2 HDF5 file, read with h5py into a torch
  re-implementation).

Nothing is ever downloaded at run time unless ALLOW_MODEL_DOWNLOADS is true: a
missing file raises `ModelNotFound` naming the path where it is expected. The
`download()` classmethods fetch the public files for scripts/download_models.py.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import cv2
import numpy as np

from app.core.config import Settings
from app.imaging.decode import DecodedImage
from app.models.base import ModelAdapter, ModelNotFound

log = logging.getLogger("loupe.models.faces")

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

#: DeepFace 0.0.103 weight file per backend engine, under DEEPFACE_HOME/.deepface/weights
DEEPFACE_EMOTION_FILES = {
    "pytorch": "facial_expression_model_weights.pth",
    "onnx": "facial_expression_model_weights.onnx",
    "tensorflow": "facial_expression_model_weights.h5",
}
#: where DeepFace 0.0.103 (pytorch backend) downloads it from, primary then backup
DEEPFACE_EMOTION_URLS = (
    "https://github.com/serengil/deepface_models/releases/download/v1.0/facial_expression_model_weights.pth",
    "https://huggingface.co/serengil/deepface/resolve/main/facial_expression_model_weights.pth",
)
#: not published by DeepFace; pin it here once a download has been checked
DEEPFACE_EMOTION_SHA256: str | None = None

MINI_XCEPTION_FILE = "fer2013_mini_XCEPTION.102-0.66.hdf5"
MINI_XCEPTION_URLS = (
    (
        "https://github.com/oarriaga/face_classification/raw/master/trained_models/emotion_models/"
        "fer2013_mini_XCEPTION.102-0.66.hdf5"
    ),
)
MINI_XCEPTION_SHA256 = "59534287fdfb125e30a94400296c25ea9f5d706fca93dd8adbbbed916799ea0e"


# --------------------------------------------------------------------------- input
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


def _as_face_input(item: Any, max_dim: int) -> FaceInput:
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


# --------------------------------------------------------------------------- downloads
def fetch(urls: Sequence[str], target: Path, sha256: str | None) -> Path:
    """Download the first URL that works to `target` (progress bar), checking sha256."""
    from app.models.download import fetch as shared_fetch

    return shared_fetch(urls, target, sha256)


# --------------------------------------------------------------------------- YuNet
def yunet_file(path: Path) -> Path:
    """YUNET_PATH may name the .onnx file itself or the folder holding it."""
    return path if path.suffix == ".onnx" else path / YUNET_FILE


class YunetAdapter(ModelAdapter):
    name = "faces"
    title = "Face detection (YuNet 2023mar, OpenCV FaceDetectorYN)"
    path_setting = "yunet_path"
    default_subdir = "yunet"
    source = YUNET_URLS[0]
    files: ClassVar[tuple[str, ...]] = (YUNET_FILE,)
    max_batch = 16

    # FACE_SCORE_THRESHOLD (default 0.8): OpenCV zoo / DeepFace use 0.9; the astronaut's face
    # scores 0.93, so 0.8 keeps some margin for harder photos without letting in the background.
    NMS_THRESHOLD: ClassVar[float] = 0.3
    TOP_K: ClassVar[int] = 5000

    def load(self, path: Path, device: str) -> None:
        model_file = yunet_file(path)
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
        return [self.detect(_as_face_input(item, self.settings.emotion_max_dim)) for item in batch]

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
            box = map_box(*row[:4], inp)
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
        return [fetch(YUNET_URLS, yunet_file(Path(dest)), YUNET_SHA256)]


# --------------------------------------------------------------------------- DeepFace
_deepface_downloads_allowed = False
_deepface_guard_lock = threading.Lock()


def configure_deepface_env(home: Path) -> None:
    """Environment DeepFace reads. DEEPFACE_HOME is read on every weight lookup; the
    backend engine and the log level are fixed by deepface at first use / import."""
    os.environ["DEEPFACE_HOME"] = str(home)
    os.environ.setdefault("DEEPFACE_BACKEND_ENGINE", "pytorch")
    os.environ.setdefault("DEEPFACE_LOG_LEVEL", str(logging.WARNING))


def _install_deepface_download_guard() -> None:
    """Route every DeepFace weight lookup through a check that refuses to download.

    All of DeepFace 0.0.103's models and detectors fetch their files through
    `deepface.commons.weight_utils.download_weights_if_necessary`, looked up on the
    module at call time, so replacing it there covers them all (also the detectors
    DeepFace builds lazily during a request, e.g. the opencv eye finder).
    """
    from deepface.commons import folder_utils, weight_utils

    with _deepface_guard_lock:
        if getattr(weight_utils.download_weights_if_necessary, "_loupe_guard", False):
            return
        original = weight_utils.download_weights_if_necessary

        def guarded(file_name: str, source_url: Any, compress_type: str | None = None) -> str:
            target = Path(folder_utils.get_deepface_home()) / ".deepface" / "weights" / file_name
            if not target.is_file():
                if not _deepface_downloads_allowed:
                    urls = [source_url] if isinstance(source_url, str) else list(source_url)
                    raise ModelNotFound(
                        f"DeepFace weights not found: {target} does not exist and model downloads "
                        f"are disabled (ALLOW_MODEL_DOWNLOADS=false). Download {file_name} from "
                        f"{urls[0]} into {target.parent}."
                    )
                folder_utils.initialize_folder()
            return original(file_name, source_url, compress_type)

        guarded._loupe_guard = True  # type: ignore[attr-defined]
        weight_utils.download_weights_if_necessary = guarded


class _DeepFaceEmotion:
    """DeepFace detection + DeepFace's emotion CNN (its own preprocessing, batched)."""

    def __init__(self, settings: Settings, home: Path, device: str):
        global _deepface_downloads_allowed
        self.detector_backend = settings.deepface_detector
        configure_deepface_env(home)

        from deepface.commons import backend_utils

        engine = backend_utils.get_backend_engine()  # cached by deepface for the process
        weights = home / ".deepface" / "weights" / DEEPFACE_EMOTION_FILES.get(engine, "?")
        if not weights.is_file() and not settings.allow_model_downloads:
            raise ModelNotFound(
                f"DeepFace emotion weights not found: {weights} does not exist (DEEPFACE_HOME="
                f"{home}, backend {engine}). Download facial_expression_model_weights from "
                f"{DEEPFACE_EMOTION_URLS[0]} into that folder (scripts/download_models.py does), "
                "or set ALLOW_MODEL_DOWNLOADS=true."
            )
        _deepface_downloads_allowed = bool(settings.allow_model_downloads)
        _install_deepface_download_guard()

        from deepface.modules import modeling

        # A fresh instance (not modeling.build_model's process-wide cache), so a reload
        # reads the files of the current DEEPFACE_HOME. Built once, reused by every call.
        self.client = modeling.get_model_class(task="facial_attribute", model_name="Emotion")()
        if engine == "pytorch":
            import torch

            self.client.device = torch.device(device)
            self.client.model.to(self.client.device).eval()
        # Detectors are stateless w.r.t. DEEPFACE_HOME: DeepFace's cache is fine. Build
        # it now so a missing detector file fails the load, not a request.
        modeling.build_model(task="face_detector", model_name=self.detector_backend)

    def analyze(self, batch: Sequence[FaceInput]) -> list[list[dict[str, Any]]]:
        from deepface.modules import detection, preprocessing
        from deepface.modules.exceptions import FaceNotDetected, ImgNotFound

        crops: list[np.ndarray] = []
        metas: list[tuple[int, dict[str, int], float]] = []
        for idx, inp in enumerate(batch):
            h, w = inp.bgr.shape[:2]
            try:  # enforce_detection=True raises instead of returning the whole image
                faces = detection.extract_faces(
                    img_path=inp.bgr,
                    detector_backend=self.detector_backend,
                    enforce_detection=self.detector_backend != "skip",
                    align=True,
                    expand_percentage=0,
                )
            except (FaceNotDetected, ImgNotFound):  # no face / only zero-size ones
                continue
            for face in faces:
                area, conf = face["facial_area"], float(face.get("confidence") or 0.0)
                # DeepFace's "no face" stand-in: the whole image with confidence 0
                # (with DEEPFACE_DETECTOR=skip the whole image IS the face).
                if (
                    self.detector_backend != "skip"
                    and conf == 0.0
                    and area["x"] == 0
                    and area["y"] == 0
                    and area["w"] >= w - 1
                    and area["h"] >= h - 1
                ):
                    continue
                content = face["face"]
                if content.shape[0] == 0 or content.shape[1] == 0:
                    continue
                box = map_box(area["x"], area["y"], area["w"], area["h"], inp)
                if box is None:
                    continue
                # Exactly DeepFace.analyze's preprocessing: RGB [0,1] → BGR → 224x224
                # letterbox; the model then takes gray 48x48.
                crops.append(
                    preprocessing.resize_image(img=content[:, :, ::-1], target_size=(224, 224))
                )
                metas.append((idx, box, conf))
        out: list[list[dict[str, Any]]] = [[] for _ in batch]
        if not crops:
            return out
        probs = np.atleast_2d(self.client.predict(np.concatenate(crops, axis=0)))
        for (idx, box, conf), p in zip(metas, probs):
            out[idx].append(emotion_result(box, conf, p))
        for faces in out:
            faces.sort(key=lambda f: -f["confidence"])
        return out


# --------------------------------------------------------------------------- mini-Xception
def _build_mini_xception(num_classes: int = 7):
    import torch
    import torch.nn.functional as F
    from torch import nn

    def bn(c: int) -> nn.BatchNorm2d:
        return nn.BatchNorm2d(c, eps=1e-3)  # Keras' default epsilon

    class SeparableConv(nn.Module):
        def __init__(self, cin: int, cout: int):
            super().__init__()
            self.depthwise = nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False)
            self.pointwise = nn.Conv2d(cin, cout, 1, bias=False)

        def forward(self, x):
            return self.pointwise(self.depthwise(x))

    class Block(nn.Module):
        def __init__(self, cin: int, cout: int):
            super().__init__()
            self.sep1, self.bn1 = SeparableConv(cin, cout), bn(cout)
            self.sep2, self.bn2 = SeparableConv(cout, cout), bn(cout)
            self.res_conv, self.res_bn = nn.Conv2d(cin, cout, 1, stride=2, bias=False), bn(cout)

        def forward(self, x):
            residual = self.res_bn(self.res_conv(x))
            y = self.bn2(self.sep2(F.relu(self.bn1(self.sep1(x)))))
            # Keras MaxPooling2D((3,3), strides 2, padding="same"): TF pads bottom/right first
            h, w = y.shape[-2:]
            ph, pw = max((-(-h // 2) - 1) * 2 + 3 - h, 0), max((-(-w // 2) - 1) * 2 + 3 - w, 0)
            y = F.pad(y, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), value=float("-inf"))
            return F.max_pool2d(y, 3, stride=2) + residual

    class MiniXception(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.bn1 = nn.Conv2d(1, 8, 3, bias=False), bn(8)
            self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, bias=False), bn(8)
            self.blocks = nn.ModuleList(
                [Block(8, 16), Block(16, 32), Block(32, 64), Block(64, 128)]
            )
            self.head = nn.Conv2d(128, num_classes, 3, padding=1)

        def forward(self, x):  # (n, 1, 64, 64) in [-1, 1]
            x = F.relu(self.bn1(self.conv1(x)))
            x = F.relu(self.bn2(self.conv2(x)))
            for block in self.blocks:
                x = block(x)
            return torch.softmax(self.head(x).mean(dim=(2, 3)), dim=1)

        def keras_order(self) -> list[nn.Module]:
            """Weighted layers in the order the Keras model config lists them."""
            mods: list[nn.Module] = [self.conv1, self.bn1, self.conv2, self.bn2]
            for b in self.blocks:
                mods += [b.sep1, b.bn1, b.sep2, b.bn2, b.res_conv, b.res_bn]
            return mods + [self.head]

    return MiniXception()


def load_keras_mini_xception(path: Path):
    """Read the Keras 2 full-model HDF5 into the torch mini-Xception (eval mode)."""
    import json

    import h5py
    import torch

    model = _build_mini_xception()
    with h5py.File(path, "r") as f:
        config = f.attrs["model_config"]
        config = json.loads(config.decode() if isinstance(config, bytes) else config)
        group = f.get("model_weights", f)
        layers = []
        for layer in config["config"]["layers"]:
            g = group.get(layer["config"]["name"])
            names = (
                [n.decode() if isinstance(n, bytes) else n for n in g.attrs.get("weight_names", [])]
                if g
                else []
            )
            if names:
                weights = {n.split("/")[-1].split(":")[0]: np.asarray(g[n]) for n in names}
                layers.append((layer["class_name"], layer["config"]["name"], weights))
    targets = model.keras_order()
    if len(layers) != len(targets):
        raise ValueError(
            f"{path}: {len(layers)} weighted layers, the mini-Xception has {len(targets)}"
        )

    def put(param: torch.Tensor, value: np.ndarray, what: str) -> None:
        t = torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32))
        if tuple(t.shape) != tuple(param.shape):
            raise ValueError(
                f"{path}: {what} has shape {tuple(t.shape)}, expected {tuple(param.shape)}"
            )
        param.data.copy_(t)

    for (kind, name, w), mod in zip(layers, targets):
        if kind == "Conv2D":
            put(mod.weight, w["kernel"].transpose(3, 2, 0, 1), name)
            if "bias" in w:
                put(mod.bias, w["bias"], name)
        elif kind == "SeparableConv2D":
            put(mod.depthwise.weight, w["depthwise_kernel"].transpose(2, 3, 0, 1), name)
            put(mod.pointwise.weight, w["pointwise_kernel"].transpose(3, 2, 0, 1), name)
        elif kind == "BatchNormalization":
            put(mod.weight, w["gamma"], name)
            put(mod.bias, w["beta"], name)
            put(mod.running_mean, w["moving_mean"], name)
            put(mod.running_var, w["moving_variance"], name)
        else:
            raise ValueError(f"{path}: unexpected weighted layer {kind} {name}")
    return model.eval()


class _MiniXceptionEmotion:
    """YuNet faces + FER2013 mini-Xception (64x64 gray, (x/255 - 0.5) * 2)."""

    #: the face box is widened by this fraction of its size on each side before the
    #: square crop (FER2013 faces include the forehead and a little of the background)
    MARGIN: ClassVar[float] = 0.1

    def __init__(self, settings: Settings, path: Path, device: str):
        model_file = path if path.suffix in (".hdf5", ".h5") else path / MINI_XCEPTION_FILE
        if not model_file.is_file():
            raise ModelNotFound(
                f"FER2013 mini-Xception weights not found: {model_file} does not exist. Put "
                f"{MINI_XCEPTION_FILE} there (scripts/download_models.py fetches it from "
                f"{MINI_XCEPTION_URLS[0]}) or point EMOTION_MINI_XCEPTION_PATH at it."
            )
        try:
            import h5py  # noqa: F401
        except ImportError as exc:
            raise RuntimeError("EMOTION_MODEL=mini_xception needs h5py (pip install h5py)") from exc
        import torch

        self.torch = torch
        self.device = torch.device(device)
        self.model = load_keras_mini_xception(model_file).to(self.device)
        self.yunet = YunetAdapter(settings)
        self.yunet.load(self.yunet.resolve_path(), "cpu")

    def crop(self, gray: np.ndarray, row: np.ndarray) -> np.ndarray:
        x, y, w, h = (float(v) for v in row[:4])
        side = max(w, h) * (1 + 2 * self.MARGIN)
        cx, cy = x + w / 2, y + h / 2
        x0, y0 = round(cx - side / 2), round(cy - side / 2)
        s = max(1, round(side))
        # pad with edge pixels where the square leaves the image
        pad = max(0, -x0, -y0, x0 + s - gray.shape[1], y0 + s - gray.shape[0])
        if pad:
            gray = cv2.copyMakeBorder(gray, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
            x0, y0 = x0 + pad, y0 + pad
        face = gray[y0 : y0 + s, x0 : x0 + s]
        interp = cv2.INTER_AREA if s > 64 else cv2.INTER_LINEAR
        return cv2.resize(face, (64, 64), interpolation=interp)

    def analyze(self, batch: Sequence[FaceInput]) -> list[list[dict[str, Any]]]:
        crops, metas = [], []
        for idx, inp in enumerate(batch):
            gray = None
            for row in self.yunet.detect_raw(inp.bgr):
                box = map_box(*row[:4], inp)
                if box is None:
                    continue
                if gray is None:
                    gray = cv2.cvtColor(inp.bgr, cv2.COLOR_BGR2GRAY)
                crops.append(self.crop(gray, row))
                metas.append((idx, box, float(row[14])))
        out: list[list[dict[str, Any]]] = [[] for _ in batch]
        if not crops:
            return out
        x = (np.stack(crops).astype(np.float32) / 255.0 - 0.5) * 2.0
        with self.torch.inference_mode():
            probs = self.model(self.torch.from_numpy(x[:, None]).to(self.device)).cpu().numpy()
        for (idx, box, conf), p in zip(metas, probs):
            out[idx].append(emotion_result(box, conf, p))
        return out


# --------------------------------------------------------------------------- emotion adapter
class EmotionAdapter(ModelAdapter):
    name = "emotion"
    title = "Facial emotion (DeepFace emotion CNN, or the FER2013 mini-Xception)"
    path_setting = "deepface_home"
    default_subdir = "deepface"
    source = DEEPFACE_EMOTION_URLS[0]
    files: ClassVar[tuple[str, ...]] = (".deepface/weights/" + DEEPFACE_EMOTION_FILES["pytorch"],)
    thread_safe = False
    uses_torch = True
    max_batch = 8

    BACKENDS: ClassVar[tuple[str, ...]] = ("deepface", "mini_xception")

    @property
    def backend(self) -> str:
        backend = str(self.settings.emotion_model or "deepface").lower()
        if backend not in self.BACKENDS:
            raise ValueError(f"EMOTION_MODEL must be one of {self.BACKENDS}, not {backend!r}")
        return backend

    def resolve_path(self) -> Path:
        if self.backend == "mini_xception":
            override = self.settings.emotion_mini_xception_path
            if override:
                return Path(override).expanduser()
            return Path(self.settings.model_dir).expanduser() / "emotion_mini_xception"
        return super().resolve_path()

    def load(self, path: Path, device: str) -> None:
        if self.backend == "mini_xception":
            self._impl = _MiniXceptionEmotion(self.settings, path, device)
        else:
            self._impl = _DeepFaceEmotion(self.settings, path, device)

    def prepare(self, image: DecodedImage) -> FaceInput:
        return face_input(image, self.settings.emotion_max_dim)

    def predict(self, batch: Sequence[Any]) -> list[list[dict[str, Any]]]:
        inputs = [_as_face_input(item, self.settings.emotion_max_dim) for item in batch]
        return self._impl.analyze(inputs)

    @classmethod
    def download(
        cls, dest: Path, backend: str = "deepface", detector: str = "opencv"
    ) -> list[Path]:
        """`dest`: DEEPFACE_HOME (deepface) or the mini-Xception folder (mini_xception).

        With DEEPFACE_DETECTOR=yunet, DeepFace also reads the YuNet ONNX from
        DEEPFACE_HOME/.deepface/weights; `detector="yunet"` fetches it there too.
        """
        dest = Path(dest)
        if backend == "mini_xception":
            return [fetch(MINI_XCEPTION_URLS, dest / MINI_XCEPTION_FILE, MINI_XCEPTION_SHA256)]
        weights = dest / ".deepface" / "weights"
        paths = [
            fetch(
                DEEPFACE_EMOTION_URLS,
                weights / DEEPFACE_EMOTION_FILES["pytorch"],
                DEEPFACE_EMOTION_SHA256,
            )
        ]
        if detector == "yunet":
            paths.append(fetch(YUNET_URLS, weights / YUNET_FILE, YUNET_SHA256))
        return paths
