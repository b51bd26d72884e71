"""NIMA quality / aesthetic models, pyiqa's published checkpoints, loaded from local files.

pyiqa (chaofengc/IQA-PyTorch) ships NIMA as `pyiqa.archs.nima_arch.NIMA`:

    base_model   = timm.create_model("inception_resnet_v2", features_only=True)
    global_pool  = AdaptiveAvgPool2d(1)             (on the last feature map, 1536 ch)
    classifier   = Sequential(Flatten, Dropout(0), Linear(1536, C) [, Softmax if C > 1])
    score        = sum(dist * [1..C])               (`dist_to_mos`; for C = 1 the raw output)

Input (eval mode): an RGB tensor in [0, 1], resized so the shorter side is 299
(bilinear, antialiased), centre-cropped to 299x299, normalised with timm's
`pretrained_cfg` mean/std for inception_resnet_v2 = (0.5, 0.5, 0.5) / (0.5, 0.5, 0.5).

| adapter           | pyiqa metric | trained on | C  | file (MODEL_DIR/<subdir>/)         | score                      |
|-------------------|--------------|------------|----|------------------------------------|----------------------------|
| `nima_technical`  | `nima-koniq` | KonIQ-10k  | 1  | `NIMA_koniq-250367ae.pth`          | ~0..~1, higher is better   |
| `nima_aesthetic`  | `nima`       | AVA        | 10 | `NIMA_InceptionV2_ava-b0c77c00.pth`| mean 1..10, higher better  |

The files are pyiqa's own (`torch.save({"params": state_dict})`, keys
`base_model.*` and `classifier.2.*`), so a file downloaded for pyiqa can be dropped
in as is. pyiqa itself is not imported at run time (importing it costs seconds and
its constructor always asks timm to download ImageNet weights); `NimaNet` is a
module-for-module copy whose state-dict keys and forward pass the tests check
against pyiqa's class. Device, threads, bf16 and the input tensor come from
`torch_runtime.py`, shared with CLIP.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from app.core.config import Settings
from app.imaging.decode import DecodedImage
from app.models import outputs
from app.models.base import ModelAdapter, ModelNotFound
from app.models.download import fetch
from app.models.onnx_runtime import Session, ensure_onnx, export_module, onnx_file_for
from app.models.outputs import Output
from app.models.quantize import Int8Check, open_session, score_check
from app.models.torch_runtime import (
    autocast,
    bf16_wanted,
    configure_torch_threads,
    resolve_device,
    source_rgb,
    torch_threads_for,
)

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------
# The network
# --------------------------------------------------------------------------------------

NIMA_BACKBONE = "inception_resnet_v2"
NIMA_INPUT_SIZE = 299
#: timm's pretrained_cfg for inception_resnet_v2 (what pyiqa normalises with)
NIMA_MEAN = (0.5, 0.5, 0.5)
NIMA_STD = (0.5, 0.5, 0.5)

_HF_BASE = "https://huggingface.co/chaofengc/IQA-PyTorch-Weights/resolve/main/"
_GH_BASE = "https://github.com/chaofengc/IQA-PyTorch/releases/download/v0.1-weights/"


def build_nima_net(num_classes: int, base_model_name: str = NIMA_BACKBONE):
    """pyiqa's NIMA module tree with random weights and no download."""
    import timm
    from timm.models import FeatureInfo
    from torch import nn

    class NimaNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.base_model = timm.create_model(base_model_name, pretrained=False, features_only=True)
            self.global_pool = nn.AdaptiveAvgPool2d(1)
            feature_info = self.base_model.feature_info  # every features_only net has one
            assert isinstance(feature_info, FeatureInfo)
            in_ch = feature_info.channels()[-1]
            layers = [nn.Flatten(), nn.Dropout(p=0.0), nn.Linear(in_ch, num_classes)]
            if num_classes > 1:
                layers.append(nn.Softmax(dim=-1))
            self.classifier = nn.Sequential(*layers)

        def forward(self, x):  # x: normalised (N, 3, 299, 299) → (N, C)
            return self.classifier(self.global_pool(self.base_model(x)[-1]))

    return NimaNet()


def load_pyiqa_state_dict(file: Path) -> dict:
    """The state dict inside a pyiqa checkpoint (`{"params": ...}`, `module.` prefixes removed)."""
    import torch

    try:
        obj = torch.load(str(file), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"{file} is not a readable PyTorch checkpoint: {exc}") from exc
    if isinstance(obj, dict) and "params" in obj and isinstance(obj["params"], dict):
        obj = obj["params"]
    if not isinstance(obj, dict):
        raise TypeError(f"{file} does not contain a state dict")
    return {(k.removeprefix("module.")): v for k, v in obj.items()}


