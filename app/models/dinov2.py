"""DINOv2 image embeddings (transformers `Dinov2Model`): the CLS token, L2-normalised.

Why DINOv2 next to CLIP: it is trained on images alone (self-distillation), so its CLS
token describes what a photo *looks like* (layout, texture, object identity) rather
than what a caption would say. That is what near-duplicate and "same scene" search
wants; CLIP stays the model for text search. The vector is `pooler_output`, i.e. the
CLS token of `last_hidden_state` after the final layernorm (the token the original
`dinov2_vits14` hub model returns), L2-normalised, so cosine similarity is a dot product.

Where the files live: `MODEL_DIR/dinov2`, or `DINOV2_PATH`. The folder is what
`Dinov2Model.save_pretrained` / `snapshot_download` write: `config.json`,
`model.safetensors` and, where present, `preprocessor_config.json`. `DINOV2_MODEL_NAME`
(default `facebook/dinov2-small`) is the hub id `scripts/download_models.py` fills the
folder from, and the `model_name` the vectors are labelled with; with
`ALLOW_MODEL_DOWNLOADS=true` a missing folder is downloaded on first load.

Preprocessing is done here (numpy, once per image, cached on the `DecodedImage`)
and reproduces transformers' default (torchvision) `BitImageProcessor`, the processor
`AutoImageProcessor` picks for DINOv2: resize (shortest edge, antialiased, on uint8),
centre crop (floor offsets, zero padding when the crop is larger), rescale, normalise.
Its parameters come from the folder's `preprocessor_config.json`. Without one, DINOv2's
own values are used, NOT `BitImageProcessor()`'s class defaults (those are BiT's/CLIP's:
shortest edge 224 and the OpenAI CLIP mean/std): transformers'
`models/dinov2/convert_dinov2_to_hf.py` saves every facebook/dinov2-* repo's processor as
`BitImageProcessor(size={"shortest_edge": 256}, resample=BICUBIC, image_mean=IMAGENET_DEFAULT_MEAN,
image_std=IMAGENET_DEFAULT_STD)` with the default 224x224 crop, after checking it equals the
original repo's `Resize(256, BICUBIC) → CenterCrop(224) → Normalize(ImageNet)`. A key missing
from a preprocessor_config.json also falls back to these DINOv2 values. A large photo starts
from the shared reduced copy (`ANALYSIS_MAX_DIM`) when that still covers the resize, with the
target size computed from the full decode, so only the two-step resampling differs from the
processor on the full pixels (mean |Δ| ≈ 0.003 in normalised units on 3000 px photos).

The input need not be the config's `image_size` (518 for the published models): the
model interpolates its position embeddings to the 224x224 crop, as transformers does.
The resize is torchvision's uint8 kernel redone in numpy (`resize_uint8`: the same integer
weights and rounding, so the same pixels; tests/unit/test_onnx_dinov2_emotion.py compares them).

Runtimes (INFERENCE_RUNTIME, onnx_runtime.py): on `onnxruntime` (default) and `openvino` the
model is an ONNX graph exported from the folder once (`export_onnx`: pixel_values → the CLS
token, at the preprocessing's fixed size, batch dynamic), cached as `dinov2.onnx` in the folder
and keyed by the SHA-256 of the folder's files, so new weights or a new preprocessor_config.json
re-export it; then neither torch nor transformers is imported. `torch` is the eager
transformers model, the reference. The L2 normalisation is numpy's on every runtime.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from app.core.config import Settings
from app.imaging.decode import DecodedImage
from app.models.base import ModelAdapter, ModelNotFound
from app.models.download import hub_snapshot
from app.models.onnx_runtime import Session, ensure_onnx, export_module, onnx_file_for
from app.models.quantize import embedding_check, open_session
from app.models.resample import resize_uint8
from app.models.torch_runtime import (
    autocast,
    bf16_wanted,
    configure_torch_threads,
    l2_normalize,
    resolve_device,
    source_rgb,
    torch_threads_for,
)

if TYPE_CHECKING:
    from transformers import Dinov2Model

log = logging.getLogger(__name__)

DINOV2_HUB_ID = "facebook/dinov2-small"
#: transformers.image_utils.IMAGENET_DEFAULT_MEAN / _STD (what convert_dinov2_to_hf.py saves)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: what `download` fetches from a DINOv2 repo on the hub
DINOV2_ALLOW_PATTERNS = ["config.json", "preprocessor_config.json", "model.safetensors"]
PREPROCESSOR_FILE = "preprocessor_config.json"
#: PIL resampling codes (what preprocessor_config.json stores) → torchvision's names (the ones `resize_uint8` does)
_RESAMPLE = {0: "NEAREST", 2: "BILINEAR", 3: "BICUBIC"}


# --------------------------------------------------------------------------------------
# Preprocessing
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Dinov2Preprocessing:
    """The parameters of a `BitImageProcessor` that matter for one RGB image.

    `resize_to` is a shortest edge (int), an exact (height, width), or None (no resize);
    `crop` is (height, width) or None (no centre crop). Rescale and normalise are one step,
    `(x * rescale - mean) / std`; a processor that skips either has 1.0 or mean 0 / std 1.
    """

    resize_to: int | tuple[int, int] | None = 256
    resample: int = 3  # PIL BICUBIC
    crop: tuple[int, int] | None = (224, 224)
    rescale: float = 1 / 255
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


def _triple(values: Any) -> tuple[float, float, float]:
    v = [float(x) for x in (values if isinstance(values, list | tuple) else [values])]
    if len(v) == 1:
        v = v * 3
    if len(v) != 3:
        raise ValueError(f"expected 1 or 3 values per channel, got {values!r}")
    return v[0], v[1], v[2]


def _resize_target(size: Any) -> int | tuple[int, int]:
    if isinstance(size, int):
        return size
    if isinstance(size, Mapping):
        if size.get("shortest_edge"):
            return int(size["shortest_edge"])
        if size.get("height") and size.get("width"):
            return int(size["height"]), int(size["width"])
    raise ValueError(f"unsupported resize size {size!r} (expected shortest_edge, or height and width)")


def _crop_target(crop: Any) -> tuple[int, int]:
    if isinstance(crop, int):
        return crop, crop
    if isinstance(crop, tuple) and len(crop) == 2:
        return int(crop[0]), int(crop[1])
    if isinstance(crop, Mapping) and crop.get("height") and crop.get("width"):
        return int(crop["height"]), int(crop["width"])
    raise ValueError(f"unsupported crop_size {crop!r} (expected height and width)")


def preprocessing_from_config(cfg: Mapping[str, Any]) -> Dinov2Preprocessing:
    """A preprocessor_config.json's dict → parameters; missing keys take DINOv2's values."""
    d = Dinov2Preprocessing()
    resample = int(cfg.get("resample", d.resample))
    if resample not in _RESAMPLE:
        raise ValueError(f"unsupported resample {resample} in {PREPROCESSOR_FILE} (supported: {sorted(_RESAMPLE)})")
    do_rescale, do_normalize = cfg.get("do_rescale", True), cfg.get("do_normalize", True)
    return Dinov2Preprocessing(
        resize_to=_resize_target(cfg.get("size", {"shortest_edge": d.resize_to})) if cfg.get("do_resize", True) else None,
        resample=resample,
        crop=_crop_target(cfg.get("crop_size", d.crop)) if cfg.get("do_center_crop", True) else None,
        rescale=float(cfg.get("rescale_factor", d.rescale)) if do_rescale else 1.0,
        mean=_triple(cfg.get("image_mean", d.mean)) if do_normalize else (0.0, 0.0, 0.0),
        std=_triple(cfg.get("image_std", d.std)) if do_normalize else (1.0, 1.0, 1.0),
    )


def read_preprocessing(folder: Path) -> Dinov2Preprocessing:
    """The folder's preprocessor_config.json, else DINOv2's published preprocessing."""
    f = Path(folder) / PREPROCESSOR_FILE
    if not f.is_file():
        return Dinov2Preprocessing()
    return preprocessing_from_config(json.loads(f.read_text(encoding="utf-8")))


def resized_shape(h: int, w: int, resize_to: int | tuple[int, int]) -> tuple[int, int]:
    """transformers' output size: the short side → `resize_to`, the long one scaled and floored."""
    if isinstance(resize_to, tuple):
        return resize_to
    if w <= h:
        return int(resize_to * h / w), resize_to
    return resize_to, int(resize_to * w / h)


