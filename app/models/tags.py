"""ImageNet-1K tags ("tags"): 1000 object / scene labels with a probability each, chosen by TAGS_MODEL.

Tagging answers "what is in this photo" in ImageNet's vocabulary (tabby, espresso, tripod …);
`top_labels` applies the image_tagger seed service's `top` / `minconf` rules to the answer.
Two models give the same interface (`labels`, `predict` → one length-1000 float32 probability
vector per image, `top_labels` to pick the answer):

* ``mobilenet_v2`` (default): Google's MobileNetV2 1.0/224, uint8-quantized TFLite from
  github.com/google-coral/test_data (Apache-2.0; 70.8 % ImageNet top-1 quantized, 71.8 % as
  float, per TensorFlow's hosted-models table). It runs on LiteRT (`ai_edge_litert`, XNNPACK)
  in milliseconds per image (5-10 ms on two busy cores here), with no torch: the cheap default
  for a CPU service. Input: uint8 RGB 224x224 (input quantization scale 1/128, zero 128, i.e.
  the network sees (x-128)/128, so pixels go in as they are). Preprocessing is the one its
  accuracy was measured with (TF-slim `inception_preprocessing`, eval branch): the central
  87.5 % of the height and of the width, then that region resized to 224x224 without keeping
  its aspect ratio (training crops also vary the aspect ratio 3:4..4:3, so the model expects
  some squeeze). The resize averages areas instead of slim's plain bilinear, so large photos do
  not alias. Output: 1001 uint8 softmax probabilities (dequantized with the tensor's own scale,
  1/256, and zero point); index 0 is slim's "background", which is dropped, and the 1000 others
  are renormalised to sum 1.
* ``efficientnet_b3``: torchvision's `efficientnet_b3` with its IMAGENET1K_V1 weights (ported
  from timm by torchvision; 82.0 % top-1), loaded from the release file
  `efficientnet_b3_rwightman-b3899882.pth` (a plain `state_dict`) in the same folder. Input:
  exactly `EfficientNet_B3_Weights.IMAGENET1K_V1.transforms()` (short side 320 bicubic with
  antialias, centre crop 300, ImageNet mean/std). Output: softmax of the 1000 logits. About 1.8
  GFLOPs a forward (roughly 0.25 s per image on two busy cores here) and it needs torch: for when
  labels must be right more often.

Labels are torchvision's ImageNet category names (`weights.meta["categories"]`: the first WordNet
synonym, with "crane bird" and "maillot tank suit" where two classes share a first synonym), so
both models name class i the same way. The TFLite model reads them from its `imagenet_labels.txt`
(line i = class i, line 0 = background); EfficientNet takes them from torchvision, offline.

Both variants live in MODEL_DIR/tags (or TAGS_PATH, a folder or the weights file itself). The
class declarations (`files`, `sha256`, `source`) describe the default; `VARIANTS` describes both,
and `download()` fetches the one TAGS_MODEL names. The adapter declares `uses_torch = False`
(the default runs on LiteRT; the registry reads the declaration from the class, not from
TAGS_MODEL), so EfficientNet runs on the CPU; and `thread_safe = False` because a LiteRT
Interpreter is not thread safe, so the registry gives this model its own thread.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import cv2
import numpy as np

from app.core.config import Settings
from app.imaging.decode import DecodedImage
from app.models.base import ModelAdapter, ModelNotFound
from app.models.download import fetch, weights_file
from app.models.litert import open_uint8_image_model
from app.models.torch_runtime import configure_torch_threads, resolve_device, source_rgb, uint8_chw_tensor

# --------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------

NUM_CLASSES = 1000
#: the most labels one call may ask for (every class)
TOP_MAX = NUM_CLASSES

_CORAL_BASE = "https://github.com/google-coral/test_data/raw/master/"
MOBILENET_V2_FILE = "mobilenet_v2_1.0_224_quant.tflite"
LABELS_FILE = "imagenet_labels.txt"
MOBILENET_V2_SHA256 = "7aad0c74c5e3c06e5eb3c827e13304fdd68a83da6087d92ee169c24ff9fd4776"
LABELS_SHA256 = "b8aaeb5630c62626a7d124a05c0e14230a7ffdd2136a31d0190a4fb71c1d82f1"
MOBILENET_V2_INPUT = 224
#: TF-slim's eval crop: the central 87.5 % of each side
MOBILENET_V2_CENTRAL_FRACTION = 0.875

EFFICIENTNET_B3_FILE = "efficientnet_b3_rwightman-b3899882.pth"
EFFICIENTNET_B3_URL = "https://download.pytorch.org/models/" + EFFICIENTNET_B3_FILE
#: torchvision publishes the sha256 prefix in the file name (torch.hub checks it the same way)
EFFICIENTNET_B3_SHA256 = "b3899882"
#: EfficientNet_B3_Weights.IMAGENET1K_V1.transforms(): resize_size 320, crop_size 300
EFFICIENTNET_B3_RESIZE = 320
EFFICIENTNET_B3_CROP = 300

#: classes whose first synonym repeats another class's; torchvision's names for them
_TORCHVISION_RENAMES = {134: "crane bird", 639: "maillot tank suit"}


@dataclass(frozen=True)
class TagsVariant:
    """One TAGS_MODEL choice: what its folder holds and where each file comes from."""

    name: str
    title: str
    files: tuple[str, ...]
    sha256: dict[str, str]
    urls: dict[str, str]


VARIANTS: dict[str, TagsVariant] = {
    "mobilenet_v2": TagsVariant(
        name="mobilenet_v2",
        title="MobileNetV2 1.0/224 ImageNet-1K (TFLite uint8, LiteRT)",
        files=(MOBILENET_V2_FILE, LABELS_FILE),
        sha256={MOBILENET_V2_FILE: MOBILENET_V2_SHA256, LABELS_FILE: LABELS_SHA256},
        urls={MOBILENET_V2_FILE: _CORAL_BASE + MOBILENET_V2_FILE, LABELS_FILE: _CORAL_BASE + LABELS_FILE},
    ),
    "efficientnet_b3": TagsVariant(
        name="efficientnet_b3",
        title="EfficientNet-B3 ImageNet-1K (torchvision IMAGENET1K_V1)",
        files=(EFFICIENTNET_B3_FILE,),
        sha256={EFFICIENTNET_B3_FILE: EFFICIENTNET_B3_SHA256},
        urls={EFFICIENTNET_B3_FILE: EFFICIENTNET_B3_URL},
    ),
}


# --------------------------------------------------------------------------------------
# Labels and the answer
# --------------------------------------------------------------------------------------


def imagenet_names(lines: Sequence[str]) -> list[str]:
    """The 1000 class names from a TF-slim ImageNet labels file's lines (background first or not).

    Each name is the line's first synonym ("tabby, tabby cat" → "tabby"), as torchvision names them."""
    rows = [line.strip() for line in lines if line.strip()]
    if len(rows) == NUM_CLASSES + 1 and rows[0].lower() == "background":
        rows = rows[1:]
    if len(rows) != NUM_CLASSES:
        raise ValueError(f"expected {NUM_CLASSES} ImageNet labels (plus 'background'), got {len(rows)}")
    names = [row.split(",")[0].strip() for row in rows]
    for index, name in _TORCHVISION_RENAMES.items():
        names[index] = name
    return names


