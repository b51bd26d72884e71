"""CLIP image/text embeddings (transformers `CLIPModel`) and the LAION aesthetic head.

Where the CLIP files live (`CLIP_MODEL_NAME`):

* a local folder (absolute, `./…`, `~/…`, or any path that exists) is used as is;
* a hub id such as `openai/clip-vit-base-patch32` maps to
  `MODEL_DIR/clip/openai__clip-vit-base-patch32` (`/` → `__`).

The folder is what `save_pretrained` / `snapshot_download` write: `config.json`,
`model.safetensors` (or `pytorch_model.bin`), `preprocessor_config.json`, and the
tokenizer files (`tokenizer.json` and/or `vocab.json` + `merges.txt`,
`tokenizer_config.json`, `special_tokens_map.json`). If it is missing the adapter
raises ModelNotFound, unless `ALLOW_MODEL_DOWNLOADS=true` and the name is a hub
id, in which case it is downloaded there first.

Image preprocessing is done here (no processor call per image) with the parameters of
the folder's `preprocessor_config.json`, reproducing transformers' default
(torchvision) `CLIPImageProcessor`: shortest side → 224 bicubic (antialiased, on
uint8), centre crop 224 (floor offsets), /255, CLIP mean/std. `clip_pixel_values`
runs torchvision's ops (the torch runtime, the reference); `clip_pixel_values_np` is
the same computation in numpy (torch's integer resampling kernel, ported), bit for bit
equal to it on the tests' photos and random sizes, for the ONNX runtimes.

`INFERENCE_RUNTIME` (`app.models.onnx_runtime`) picks how the towers run:

* `onnxruntime` (default) / `openvino`: two graphs exported from the folder once and
  cached in it (`clip_image.onnx`: pixel_values (N, 3, 224, 224) → the projected image
  embedding; `clip_text.onnx`: input_ids + attention_mask (N, L), batch and sequence
  dynamic → the projected text embedding), stamped with the SHA-256 of the folder's
  files, so changed weights are exported again on the next load. torch is used for the
  export only; transformers still supplies the tokenizer and reads the configs.
* `torch`: `CLIPModel` in eager PyTorch, as before (CUDA, bf16 autocast).

Both give the embedding before L2 normalisation (`image_features` / `text_features`);
`predict` / `embed_text` normalise it. The LAION head is one dot product in numpy on
every runtime (its checkpoint is read with torch.load at load time).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from app.core.config import Settings
from app.imaging.decode import DecodedImage
from app.models import outputs
from app.models.base import ModelAdapter, ModelNotFound
from app.models.download import fetch, hub_snapshot
from app.models.onnx_runtime import Session, ensure_onnx, export_module, onnx_file_for
from app.models.outputs import Output
from app.models.resample import BICUBIC, resize_uint8
from app.models.torch_runtime import (
    autocast,
    bf16_wanted,
    configure_torch_threads,
    l2_normalize,
    resolve_device,
    source_rgb,
    torch_threads_for,
    uint8_chw_tensor,
)

if TYPE_CHECKING:
    from transformers import CLIPModel, CLIPTokenizer

log = logging.getLogger(__name__)

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
#: what `download` fetches from a CLIP repo on the hub
CLIP_ALLOW_PATTERNS = [
    "config.json",
    "preprocessor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "model.safetensors",
]


def is_hub_id(name: str) -> bool:
    """True for `org/name` style ids that are not an existing local path."""
    name = name.strip()
    if not name or name.startswith(("/", ".", "~")) or "\\" in name:
        return False
    if Path(name).expanduser().exists():
        return False
    return bool(_HUB_ID.match(name))


def _size_value(size: Any, *keys: str) -> int | None:
    if size is None:
        return None
    if isinstance(size, int):
        return size
    for k in keys:
        v = size.get(k) if isinstance(size, dict) else getattr(size, k, None)
        if v:
            return int(v)
    return None


def clip_pixel_values(
    rgb: np.ndarray,
    *,
    shortest_edge: int = 224,
    crop: tuple[int, int] = (224, 224),
    mean: Sequence[float],
    std: Sequence[float],
) -> np.ndarray:
    """transformers' torchvision CLIPImageProcessor, for one HxWx3 uint8 image → float32 (3, h, w)."""
    import torch
    import torchvision.transforms.v2.functional as TF  # what transformers uses (v1 rounds differently)
    from torchvision.transforms import InterpolationMode

    t = uint8_chw_tensor(rgb)  # contiguous: torchvision's uint8 kernels round differently on strided input
    h, w = t.shape[-2:]
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = shortest_edge, int(shortest_edge * long / short)
    new_h, new_w = (new_long, new_short) if w <= h else (new_short, new_long)
    if (new_h, new_w) != (h, w):
        t = TF.resize(t, [new_h, new_w], interpolation=InterpolationMode.BICUBIC, antialias=True)
    ch, cw = crop
    h, w = t.shape[-2:]
    if ch > h or cw > w:  # only for extreme aspect ratios; same padding as transformers
        pad = [
            (cw - w) // 2 if cw > w else 0,
            (ch - h) // 2 if ch > h else 0,
            (cw - w + 1) // 2 if cw > w else 0,
            (ch - h + 1) // 2 if ch > h else 0,
        ]
        t = TF.pad(t, pad, fill=0)
        h, w = t.shape[-2:]
    top, left = int((h - ch) / 2.0), int((w - cw) / 2.0)
    t = t[:, top : top + ch, left : left + cw].float()
    m = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1) * 255.0
    s = torch.tensor(std, dtype=torch.float32).view(3, 1, 1) * 255.0
    return ((t - m) / s).contiguous().numpy()