def dinov2_pixel_values(rgb: np.ndarray, prep: Dinov2Preprocessing, full_hw: tuple[int, int] | None = None) -> np.ndarray:
    """BitImageProcessor (torchvision backend) for one HxWx3 uint8 image → float32 (3, h, w), without torch.

    `full_hw`: the size of the image `rgb` is a reduced copy of. The resize target is computed
    from it, so the reduced copy lands on exactly the shape (and crop offsets) the full image
    would; from its own rounded size the long side can differ by one pixel.
    """
    t = np.require(rgb, dtype=np.uint8)
    if prep.resize_to is not None:
        h, w = full_hw or (t.shape[0], t.shape[1])
        new_hw = resized_shape(h, w, prep.resize_to)
        if new_hw != t.shape[:2]:
            t = resize_uint8(t, new_hw, prep.resample)
    if prep.crop is not None:
        t = _center_crop(t, prep.crop)
    # torch's float32 arithmetic: mean / rescale and std / rescale in float32, then (x - m) / s
    m = np.asarray(prep.mean, np.float32) / np.float32(prep.rescale)
    s = np.asarray(prep.std, np.float32) / np.float32(prep.rescale)
    x = t.transpose(2, 0, 1).astype(np.float32, order="C")
    x -= m[:, None, None]
    x /= s[:, None, None]
    return x