def read_imagenet_labels(file: Path) -> list[str]:
    """`imagenet_names` of a labels file."""
    return imagenet_names(Path(file).read_text(encoding="utf-8").splitlines())


def check_top_args(top: int, minconf: float) -> None:
    """image_tagger's limits: 1 <= top <= 1000 (an int), 0 <= minconf <= 1; ValueError otherwise."""
    if isinstance(top, bool) or not isinstance(top, (int, np.integer)) or not 1 <= top <= TOP_MAX:
        raise ValueError(f"top must be an integer from 1 to {TOP_MAX}, not {top!r}")
    if isinstance(minconf, bool) or not isinstance(minconf, (int, float, np.floating)) \
            or not math.isfinite(minconf) or not 0.0 <= minconf <= 1.0:
        raise ValueError(f"minconf must be a number from 0 to 1, not {minconf!r}")


def top_labels(probs: np.ndarray, labels: Sequence[str], top: int = 1, minconf: float = 0.0) -> list[dict[str, Any]]:
    """The `top` most probable classes whose probability is at least `minconf`, most probable first.

    Both limits apply (at most `top` labels, each >= minconf), as in image_tagger; ties keep class
    order. Each item: {"label", "class_id", "confidence"}."""
    check_top_args(top, minconf)
    p = np.asarray(probs, dtype=np.float64).reshape(-1)
    if p.size != len(labels):
        raise ValueError(f"{p.size} probabilities for {len(labels)} labels")
    order = np.argsort(-p, kind="stable")[:top]
    return [{"label": labels[i], "class_id": int(i), "confidence": float(p[i])} for i in order if p[i] >= minconf]