def nima_input(rgb: np.ndarray, size: int = NIMA_INPUT_SIZE) -> np.ndarray:
    """pyiqa's eval preprocessing: [0,1] → short side `size` (bilinear, antialias) → centre crop → (x-0.5)/0.5.

    Without torch: Pillow's float ("F") bilinear resampling is the algorithm torchvision's antialiased
    bilinear resize was ported from (a triangle filter widened by the scale when reducing); the two agree
    to 2e-5 on real photos (tests/unit/test_models_nima_clip.py), a 400th of a grey level. The size rule and
    the centre crop are torchvision's (`resize(int)`, `center_crop`). Returns float32 (3, size, size).
    """
    from PIL import Image

    h, w = rgb.shape[:2]
    nh, nw = (size, int(size * w / h)) if h <= w else (int(size * h / w), size)
    top, left = int(round((nh - size) / 2.0)), int(round((nw - size) / 2.0))
    out = np.empty((3, size, size), np.float32)
    for c in range(3):
        band = Image.fromarray(np.ascontiguousarray(rgb[..., c], dtype=np.float32) * (1 / 255.0), mode="F")
        full = np.asarray(band.resize((nw, nh), Image.Resampling.BILINEAR), dtype=np.float32)
        out[c] = (full[top:top + size, left:left + size] - NIMA_MEAN[c]) / NIMA_STD[c]
    return out


# --------------------------------------------------------------------------------------
# Adapters
# --------------------------------------------------------------------------------------


class _NimaAdapter(ModelAdapter):
    uses_torch: ClassVar[bool] = True
    #: checkpoint file name (pyiqa's), looked for in the resolved folder
    files: ClassVar[tuple[str, ...]]
    num_classes: ClassVar[int]
    #: the pyiqa metric this reproduces
    pyiqa_metric: ClassVar[str]
    input_size: ClassVar[int] = NIMA_INPUT_SIZE
    #: ONNX Runtime takes the same time per photo at batch 4, 8 or 16 (243, 245, 251 ms single-threaded,
    #: InceptionResNetV2 at 299 px) while the activations in flight grow with the batch; both NIMAs run at once
    max_batch: ClassVar[int] = 8

    def __init__(self, settings: Settings):
        super().__init__(settings)
        self.net = None
        self.session: Session | None = None
        self.file: Path | None = None
        self.bf16 = False

    # -- files -------------------------------------------------------------------
    @classmethod
    def urls(cls) -> list[str]:
        return [_HF_BASE + cls.files[0], _GH_BASE + cls.files[0]]

    @classmethod
    def download(cls, dest: Path) -> Path:
        """Fetch pyiqa's checkpoint into folder `dest` (or to `dest` itself if it names a .pth)."""
        dest = Path(dest).expanduser()
        target = dest if dest.suffix in (".pth", ".pt") else dest / cls.files[0]
        return fetch(cls.urls(), target)

    def checkpoint_file(self, path: Path) -> Path:
        """`path` may be the .pth itself or the folder holding it."""
        setting = (self.path_setting or "").upper()
        hint = (
            f"download {self.files[0]} from {self.urls()[0]} into that folder "
            f"(scripts/download_models.py {self.name}) or set {setting} to the file"
        )
        if path.is_file():
            return path
        if path.is_dir():
            wanted = path / self.files[0]
            if wanted.is_file():
                return wanted
            others = sorted(p for p in path.iterdir() if p.suffix in (".pth", ".pt"))
            if len(others) == 1:
                return others[0]
            raise ModelNotFound(
                f"{self.title}: {self.files[0]} not found in {path}; {hint}"
            )
        raise ModelNotFound(f"{self.title}: weights not found at {path}; {hint}")

    # -- lifecycle -----------------------------------------------------------------
    def build(self, file: Path) -> Any:
        """The torch module with the checkpoint's weights (the torch runtime, and the ONNX export)."""
        state = load_pyiqa_state_dict(file)
        net = build_nima_net(self.num_classes)
        try:
            net.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise ValueError(
                f"{file} is not a pyiqa {self.pyiqa_metric} checkpoint "
                f"({NIMA_BACKBONE}, {self.num_classes} output(s)): {str(exc)[:400]}"
            ) from exc
        return net.eval().requires_grad_(False)

    def export_onnx(self, file: Path) -> Path:
        """The checkpoint's ONNX graph (input `x`: (N, 3, 299, 299) normalised; output `y`: (N, C)), exported
        when missing or made from another file (`onnx_runtime.ensure_onnx`)."""
        def export(dest: Path) -> None:
            import torch

            size = self.input_size
            export_module(self.build(file), [torch.zeros(1, 3, size, size)], dest, ["x"], ["y"])

        return ensure_onnx(file, onnx_file_for(file, self.name), export, self.name)

    @classmethod
    def int8_check(cls) -> Int8Check:
        """How far its int8 graph may score from fp32 (QUANTIZE=int8): the subclass's score, 2 % of its range."""
        raise NotImplementedError

    def load(self, path: Path, device: str) -> None:
        file = self.checkpoint_file(Path(path))
        runtime = self.settings.inference_runtime
        if runtime != "torch":
            self.session, self.precision = open_session(
                self.export_onnx(file), self.settings, torch_threads_for(self.settings), name=self.name,
                input_name="x", prepare=self.prepare, check=self.int8_check())
            self.file, self.device = file, "cpu"
            return
        import torch

        configure_torch_threads(self.settings)
        device = resolve_device(device, as_given=True)
        net = self.build(file).to(device=device, memory_format=torch.channels_last)
        self.net, self.file, self.device = net, file, device
        self.bf16 = bf16_wanted(self.settings, device)

    # -- inference -------------------------------------------------------------------
    def prepare(self, image: DecodedImage) -> np.ndarray:
        """float32 (3, 299, 299), pyiqa-normalised; shared by both NIMA adapters (same cache key)."""
        size = self.input_size
        max_dim = self.settings.analysis_max_dim
        return image.cached(
            ("nima_input", size),
            lambda: nima_input(source_rgb(image, size, max_dim), size),
        )

    def forward(self, batch: Sequence[np.ndarray]) -> np.ndarray:
        """(N, C) float32 network output for prepared inputs, one batched forward."""
        if not batch:
            return np.zeros((0, self.num_classes), np.float32)
        if self.session is not None:
            return self.session.run(x=np.stack(batch))[0].astype(np.float32, copy=False)
        import torch

        if self.net is None:
            raise RuntimeError(f"{self.name} is not loaded")
        configure_torch_threads(self.settings)
        x = torch.from_numpy(np.stack(batch)).to(self.device)
        x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), autocast(self.device, self.bf16):
            out = self.net(x)
        return out.float().cpu().numpy()