# torch's uint8 antialiased bicubic resize (aten/src/ATen/native/cpu/UpSampleKernel.cpp, the kernel torchvision's
# `resize` runs on uint8 input), in numpy: per output index the Keys cubic (a = -0.5) widened by the scale when
# reducing, normalised in float64, rounded to int16 at the largest precision (bits) at which the axis's largest
# weight still fits; each output is an integer dot product plus half an LSB, shifted down and clamped to 0..255.
# The width is resampled first, then the height (the uint8 result in between, as torch does).


def clip_pixel_values_np(
    rgb: np.ndarray,
    *,
    shortest_edge: int = 224,
    crop: tuple[int, int] = (224, 224),
    mean: Sequence[float],
    std: Sequence[float],
) -> np.ndarray:
    """`clip_pixel_values` without torch: the same sizes, resampling, padding, crop and float32 arithmetic
    (tests/unit/test_onnx_clip.py checks the two are equal). float32 (3, h, w)."""
    h, w = rgb.shape[:2]
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = shortest_edge, int(shortest_edge * long / short)
    new_h, new_w = (new_long, new_short) if w <= h else (new_short, new_long)
    ch, cw = crop
    if ch <= new_h and cw <= new_w:  # the usual case: only the crop is resampled
        top, left = int((new_h - ch) / 2.0), int((new_w - cw) / 2.0)
        t = resize_uint8(rgb, (new_h, new_w), BICUBIC, (top, left, ch, cw))
    else:  # extreme aspect ratios: zero padding as in clip_pixel_values, then the crop
        t = resize_uint8(rgb, (new_h, new_w), BICUBIC)
        pad_t = (ch - new_h) // 2 if ch > new_h else 0
        pad_l = (cw - new_w) // 2 if cw > new_w else 0
        pad_b = (ch - new_h + 1) // 2 if ch > new_h else 0
        pad_r = (cw - new_w + 1) // 2 if cw > new_w else 0
        t = np.pad(t, ((pad_t, pad_b), (pad_l, pad_r), (0, 0)))
        top, left = int((t.shape[0] - ch) / 2.0), int((t.shape[1] - cw) / 2.0)
        t = t[top:top + ch, left:left + cw]
    m = np.asarray(mean, dtype=np.float32).reshape(3, 1, 1) * np.float32(255.0)
    s = np.asarray(std, dtype=np.float32).reshape(3, 1, 1) * np.float32(255.0)
    return np.ascontiguousarray((t.transpose(2, 0, 1).astype(np.float32) - m) / s, dtype=np.float32)


@contextmanager
def _quiet_trace() -> Iterator[None]:
    """Without the tracer's warnings about the Python values it freezes into the CLIP graphs: the image size
    (fixed by the model), `seq_length > max_position_embeddings` (the tokenizer truncates to it), whether an
    attention mask is given (always) and the mask's padding length (0: the mask is as long as the ids); and
    the exporter's note that negative indices would break the pooling's gather (they are an arange and an
    argmax)."""
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message="Exporting aten::index operator of advanced indexing")
        yield


