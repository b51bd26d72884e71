"""The LAION aesthetic predictor V1: a linear head on CLIP image embeddings, in numpy on every runtime.

`score = w · normalize(clip_image_embedding) + b`. The heads are published as torch `.pth` state dicts
(`nn.Linear(512, 1)` for ViT-B/32, `nn.Linear(768, 1)` for ViT-L/14); they are read with
`torch_files.read_state_dict`, so the service does not import torch for them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from app.core.config import Settings
from app.models import outputs
from app.models.base import ModelAdapter, ModelNotFound
from app.models.download import fetch
from app.models.outputs import Output
from app.models.torch_files import read_state_dict
from app.models.torch_runtime import l2_normalize

LAION_FILES = {512: "sa_0_4_vit_b_32_linear.pth", 768: "sa_0_4_vit_l_14_linear.pth"}
LAION_SHA256 = {
    "sa_0_4_vit_b_32_linear.pth": "c7b14cead230694acc7b9447974d3cad78003c72da032e402a303b6c2429e85f",
    "sa_0_4_vit_l_14_linear.pth": "2cd4e60f4f24ae3bcd57b847b13c1f3ba27edc28cc1a7f9ce74ee9f421243cba",
}
_LAION_URL = "https://github.com/LAION-AI/aesthetic-predictor/raw/main/"


class LaionAestheticAdapter(ModelAdapter):
    """`score = w · normalize(clip_image_embedding) + b`, about 1..10, higher is better.

    prepare/predict take CLIP image embeddings (the `clip` adapter's output), not
    images. Every head file present in the folder is loaded (a few KB each); the
    one whose width equals the embedding's is used, so the same folder serves
    ViT-B/32 (512) and ViT-L/14 (768).
    """

    name: ClassVar[str] = "laion_aesthetic"
    title: ClassVar[str] = "LAION aesthetic predictor V1 (linear head on CLIP embeddings)"
    path_setting: ClassVar[str | None] = "laion_aesthetic_path"
    default_subdir: ClassVar[str] = "laion_aesthetic"
    source: ClassVar[str] = _LAION_URL + LAION_FILES[512]
    files: ClassVar[tuple[str, ...]] = tuple(LAION_FILES.values())
    sha256: ClassVar[dict[str, str]] = LAION_SHA256
    output: ClassVar[Output | None] = outputs.LAION_AESTHETIC
    depends: ClassVar[tuple[str, ...]] = ("clip",)  # its inputs are CLIP image embeddings
    max_batch: ClassVar[int] = 1024

    def __init__(self, settings: Settings):
        super().__init__(settings)
        self.heads: dict[int, tuple[np.ndarray, float]] = {}

    @classmethod
    def download(cls, dest: Path) -> Path:
        dest = Path(dest).expanduser()
        for fname in cls.files:
            fetch([_LAION_URL + fname], dest / fname, sha256=LAION_SHA256[fname])
        return dest

    def load(self, path: Path, device: str) -> None:
        path = Path(path)
        files = [path] if path.is_file() else [path / f for f in self.files if (path / f).is_file()]
        if not files:
            raise ModelNotFound(
                f"LAION aesthetic head not found at {path}: expected {' or '.join(self.files)} "
                f"(scripts/download_models.py laion_aesthetic, or set LAION_AESTHETIC_PATH)"
            )
        heads: dict[int, tuple[np.ndarray, float]] = {}
        for f in files:
            sd = read_state_dict(f)  # torch's file format, read without torch
            sd = {k.split(".")[-1]: v for k, v in sd.items()}  # accept "layers.0.weight" style too
            w = sd["weight"].astype(np.float32).reshape(-1)
            b = float(sd["bias"].astype(np.float32).reshape(-1)[0])
            heads[w.shape[0]] = (w.astype(np.float32), b)
        self.heads = heads
        self.device = "cpu"

    @property
    def dims(self) -> list[int]:
        return sorted(self.heads)

    def prepare(self, embedding: Any) -> np.ndarray:
        return l2_normalize(np.asarray(embedding, dtype=np.float32).reshape(-1))

    def predict(self, batch: Sequence[np.ndarray]) -> list[float]:
        if not batch:
            return []
        x = l2_normalize(np.stack([np.asarray(b, np.float32).reshape(-1) for b in batch]))
        head = self.heads.get(x.shape[1])
        if head is None:
            raise ValueError(
                f"no LAION aesthetic head for {x.shape[1]}-d CLIP embeddings (loaded: {self.dims}); "
                f"ViT-B/32 needs {LAION_FILES[512]}, ViT-L/14 needs {LAION_FILES[768]}"
            )
        w, b = head
        return [float(v) for v in x.astype(np.float64) @ w.astype(np.float64) + b]
