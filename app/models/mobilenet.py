"""MobileNetV1 image embedding (TFLite, uint8), for near-duplicate grouping when CLIP is not there.

The model is Google's MobileNetV1 1.0/224 ImageNet network with its classifier removed (the
Coral `mobilenet_v1_1.0_224_quant_embedding_extractor.tflite`, Apache-2.0): uint8 RGB 224x224
in, the 1024-d global-average-pooled features out (uint8, scale 0.0235). It runs on LiteRT
(`ai_edge_litert`, XNNPACK on CPU) in a few milliseconds per image. The whole frame is resized to
224x224 (no centre crop: a crop of the shot must still look like the shot), and the dequantised
features are L2-normalised, so cosine similarity is a dot product. Copies of one scene (resize,
small crop, darker) land at cosine ≥ 0.92 and distinct photos at ≤ 0.69 (measured on real photos
when this feature was specified); `MOBILENET_MIN_COSINE` is the link threshold.

An Interpreter is not thread-safe: the registry runs this adapter on its own single thread.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import cv2
import numpy as np

from app.imaging.decode import DecodedImage
from app.models.base import ModelAdapter, ModelNotFound
from app.models.download import fetch, weights_file
from app.models.litert import open_uint8_image_model

MOBILENET_FILE = "mobilenet_v1_1.0_224_quant_embedding_extractor.tflite"
MOBILENET_URLS = (
    "https://github.com/google-coral/test_data/raw/master/mobilenet_v1_1.0_224_quant_embedding_extractor.tflite",
)
MOBILENET_SHA256 = "f409ef4f73fcbb9667841965623c5c8524aac33d41b9bf5f3667161fb4a76319"
INPUT_SIZE = 224


class MobileNetEmbedAdapter(ModelAdapter):
    name = "mobilenet"
    title = "MobileNetV1 1.0/224 image embedding (TFLite uint8, 1024-d), for near-duplicate grouping"
    path_setting = "mobilenet_path"
    default_subdir = "mobilenet"
    source = MOBILENET_URLS[0]
    files: ClassVar[tuple[str, ...]] = (MOBILENET_FILE,)
    sha256: ClassVar[dict[str, str]] = {MOBILENET_FILE: MOBILENET_SHA256}
    thread_safe = False
    max_batch = 32

    def load(self, path: Path, device: str) -> None:
        f = weights_file(path, MOBILENET_FILE)
        if not f.is_file():
            raise ModelNotFound(
                f"MobileNet embedding model not found: {f} does not exist. Put {MOBILENET_FILE} there "
                f"(scripts/download_models.py fetches it from {MOBILENET_URLS[0]}) or set MOBILENET_PATH.")
        self._interpreter, inp, out = open_uint8_image_model(f, self.settings.threads, INPUT_SIZE)
        self._in, self._out = inp["index"], out["index"]
        self._scale, self._zero = out["quantization"]
        self.dim = int(np.prod(out["shape"][1:]))

    def prepare(self, image: DecodedImage) -> np.ndarray:
        rgb = image.rgb_max(4 * INPUT_SIZE)  # the shared reduced copy, then the exact size
        return cv2.resize(rgb, (INPUT_SIZE, INPUT_SIZE), interpolation=cv2.INTER_AREA)

    def predict(self, batch: Sequence[Any]) -> list[np.ndarray]:
        out = []
        for x in batch:
            self._interpreter.set_tensor(self._in, np.ascontiguousarray(x, np.uint8)[None])
            self._interpreter.invoke()
            raw = self._interpreter.get_tensor(self._out).reshape(-1).astype(np.float32)
            v = (raw - float(self._zero)) * float(self._scale or 1.0)
            n = float(np.linalg.norm(v))
            out.append(v / n if n > 0 else v)
        return out

    @classmethod
    def download(cls, dest: Path) -> list[Path]:
        return [fetch(MOBILENET_URLS, weights_file(Path(dest), MOBILENET_FILE), MOBILENET_SHA256)]