def build_clip_towers(model: CLIPModel) -> tuple[Any, Any]:
    """The two modules the ONNX graphs are exported from: exactly what the torch runtime computes,
    `visual_projection(vision_model(pixel_values).pooler_output)` and
    `text_projection(text_model(input_ids, attention_mask).pooler_output)` (before L2 normalisation)."""
    from torch import nn

    class ClipImageTower(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.vision_model, self.visual_projection = model.vision_model, model.visual_projection

        def forward(self, pixel_values):
            return self.visual_projection(self.vision_model(pixel_values=pixel_values).pooler_output)

    class ClipTextTower(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.text_model, self.text_projection = model.text_model, model.text_projection

        def forward(self, input_ids, attention_mask):
            out = self.text_model(input_ids=input_ids, attention_mask=attention_mask)
            return self.text_projection(out.pooler_output)

    return ClipImageTower().eval(), ClipTextTower().eval()


class ClipAdapter(ModelAdapter):
    name: ClassVar[str] = "clip"
    title: ClassVar[str] = "CLIP image/text embeddings (transformers CLIPModel)"
    path_setting: ClassVar[str | None] = None  # CLIP_MODEL_NAME, see resolve_path
    default_subdir: ClassVar[str] = "clip"
    source: ClassVar[str] = "hf://openai/clip-vit-base-patch32"
    uses_torch: ClassVar[bool] = True
    files: ClassVar[tuple[str, ...]] = tuple(CLIP_ALLOW_PATTERNS)

    def __init__(self, settings: Settings):
        super().__init__(settings)
        self.model: CLIPModel | None = None
        self.image_session: Session | None = None
        self.text_session: Session | None = None
        self.tokenizer: CLIPTokenizer | None = None
        self.folder: Path | None = None
        self.model_name: str = settings.clip_model_name
        self.dim: int | None = None
        self.shortest_edge = 224
        self.crop = (224, 224)
        self.mean: tuple[float, ...] = OPENAI_CLIP_MEAN
        self.std: tuple[float, ...] = OPENAI_CLIP_STD
        self.max_text_len = 77
        self.bf16 = False

    # -- paths -------------------------------------------------------------------
    def resolve_path(self) -> Path:
        name = self.settings.clip_model_name.strip()
        if is_hub_id(name):
            return Path(self.settings.model_dir).expanduser() / self.default_subdir / name.replace("/", "__")
        return Path(name).expanduser()

    @staticmethod
    def has_files(path: Path) -> bool:
        return (path / "config.json").is_file() and any(
            (path / f).is_file() for f in ("model.safetensors", "pytorch_model.bin")
        )

    @classmethod
    def download(cls, dest: Path, repo_id: str = "openai/clip-vit-base-patch32") -> Path:
        """The files CLIPModel + tokenizer + processor need, into `dest`."""
        hub_snapshot(dest, repo_id, CLIP_ALLOW_PATTERNS)
        if not (Path(dest).expanduser() / "model.safetensors").is_file():  # older repos only have the .bin
            hub_snapshot(dest, repo_id, ["pytorch_model.bin"])
        return Path(dest).expanduser()

    # -- lifecycle -----------------------------------------------------------------
    @staticmethod
    def build(path: Path) -> CLIPModel:
        """The folder's CLIPModel in fp32, eval (the torch runtime, and the ONNX export)."""
        import torch
        from transformers import CLIPModel

        model = CLIPModel.from_pretrained(str(path), local_files_only=True, dtype=torch.float32)
        return model.eval().requires_grad_(False)

    def export_onnx(self, path: Path, tokenizer: Any = None) -> tuple[Path, Path]:
        """The folder's two ONNX graphs, exported when missing or made from other files
        (`onnx_runtime.ensure_onnx`, keyed by the SHA-256 of the folder's files):

        * `clip_image.onnx`: `pixel_values` (N, 3, S, S) float32 → `embedding` (N, dim);
        * `clip_text.onnx`: `input_ids`, `attention_mask` (N, L) int64, N and L dynamic → `embedding` (N, dim).

        The text graph is traced on a padded batch of two texts, so the padding mask takes the same path as in
        a real batch (the pads follow the end token, whose state is the output: under the causal mask they do
        not reach it either way; tests/unit/test_onnx_clip.py compares padded and lone texts with torch)."""
        path = Path(path)
        built: list[CLIPModel] = []

        def towers() -> tuple[Any, Any]:
            if not built:
                built.append(self.build(path))
            return build_clip_towers(built[0])

        def export_image(dest: Path) -> None:
            import torch

            tower = towers()[0]
            size = int(getattr(built[0].config.vision_config, "image_size", 224))  # the graph's fixed height and width
            with _quiet_trace():
                export_module(tower, [torch.zeros(1, 3, size, size)], dest, ["pixel_values"], ["embedding"])

        def export_text(dest: Path) -> None:
            from transformers import CLIPTokenizer

            tok = tokenizer or CLIPTokenizer.from_pretrained(str(path), local_files_only=True)
            example = tok(["a photo of a cat on a mat", "a"], padding=True, return_tensors="pt")
            with _quiet_trace():
                export_module(towers()[1], [example["input_ids"], example["attention_mask"]], dest,
                              ["input_ids", "attention_mask"], ["embedding"],
                              dynamic={"input_ids": {1: "sequence"}, "attention_mask": {1: "sequence"}})

        image = ensure_onnx(path, onnx_file_for(path, "clip_image"), export_image, "clip_image")
        text = ensure_onnx(path, onnx_file_for(path, "clip_text"), export_text, "clip_text")
        return image, text

    def load(self, path: Path, device: str) -> None:
        from transformers import CLIPConfig, CLIPImageProcessor, CLIPTextConfig, CLIPTokenizer, CLIPVisionConfig

        path = Path(path)
        name = self.settings.clip_model_name.strip()
        if not self.has_files(path):
            if is_hub_id(name) and self.settings.allow_model_downloads:
                log.info("downloading CLIP %s into %s", name, path)
                self.download(path, name)
            else:
                how = (
                    f"run scripts/download_models.py clip, or set ALLOW_MODEL_DOWNLOADS=true to fetch {name!r}"
                    if is_hub_id(name)
                    else "point CLIP_MODEL_NAME at a folder written by CLIPModel.save_pretrained"
                )
                raise ModelNotFound(
                    f"CLIP model files (config.json + model.safetensors/pytorch_model.bin) not found at {path} "
                    f"(CLIP_MODEL_NAME={name!r}); {how}"
                )
        runtime = self.settings.inference_runtime
        model = None
        if runtime == "torch":
            configure_torch_threads(self.settings)
            device = resolve_device(device, as_given=True)
            model = self.build(path)
            net: Any = model  # transformers types `to` as a wrapper mypy cannot call
            net.to(device)  # in place (nn.Module.to)
            config = model.config
        else:
            config = CLIPConfig.from_pretrained(str(path), local_files_only=True)
            device = "cpu"
        try:
            tokenizer = CLIPTokenizer.from_pretrained(str(path), local_files_only=True)
        except Exception as exc:
            raise ModelNotFound(f"CLIP tokenizer files not found or unreadable in {path}: {exc}") from exc
        # CLIPConfig turns dict sub-configs into their classes, and CLIPModel sizes its projections from projection_dim
        vision, text, dim = config.vision_config, config.text_config, config.projection_dim
        assert isinstance(vision, CLIPVisionConfig) and isinstance(text, CLIPTextConfig) and dim is not None
        self.shortest_edge, self.crop = 224, (224, 224)
        self.mean, self.std = OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
        if (path / "preprocessor_config.json").is_file():
            proc = CLIPImageProcessor.from_pretrained(str(path), local_files_only=True)
            self.shortest_edge = _size_value(proc.size, "shortest_edge", "height") or 224
            ch = _size_value(proc.crop_size, "height") or self.shortest_edge
            cw = _size_value(proc.crop_size, "width") or ch
            self.crop = (ch, cw)
            self.mean = tuple(float(v) for v in proc.image_mean)
            self.std = tuple(float(v) for v in proc.image_std)
        else:
            size = _size_value(vision.image_size) or 224
            self.shortest_edge, self.crop = size, (size, size)
        if model is None:
            image_graph, text_graph = self.export_onnx(path, tokenizer)
            threads = torch_threads_for(self.settings)
            self.image_session = Session(image_graph, runtime, threads)
            self.text_session = Session(text_graph, runtime, threads)
        self.model, self.tokenizer, self.device, self.folder = model, tokenizer, device, path
        self.dim = int(dim)
        self.max_text_len = int(text.max_position_embeddings)
        self.model_name = name
        self.bf16 = model is not None and bf16_wanted(self.settings, device)

    # -- inference -------------------------------------------------------------------
    def prepare(self, image: DecodedImage) -> np.ndarray:
        """float32 (3, 224, 224) pixel_values, cached on the image: torchvision's ops whenever torch is in memory
        (1.3 ms a photo), else their numpy port (bit-identical, about 5 ms): the ONNX runtimes never need torch."""
        import sys

        on_torch = self.image_session is None or "torch" in sys.modules
        key = ("clip_pixels" if on_torch else "clip_pixels_np", self.shortest_edge, self.crop, self.mean, self.std)
        pixels = clip_pixel_values if on_torch else clip_pixel_values_np

        def rgb() -> np.ndarray:
            return source_rgb(image, self.shortest_edge, self.settings.analysis_max_dim)

        return image.cached(
            key,
            lambda: pixels(rgb(), shortest_edge=self.shortest_edge, crop=self.crop, mean=self.mean, std=self.std),
        )

    def image_features(self, batch: Sequence[np.ndarray]) -> np.ndarray:
        """(N, dim) float32 projected image embeddings before L2 normalisation, one batched forward."""
        if not batch:
            return np.zeros((0, self.dim or 0), np.float32)
        if self.image_session is not None:
            return self.image_session.run(pixel_values=np.stack(batch))[0].astype(np.float32, copy=False)
        import torch

        if self.model is None:
            raise RuntimeError("clip is not loaded")
        configure_torch_threads(self.settings)
        x = torch.from_numpy(np.stack(batch)).to(self.device)
        with torch.inference_mode(), autocast(self.device, self.bf16):
            pooled = self.model.vision_model(pixel_values=x).pooler_output
            emb = self.model.visual_projection(pooled)
        return emb.float().cpu().numpy()

    def predict(self, batch: Sequence[np.ndarray]) -> list[np.ndarray]:
        """L2-normalised float32 image embeddings (dim,), one batched forward."""
        if self.model is None and self.image_session is None:
            raise RuntimeError("clip is not loaded")
        if not batch:
            return []
        return list(l2_normalize(self.image_features(batch)))

    def text_features(self, texts: list[str]) -> np.ndarray:
        """(len(texts), dim) float32 projected text embeddings before L2 normalisation (texts padded to the
        longest, truncated to the model's context)."""
        if self.tokenizer is None or (self.model is None and self.text_session is None):
            raise RuntimeError("clip is not loaded")
        if not texts:
            return np.zeros((0, self.dim or 0), np.float32)
        if self.text_session is not None:
            tok = self.tokenizer(
                list(texts), padding=True, truncation=True, max_length=self.max_text_len, return_tensors="np"
            )
            return self.text_session.run(
                input_ids=np.asarray(tok["input_ids"], np.int64), attention_mask=np.asarray(tok["attention_mask"], np.int64)
            )[0].astype(np.float32, copy=False)
        import torch

        assert self.model is not None
        configure_torch_threads(self.settings)
        tok = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_text_len, return_tensors="pt"
        )
        with torch.inference_mode(), autocast(self.device, self.bf16):
            pooled = self.model.text_model(
                input_ids=tok["input_ids"].to(self.device),
                attention_mask=tok["attention_mask"].to(self.device),
            ).pooler_output
            emb = self.model.text_projection(pooled)
        return emb.float().cpu().numpy()

    def embed_text(self, texts: list[str]) -> np.ndarray:
        """(len(texts), dim) L2-normalised float32 text embeddings."""
        return l2_normalize(self.text_features(texts))


# --------------------------------------------------------------------------------------
# LAION aesthetic predictor V1 (linear head on CLIP image embeddings)
# --------------------------------------------------------------------------------------

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
        import torch

        path = Path(path)
        files = [path] if path.is_file() else [path / f for f in self.files if (path / f).is_file()]
        if not files:
            raise ModelNotFound(
                f"LAION aesthetic head not found at {path}: expected {' or '.join(self.files)} "
                f"(scripts/download_models.py laion_aesthetic, or set LAION_AESTHETIC_PATH)"
            )
        heads: dict[int, tuple[np.ndarray, float]] = {}
        for f in files:
            sd = torch.load(str(f), map_location="cpu", weights_only=True)
            sd = {k.split(".")[-1]: v for k, v in sd.items()}  # accept "layers.0.weight" style too
            w = sd["weight"].float().numpy().reshape(-1)
            b = float(sd["bias"].float().reshape(-1)[0])
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