class NimaTechnicalAdapter(_NimaAdapter):
    """pyiqa `nima-koniq`: technical quality regressed on KonIQ-10k MOS (about 0..1)."""

    name: ClassVar[str] = "nima_technical"
    title: ClassVar[str] = "NIMA technical quality (pyiqa nima-koniq, InceptionResNetV2, KonIQ-10k)"
    path_setting: ClassVar[str | None] = "nima_technical_path"
    default_subdir: ClassVar[str] = "nima_technical"
    files: ClassVar[tuple[str, ...]] = ("NIMA_koniq-250367ae.pth",)
    source: ClassVar[str] = _HF_BASE + "NIMA_koniq-250367ae.pth"
    num_classes: ClassVar[int] = 1
    pyiqa_metric: ClassVar[str] = "nima-koniq"
    #: pyiqa's declared range "~0, ~1" (a regression output: not clipped)
    output: ClassVar[Output | None] = outputs.NIMA_TECHNICAL

    def predict(self, batch: Sequence[Any]) -> list[float]:
        out = self.forward(batch)
        return [float(v) for v in out[:, 0]]

    @classmethod
    def int8_check(cls) -> Int8Check:
        assert cls.output is not None and cls.output.hi is not None and cls.output.lo is not None
        return score_check(lambda y: y[:, 0], span=cls.output.hi - cls.output.lo)


class NimaAestheticAdapter(_NimaAdapter):
    """pyiqa `nima`: AVA 10-bin score distribution; mean on 1..10."""

    name: ClassVar[str] = "nima_aesthetic"
    title: ClassVar[str] = "NIMA aesthetic score (pyiqa nima, InceptionResNetV2, AVA)"
    path_setting: ClassVar[str | None] = "nima_aesthetic_path"
    default_subdir: ClassVar[str] = "nima_aesthetic"
    files: ClassVar[tuple[str, ...]] = ("NIMA_InceptionV2_ava-b0c77c00.pth",)
    source: ClassVar[str] = _HF_BASE + "NIMA_InceptionV2_ava-b0c77c00.pth"
    num_classes: ClassVar[int] = 10
    pyiqa_metric: ClassVar[str] = "nima"
    output: ClassVar[Output | None] = outputs.NIMA_AESTHETIC

    @classmethod
    def int8_check(cls) -> Int8Check:
        assert cls.output is not None and cls.output.hi is not None and cls.output.lo is not None
        bins = np.arange(1, cls.num_classes + 1, dtype=np.float64)
        return score_check(lambda y: y @ bins, span=cls.output.hi - cls.output.lo)

    def predict(self, batch: Sequence[Any]) -> list[dict]:
        dist = self.forward(batch).astype(np.float64)
        bins = np.arange(1, self.num_classes + 1, dtype=np.float64)
        mean = dist @ bins
        std = np.sqrt(np.maximum((dist * (bins[None, :] - mean[:, None]) ** 2).sum(axis=1), 0.0))
        return [
            {"mean": float(m), "std": float(s), "distribution": [float(p) for p in d]}
            for m, s, d in zip(mean, std, dist)
        ]
