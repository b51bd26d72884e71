"""CLIP image/text embeddings (transformers `CLIPModel`).

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
  files, so changed weights are exported again on the next load. torch and transformers
  are used for the export only: the tokenizer (saved by transformers at export time), the
  preprocessing and the sizes are read without them (clip_files.py), so the service runs
  without importing torch (tests/unit/test_torch_free.py).
* `torch`: `CLIPModel` in eager PyTorch, as before (CUDA, bf16 autocast).

Both give the embedding before L2 normalisation (`image_features` / `text_features`);
`predict` / `embed_text` normalise it. The LAION head on these embeddings is laion.py.
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
from app.models.base import ModelAdapter, ModelNotFound
from app.models.clip_files import (
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    ClipTextTokenizer,
    clip_image_size,
    clip_tokenizer_file,
    read_clip_preprocessing,
)
from app.models.download import hub_snapshot
from app.models.onnx_runtime import Session, ensure_onnx, export_module, onnx_file_for
from app.models.quantize import embedding_check, open_session
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
    from transformers import CLIPModel

log = logging.getLogger(__name__)

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
        self.tokenizer: ClipTextTokenizer | None = None
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

    def export_onnx(self, path: Path) -> tuple[Path, Path]:
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
            import torch

            tok = ClipTextTokenizer(clip_tokenizer_file(path))
            ids, mask = tok(["a photo of a cat on a mat", "a"])
            with _quiet_trace():
                export_module(towers()[1], [torch.from_numpy(ids), torch.from_numpy(mask)], dest,
                              ["input_ids", "attention_mask"], ["embedding"],
                              dynamic={"input_ids": {1: "sequence"}, "attention_mask": {1: "sequence"}})

        image = ensure_onnx(path, onnx_file_for(path, "clip_image"), export_image, "clip_image")
        text = ensure_onnx(path, onnx_file_for(path, "clip_text"), export_text, "clip_text")
        return image, text

    def load(self, path: Path, device: str) -> None:
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
        try:
            self.tokenizer = ClipTextTokenizer(clip_tokenizer_file(path))
        except Exception as exc:
            raise ModelNotFound(f"CLIP tokenizer files not found or unreadable in {path}: {exc}") from exc
        runtime = self.settings.inference_runtime
        if runtime == "torch":
            configure_torch_threads(self.settings)
            self.device = resolve_device(device, as_given=True)
            self.model = self.build(path)
            net: Any = self.model  # transformers types `to` as a wrapper mypy cannot call
            net.to(self.device)  # in place (nn.Module.to)
            config: Any = self.model.config  # CLIPConfig: its sub-configs are typed as dicts too
            self.dim = int(config.projection_dim)
            image_size = int(config.vision_config.image_size)
            self.bf16 = bf16_wanted(self.settings, self.device)
            self.shortest_edge, self.crop, self.mean, self.std = read_clip_preprocessing(path, image_size)
        else:  # no transformers, no torch (unless the graphs must be exported)
            image_graph, text_graph = self.export_onnx(path)
            self.shortest_edge, self.crop, self.mean, self.std = read_clip_preprocessing(path, clip_image_size(path))
            threads = torch_threads_for(self.settings)
            self.image_session, self.precision = open_session(
                image_graph, self.settings, threads, name=self.name, input_name="pixel_values", prepare=self.prepare,
                check=embedding_check())
            self.text_session = Session(text_graph, runtime, threads)
            self.device = "cpu"
            self.dim = int(self.image_session.output_shape("embedding")[1] or 0)
        self.max_text_len = self.tokenizer.max_length
        self.folder, self.model_name = path, name

    # -- inference -------------------------------------------------------------------
    def prepare(self, image: DecodedImage) -> np.ndarray:
        """float32 (3, 224, 224) pixel_values, cached on the image: torchvision's ops whenever torch is in memory
        (1.3 ms a photo), else their numpy port (bit-identical, about 5 ms): the ONNX runtimes never need torch."""
        import sys

        on_torch = self.image_session is None or sys.modules.get("torch") is not None
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
        ids, mask = self.tokenizer(list(texts))
        if self.text_session is not None:
            return self.text_session.run(input_ids=ids, attention_mask=mask)[0].astype(np.float32, copy=False)
        import torch

        assert self.model is not None
        configure_torch_threads(self.settings)
        with torch.inference_mode(), autocast(self.device, self.bf16):
            pooled = self.model.text_model(
                input_ids=torch.from_numpy(ids).to(self.device), attention_mask=torch.from_numpy(mask).to(self.device)
            ).pooler_output
            emb = self.model.text_projection(pooled)
        return emb.float().cpu().numpy()

    def embed_text(self, texts: list[str]) -> np.ndarray:
        """(len(texts), dim) L2-normalised float32 text embeddings."""
        return l2_normalize(self.text_features(texts))
