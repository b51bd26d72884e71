"""DeepFace's emotion model: the default backend of the "emotion" adapter (emotion.py).

DeepFace's face detector (DEEPFACE_DETECTOR, default ``opencv``) and DeepFace's own
7-class emotion CNN on its PyTorch backend, read from
``DEEPFACE_HOME/.deepface/weights/facial_expression_model_weights.pth``
(DEEPFACE_HOME = the DEEPFACE_HOME setting, else MODEL_DIR/deepface), with DeepFace's
own preprocessing, batched. DeepFace is not thread-safe, so the registry gives the
emotion adapter its own worker thread.

DeepFace downloads any weight file it misses; here every lookup goes through a guard
that raises `ModelNotFound` instead unless ALLOW_MODEL_DOWNLOADS is true. Kept apart
from the adapter because it is all about one library's environment, caches and
download hooks.

Runtimes (INFERENCE_RUNTIME, onnx_runtime.py): on ``onnxruntime`` (default) and
``openvino`` the CNN runs as an ONNX graph exported from DeepFace's own pytorch module
(`EmotionModel`, built by DeepFace's `load_model` from the weights file, once per
weights file: the graph is cached beside it as
``facial_expression_model_weights.emotion.onnx``, keyed by the file's SHA-256), fed
exactly what DeepFace feeds it (`emotion_input`: grey, 48x48, [0, 1]); ``torch`` is
DeepFace's client as it is, the reference. Detection and the crops are DeepFace's on
every runtime. On the ONNX runtimes DEEPFACE_BACKEND_ENGINE only picks what DeepFace runs its
detectors on (pytorch, or onnx where torch is not installed): the CNN is always the export of the
pytorch weights file, so the service needs no torch once it is exported. On INFERENCE_RUNTIME=torch
DeepFace's own client runs on that engine.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from app.core.config import Settings
from app.models.base import ModelNotFound
from app.models.faces import FaceInput, emotion_result, map_box
from app.models.onnx_runtime import Session, ensure_onnx, export_module, onnx_file_for
from app.models.torch_runtime import torch_threads_for

log = logging.getLogger(__name__)

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
#: the CNN's input side (grey) and the face crop DeepFace.analyze makes before it
EMOTION_INPUT_SIZE = 48
EMOTION_CROP_SIZE = (224, 224)
#: `onnx_runtime.ensure_onnx`'s adapter name for the export
ONNX_WHAT = "emotion"


_deepface_downloads_allowed = False
_deepface_guard_lock = threading.Lock()


def torch_installed() -> bool:
    """Whether `import torch` can work here, without importing it."""
    import importlib.util

    try:
        return importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):  # sys.modules["torch"] is None: imports of it are blocked
        return False


def configure_deepface_env(home: Path) -> None:
    """Environment DeepFace reads. DEEPFACE_HOME is read on every weight lookup; the
    backend engine and the log level are fixed by deepface at first use / import."""
    os.environ["DEEPFACE_HOME"] = str(home)
    # the engine DeepFace runs its own models on (here: the detectors, and the emotion CNN on INFERENCE_RUNTIME=torch);
    # onnx where torch is not installed, since DeepFace refuses an engine whose package is missing
    os.environ.setdefault("DEEPFACE_BACKEND_ENGINE", "pytorch" if torch_installed() else "onnx")
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


def emotion_input(faces: np.ndarray) -> np.ndarray:
    """DeepFace's emotion preprocessing (`EmotionClient._preprocess_image`, both engines): (N, 224, 224, 3)
    BGR [0, 1] crops → grey (OpenCV) → 48x48 (OpenCV bilinear) → float32 (N, 1, 48, 48), the CNN's input."""
    import cv2

    size = (EMOTION_INPUT_SIZE, EMOTION_INPUT_SIZE)
    grey = [cv2.resize(cv2.cvtColor(np.asarray(f, dtype=np.float32), cv2.COLOR_BGR2GRAY), size) for f in faces]
    return np.stack(grey).astype(np.float32, copy=False)[:, None]


def export_emotion_onnx(home: Path, weights: Path) -> Path:
    """DeepFace's emotion CNN as an ONNX graph (input `x`: (N, 1, 48, 48) as `emotion_input` makes it; output
    `y`: (N, 7) probabilities, DeepFace's order), exported from `weights` (DEEPFACE_HOME `home`) when missing or
    made from another file (`onnx_runtime.ensure_onnx`). The module is DeepFace's own, built by its loader."""

    def export(dest: Path) -> None:
        import torch
        from deepface.models.demography.pytorch import Emotion

        configure_deepface_env(home)  # DeepFace's loader finds the file through DEEPFACE_HOME
        module = Emotion.load_model().eval()
        size = EMOTION_INPUT_SIZE
        export_module(module, [torch.zeros(1, 1, size, size)], dest, ["x"], ["y"])

    return ensure_onnx(weights, onnx_file_for(weights, ONNX_WHAT), export, ONNX_WHAT)


class DeepFaceEmotion:
    """DeepFace detection + DeepFace's emotion CNN (its own preprocessing, batched)."""

    def __init__(self, settings: Settings, home: Path, device: str):
        global _deepface_downloads_allowed
        self.detector_backend = settings.deepface_detector
        configure_deepface_env(home)

        from deepface.commons import backend_utils

        runtime = settings.inference_runtime
        # torch: DeepFace's own client, on its engine (DEEPFACE_BACKEND_ENGINE), with its checks. The ONNX runtimes
        # run the graph exported from the pytorch weights file whatever engine DeepFace's detectors run on
        engine = backend_utils.get_backend_engine() if runtime == "torch" else "pytorch"
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

        self.client: Any = None
        self.session: Session | None = None
        self.weights = weights
        if runtime != "torch":
            if not weights.is_file():  # downloads allowed (checked above): DeepFace's own fetch, guarded
                from deepface.commons import weight_utils

                weight_utils.download_weights_if_necessary(
                    file_name=weights.name, source_url=list(DEEPFACE_EMOTION_URLS)
                )
            self.session = Session(export_emotion_onnx(home, weights), runtime, torch_threads_for(settings))
        else:
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
                    preprocessing.resize_image(img=content[:, :, ::-1], target_size=EMOTION_CROP_SIZE)
                )
                metas.append((idx, box, conf))
        out: list[list[dict[str, Any]]] = [[] for _ in batch]
        if not crops:
            return out
        probs = self.probabilities(np.concatenate(crops, axis=0))
        for (idx, box, conf), p in zip(metas, probs):
            out[idx].append(emotion_result(box, conf, p))
        for faces in out:
            faces.sort(key=lambda f: -f["confidence"])
        return out

    def probabilities(self, faces: np.ndarray) -> np.ndarray:
        """(N, 7) emotion probabilities for (N, 224, 224, 3) BGR [0, 1] face crops, one batched forward."""
        if self.session is not None:
            return self.session.run(x=emotion_input(faces))[0].astype(np.float32, copy=False)
        return np.atleast_2d(self.client.predict(faces))