def _center_crop(t: np.ndarray, crop: tuple[int, int]) -> np.ndarray:
    """transformers' centre crop of an HxWxC array: zero padding first when the crop is larger, floor offsets."""
    ch, cw = crop
    h, w = t.shape[:2]
    if ch > h or cw > w:  # extreme aspect ratios only
        top_pad, left_pad = ((ch - h) // 2 if ch > h else 0), ((cw - w) // 2 if cw > w else 0)
        bottom_pad, right_pad = ((ch - h + 1) // 2 if ch > h else 0), ((cw - w + 1) // 2 if cw > w else 0)
        t = np.pad(t, ((top_pad, bottom_pad), (left_pad, right_pad), (0, 0)))
        h, w = t.shape[:2]
    top, left = int((h - ch) / 2.0), int((w - cw) / 2.0)
    return t[top : top + ch, left : left + cw]


# --------------------------------------------------------------------------------------
# Adapter
# --------------------------------------------------------------------------------------


class Dinov2Adapter(ModelAdapter):
    name: ClassVar[str] = "dinov2"
    title: ClassVar[str] = "DINOv2 image embeddings (transformers Dinov2Model, CLS token, L2-normalised)"
    path_setting: ClassVar[str | None] = "dinov2_path"
    default_subdir: ClassVar[str] = "dinov2"
    source: ClassVar[str] = f"hf://{DINOV2_HUB_ID}"
    files: ClassVar[tuple[str, ...]] = ("config.json", "model.safetensors")
    #: copied too by `download_models.py --from` (optional: DINOv2's values are the fallback)
    alt_files: ClassVar[tuple[str, ...]] = (PREPROCESSOR_FILE,)
    uses_torch: ClassVar[bool] = True
    #: ViT-S/14 at 224 px is 257 tokens: a forward of 32 images peaks ~230 MB above one of a
    #: single image on CPU (measured; ~7 MB per image, about 2x for dinov2-base, 4x for -large)
    max_batch: ClassVar[int] = 32

    def __init__(self, settings: Settings):
        super().__init__(settings)
        self.model: Dinov2Model | None = None
        self.session: Session | None = None
        self.model_name: str = settings.dinov2_model_name
        self.dim: int | None = None
        self.prep = Dinov2Preprocessing()
        self.bf16 = False

    # -- files ---------------------------------------------------------------------
    @classmethod
    def has_files(cls, path: Path) -> bool:
        return all((Path(path) / f).is_file() for f in cls.files)

    @classmethod
    def download(cls, dest: Path, repo_id: str = DINOV2_HUB_ID) -> Path:
        """The files Dinov2Model and its processor need, into `dest`."""
        return hub_snapshot(dest, repo_id, DINOV2_ALLOW_PATTERNS)

    def _missing(self, path: Path) -> ModelNotFound:
        return ModelNotFound(
            f"DINOv2 model files ({' + '.join(self.files)}) not found at {path}; run "
            f"scripts/download_models.py dinov2 (fetches {self.model_name!r}), set ALLOW_MODEL_DOWNLOADS=true, or point "
            f"DINOV2_PATH at a folder written by Dinov2Model.save_pretrained"
        )

    def _ensure_files(self, path: Path) -> None:
        """Raise ModelNotFound unless the folder is complete; download it first when allowed."""
        if self.has_files(path):
            return
        if self.settings.allow_model_downloads:
            log.info("downloading DINOv2 %s into %s", self.model_name, path)
            self.download(path, self.model_name)
            if self.has_files(path):
                return
        raise self._missing(path)

    # -- lifecycle -------------------------------------------------------------------
    def _read_config(self, path: Path) -> dict[str, Any]:
        """config.json, refused unless it describes a dinov2 model (transformers only warns, then loads garbage)."""
        cfg = json.loads((path / "config.json").read_text(encoding="utf-8"))
        kind = cfg.get("model_type")
        if kind != "dinov2":
            raise ValueError(f"{path / 'config.json'} describes a {kind!r} model, not dinov2")
        return cfg

    def build(self, path: Path) -> Any:
        """The transformers model, fp32, eval (the torch runtime, and the ONNX export)."""
        import torch
        from transformers import Dinov2Config, Dinov2Model

        config = Dinov2Config.from_pretrained(str(path), local_files_only=True)
        model = Dinov2Model.from_pretrained(str(path), config=config, local_files_only=True, dtype=torch.float32)
        return model.eval().requires_grad_(False)

    @staticmethod
    def input_size(prep: Dinov2Preprocessing) -> tuple[int, int] | None:
        """The (height, width) every prepared input has (the crop, or an exact resize); None when it follows
        the photo (no crop, shortest-edge or no resize)."""
        if prep.crop is not None:
            return prep.crop
        return prep.resize_to if isinstance(prep.resize_to, tuple) else None

    def export_onnx(self, path: Path) -> Path:
        """The folder's ONNX graph (input `pixel_values`: (N, 3, H, W) as `prepare` makes them; output
        `embedding`: (N, dim), the CLS token after the final layernorm, not normalised), exported when missing
        or made from other files (`onnx_runtime.ensure_onnx`; the key is the whole folder, so a changed
        preprocessor_config.json re-exports too). H and W are the preprocessing's fixed size (static shapes for
        the runtimes to plan with); only a preprocessing without one exports them as dynamic axes (the
        position embeddings are interpolated in the graph either way, as transformers does when tracing)."""
        path = Path(path)
        self._read_config(path)
        hw = self.input_size(read_preprocessing(path))

        def export(dest: Path) -> None:
            import torch

            class ClsToken(torch.nn.Module):
                def __init__(self, model: Any) -> None:
                    super().__init__()
                    self.model = model

                def forward(self, pixel_values: Any) -> Any:
                    return self.model(pixel_values=pixel_values).pooler_output

            # tracing warns twice, about values that are constant for this model: the channel check (3) and
            # SDPA's `is_causal` (False: the encoder is not causal)
            module = ClsToken(self.build(path))
            if hw is not None:
                export_module(module, [torch.zeros(1, 3, *hw)], dest, ["pixel_values"], ["embedding"])
                return
            export_module(module, [torch.zeros(1, 3, 224, 224)], dest, ["pixel_values"], ["embedding"],
                          dynamic={"pixel_values": {2: "height", 3: "width"}})

        return ensure_onnx(path, onnx_file_for(path, self.name), export, self.name)

    def load(self, path: Path, device: str) -> None:
        path = Path(path)
        self._ensure_files(path)
        cfg = self._read_config(path)
        prep = read_preprocessing(path)
        runtime = self.settings.inference_runtime
        if runtime != "torch":
            self.prep, self.device = prep, "cpu"
            self.session, self.precision = open_session(
                self.export_onnx(path), self.settings, torch_threads_for(self.settings), name=self.name,
                input_name="pixel_values", prepare=self.prepare, check=embedding_check())
            self.dim = int(cfg.get("hidden_size", 768))  # (Dinov2Config's default)
            return
        configure_torch_threads(self.settings)
        device = resolve_device(device, as_given=True)
        model = self.build(path)
        model.to(device)
        self.model, self.prep, self.device = model, prep, device
        self.dim = int(model.config.hidden_size)
        self.bf16 = bf16_wanted(self.settings, device)

    # -- inference -----------------------------------------------------------------------
    def _short_target(self) -> int:
        r = self.prep.resize_to
        if r is None:
            return 1 << 30  # no resize: always the full decode
        return r if isinstance(r, int) else max(r)

    def prepare(self, image: DecodedImage) -> np.ndarray:
        """float32 (3, 224, 224) pixel_values, cached on the image."""
        prep = self.prep

        def make() -> np.ndarray:
            rgb = source_rgb(image, self._short_target(), self.settings.analysis_max_dim)
            full_hw = (int(image.pixels.shape[0]), int(image.pixels.shape[1]))
            return dinov2_pixel_values(rgb, prep, full_hw)

        return image.cached(("dinov2_pixels", prep), make)

    def forward(self, batch: Sequence[np.ndarray]) -> np.ndarray:
        """(N, dim) float32 CLS tokens (after the final layernorm, before normalising), one batched forward."""
        if not batch:
            return np.zeros((0, self.dim or 0), np.float32)
        if self.session is not None:
            return self.session.run(pixel_values=np.stack(batch))[0].astype(np.float32, copy=False)
        if self.model is None:
            raise RuntimeError("dinov2 is not loaded")
        import torch

        configure_torch_threads(self.settings)
        x = torch.from_numpy(np.stack(batch)).to(self.device)
        with torch.inference_mode(), autocast(self.device, self.bf16):
            cls = self.model(pixel_values=x).pooler_output  # CLS after the final layernorm
        return cls.float().cpu().numpy()

    def predict(self, batch: Sequence[np.ndarray]) -> list[np.ndarray]:
        """One L2-normalised float32 vector (dim,) per prepared image, one batched forward."""
        if not batch:
            return []
        return list(l2_normalize(self.forward(batch)))