def renormalised(probs: np.ndarray) -> np.ndarray:
    """float32 probabilities scaled to sum 1 (uniform when they are all zero)."""
    p = np.clip(np.asarray(probs, dtype=np.float64), 0.0, None)
    total = float(p.sum())
    return (p / total if total > 0 else np.full_like(p, 1.0 / max(1, p.size))).astype(np.float32)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, float32."""
    z = np.asarray(logits, dtype=np.float64)
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    return (z / z.sum(axis=-1, keepdims=True)).astype(np.float32)


# --------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------


def central_crop(rgb: np.ndarray, fraction: float) -> np.ndarray:
    """The central `fraction` of the height and of the width (TF's `central_crop`)."""
    h, w = rgb.shape[:2]
    ch, cw = max(1, round(h * fraction)), max(1, round(w * fraction))
    top, left = (h - ch) // 2, (w - cw) // 2
    return rgb[top : top + ch, left : left + cw]


def mobilenet_v2_input(rgb: np.ndarray, size: int = MOBILENET_V2_INPUT) -> np.ndarray:
    """uint8 (size, size, 3): central 87.5 % crop, resized to a square (area when shrinking)."""
    crop = central_crop(np.ascontiguousarray(rgb), MOBILENET_V2_CENTRAL_FRACTION)
    shrinking = crop.shape[0] >= size and crop.shape[1] >= size
    out = cv2.resize(np.ascontiguousarray(crop), (size, size),
                     interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
    return np.ascontiguousarray(out, dtype=np.uint8)


def efficientnet_b3_transforms():
    """torchvision's own eval transform for the IMAGENET1K_V1 weights."""
    from torchvision.models import EfficientNet_B3_Weights

    return EfficientNet_B3_Weights.IMAGENET1K_V1.transforms()


def efficientnet_b3_input(rgb: np.ndarray, transform: Any = None) -> np.ndarray:
    """float32 (3, 300, 300): torchvision's transform applied to the uint8 image tensor."""
    if transform is None:
        transform = efficientnet_b3_transforms()
    t = transform(uint8_chw_tensor(rgb))
    return t.contiguous().numpy().astype(np.float32, copy=False)


# --------------------------------------------------------------------------------------
# Runtimes
# --------------------------------------------------------------------------------------


class _MobileNetV2:
    """The TFLite classifier on one LiteRT Interpreter (not thread safe)."""

    def __init__(self, file: Path, labels_file: Path, threads: int):
        size = MOBILENET_V2_INPUT
        self.interpreter, inp, out = open_uint8_image_model(file, threads, size)
        classes = int(np.prod(out["shape"][1:]))
        if classes not in (NUM_CLASSES, NUM_CLASSES + 1):
            raise ValueError(f"{file.name}: expected {NUM_CLASSES + 1} outputs (background + ImageNet), got {classes}")
        self.labels = read_imagenet_labels(labels_file)
        self.skip = classes - NUM_CLASSES  # 1: index 0 is background
        self._in, self._out = inp["index"], out["index"]
        scale, zero = out["quantization"]
        self._scale, self._zero = float(scale or 1.0), float(zero)

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        self.interpreter.set_tensor(self._in, np.ascontiguousarray(x, np.uint8)[None])
        self.interpreter.invoke()
        raw = self.interpreter.get_tensor(self._out).reshape(-1).astype(np.float64)
        return renormalised((raw[self.skip :] - self._zero) * self._scale)

    def predict(self, batch: Sequence[np.ndarray]) -> list[np.ndarray]:
        return [self.probabilities(x) for x in batch]


class _EfficientNetB3:
    """torchvision's efficientnet_b3 with a local IMAGENET1K_V1 state_dict."""

    def __init__(self, file: Path, device: str, settings: Settings):
        import torch
        from torchvision.models import EfficientNet_B3_Weights, efficientnet_b3

        try:
            state = torch.load(str(file), map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ValueError(f"{file} is not a readable PyTorch state_dict: {exc}") from exc
        if not isinstance(state, dict):
            raise TypeError(f"{file} does not contain a state_dict")
        net = efficientnet_b3(weights=None)
        try:
            net.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise ValueError(f"{file} is not torchvision's efficientnet_b3 state_dict: {str(exc)[:400]}") from exc
        self.device = device
        self.net = net.eval().requires_grad_(False).to(device)
        self.settings = settings
        self.labels = list(EfficientNet_B3_Weights.IMAGENET1K_V1.meta["categories"])

    def predict(self, batch: Sequence[np.ndarray]) -> list[np.ndarray]:
        import torch

        if not batch:
            return []
        configure_torch_threads(self.settings)
        x = torch.from_numpy(np.stack([np.asarray(b, np.float32) for b in batch])).to(self.device)
        with torch.inference_mode():
            logits = self.net(x).float().cpu().numpy()
        return list(softmax(logits))


# --------------------------------------------------------------------------------------
# Adapter
# --------------------------------------------------------------------------------------


class TagsAdapter(ModelAdapter):
    name = "tags"
    title = "ImageNet-1K tags (MobileNetV2 TFLite by default; EfficientNet-B3 with TAGS_MODEL=efficientnet_b3)"
    path_setting = "tags_path"
    default_subdir = "tags"
    source = VARIANTS["mobilenet_v2"].urls[MOBILENET_V2_FILE]
    files: ClassVar[tuple[str, ...]] = VARIANTS["mobilenet_v2"].files
    sha256: ClassVar[dict[str, str]] = dict(VARIANTS["mobilenet_v2"].sha256)
    #: the other variant's file, also accepted in (and copied into) the folder
    alt_files: ClassVar[tuple[str, ...]] = VARIANTS["efficientnet_b3"].files
    thread_safe = False
    max_batch = 16

    def __init__(self, settings: Settings):
        super().__init__(settings)
        self.labels: list[str] = []
        self._impl: _MobileNetV2 | _EfficientNetB3 | None = None
        self._transform: Any = None

    @property
    def variant(self) -> TagsVariant:
        model = str(self.settings.tags_model or "mobilenet_v2").lower()
        if model not in VARIANTS:
            raise ValueError(f"TAGS_MODEL must be one of {tuple(VARIANTS)}, not {model!r}")
        return VARIANTS[model]

    # -- lifecycle ---------------------------------------------------------------------
    def model_files(self, path: Path) -> list[Path]:
        """The variant's files for a TAGS_PATH / MODEL_DIR/tags that names the folder or the weights file;
        ModelNotFound (with what to do) when one is missing."""
        variant = self.variant
        main = weights_file(Path(path), variant.files[0])
        found = [main] + [main.parent / f for f in variant.files[1:]]
        missing = [f.name for f in found if not f.is_file()]
        if missing:
            where = f"{main.parent} does not exist" if not main.parent.is_dir() else \
                f"{', '.join(missing)} missing in {main.parent}"
            raise ModelNotFound(
                f"ImageNet tags model ({variant.name}) not found: {where}. Put {', '.join(variant.files)} there "
                f"(scripts/download_models.py tags fetches them from {variant.urls[variant.files[0]]}) "
                "or set TAGS_PATH.")
        return found

    def load(self, path: Path, device: str) -> None:
        files = self.model_files(path)
        if self.variant.name == "mobilenet_v2":
            self._impl = _MobileNetV2(files[0], files[1], self.settings.threads)
        else:
            configure_torch_threads(self.settings)
            self._impl = _EfficientNetB3(files[0], resolve_device(device, as_given=True), self.settings)
            self._transform = efficientnet_b3_transforms()
        self.labels = self._impl.labels

    # -- inference -----------------------------------------------------------------------
    def prepare(self, image: DecodedImage) -> np.ndarray:
        """The variant's input, made once per image (cached on it)."""
        variant, max_dim = self.variant.name, self.settings.analysis_max_dim
        if variant == "mobilenet_v2":
            short = math.ceil(MOBILENET_V2_INPUT / MOBILENET_V2_CENTRAL_FRACTION)
            return image.cached(("tags_input", variant),
                                lambda: mobilenet_v2_input(source_rgb(image, short, max_dim)))
        if self._transform is None:
            self._transform = efficientnet_b3_transforms()
        return image.cached(("tags_input", variant), lambda: efficientnet_b3_input(
            source_rgb(image, EFFICIENTNET_B3_RESIZE, max_dim), self._transform))

    def predict(self, batch: Sequence[Any]) -> list[np.ndarray]:
        """One float32 probability vector (1000 classes, sum 1) per prepared input."""
        if self._impl is None:
            raise RuntimeError("the tags model is not loaded")
        return self._impl.predict(list(batch))

    def top(self, probs: np.ndarray, top: int = 1, minconf: float = 0.0) -> list[dict[str, Any]]:
        """`top_labels` with this model's labels."""
        return top_labels(probs, self.labels, top, minconf)

    @classmethod
    def download(cls, dest: Path, model: str = "mobilenet_v2", *, client: Any = None) -> list[Path]:
        """Fetch TAGS_MODEL's files into folder `dest`, sha256-checked."""
        variant = VARIANTS[model]
        return [fetch(variant.urls[f], Path(dest) / f, variant.sha256.get(f), client=client) for f in variant.files]
