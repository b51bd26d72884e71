"""Facial emotion ("emotion"): one adapter, two backends chosen by EMOTION_MODEL.

* ``deepface`` (default): DeepFace's detector and emotion CNN (deepface_emotion.py);
* ``mini_xception``: YuNet faces and the FER2013 mini-Xception (mini_xception.py).

This module holds what the registry sees: the setting that picks the backend, where
its files are, and where scripts/download_models.py puts them (`download()`). Both
backends take the shared `FaceInput` and return per-face results in the shape of
`faces.emotion_result`. Nothing is downloaded at run time unless
ALLOW_MODEL_DOWNLOADS is true.

INFERENCE_RUNTIME: DeepFace's emotion CNN runs on ONNX Runtime (default) or OpenVINO,
exported from its weights file once (deepface_emotion.py), or on torch as DeepFace runs
it; the mini-Xception stays on torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from app.core.config import Settings
from app.imaging.decode import DecodedImage
from app.models.base import ModelAdapter
from app.models.deepface_emotion import (
    DEEPFACE_EMOTION_FILES,
    DEEPFACE_EMOTION_SHA256,
    DEEPFACE_EMOTION_URLS,
    DeepFaceEmotion,
    export_emotion_onnx,
)
from app.models.download import fetch
from app.models.faces import YUNET_FILE, YUNET_SHA256, YUNET_URLS, FaceInput, as_face_input, face_input
from app.models.mini_xception import (
    MINI_XCEPTION_FILE,
    MINI_XCEPTION_SHA256,
    MINI_XCEPTION_URLS,
    MiniXceptionEmotion,
)


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

    _impl: MiniXceptionEmotion | DeepFaceEmotion  # set by load

    @property
    def backend(self) -> str:
        backend = str(self.settings.emotion_model or "deepface").lower()
        if backend not in self.BACKENDS:
            raise ValueError(f"EMOTION_MODEL must be one of {self.BACKENDS}, not {backend!r}")
        return backend

    @classmethod
    def on_torch(cls, settings: Settings) -> bool:
        """DeepFace's CNN runs on the ONNX runtimes (unless INFERENCE_RUNTIME=torch); the mini-Xception on torch."""
        backend = str(settings.emotion_model or "deepface").lower()
        return settings.inference_runtime == "torch" or backend == "mini_xception"

    def resolve_path(self) -> Path:
        if self.backend == "mini_xception":
            override = self.settings.emotion_mini_xception_path
            if override:
                return Path(override).expanduser()
            return Path(self.settings.model_dir).expanduser() / "emotion_mini_xception"
        return super().resolve_path()

    def load(self, path: Path, device: str) -> None:
        if self.backend == "mini_xception":
            self._impl = MiniXceptionEmotion(self.settings, path, device)
        else:
            self._impl = DeepFaceEmotion(self.settings, path, device)

    def export_onnx(self, path: Path) -> Path | None:
        """DeepFace's emotion CNN as ONNX, beside its weights under DEEPFACE_HOME `path` (what `load` runs on
        the ONNX runtimes; scripts/download_models.py exports through `load`). None for the mini_xception
        backend, which runs on torch."""
        if self.backend != "deepface":
            return None
        home = Path(path)
        return export_emotion_onnx(home, home / ".deepface" / "weights" / DEEPFACE_EMOTION_FILES["pytorch"])

    def prepare(self, image: DecodedImage) -> FaceInput:
        return face_input(image, self.settings.emotion_max_dim)

    def predict(self, batch: Sequence[Any]) -> list[list[dict[str, Any]]]:
        inputs = [as_face_input(item, self.settings.emotion_max_dim) for item in batch]
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
