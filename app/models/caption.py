"""Image captions (transformers `BlipForConditionalGeneration`): one short English sentence per image.

Where the files live: `MODEL_DIR/caption`, or `CAPTION_PATH`. The folder is what
`BlipForConditionalGeneration.save_pretrained` + `BlipProcessor.save_pretrained` (or
`snapshot_download`) write: `config.json`, `model.safetensors`, `preprocessor_config.json`
and the tokenizer files (`tokenizer_config.json` with `vocab.txt` and/or `tokenizer.json`,
`special_tokens_map.json`); transformers >= 5 writes a `BlipProcessor`'s image settings into
`processor_config.json` instead of `preprocessor_config.json`, and either is read. `CAPTION_MODEL_NAME` (default
`Salesforce/blip-image-captioning-base`) is the hub id `scripts/download_models.py` fills the
folder from and the `model_name` captions are labelled with; with `ALLOW_MODEL_DOWNLOADS=true`
a missing folder is downloaded on first load.

Preprocessing is done here (numpy, once per image, cached on the `DecodedImage`; bit-identical to
torchvision's uint8 resize, tests/unit/test_onnx_dinov2_emotion.py) and reproduces transformers'
default (torchvision) `BlipImageProcessor`: resize to exactly the
processor's `size` (384x384 for the published models, aspect ratio not kept), bicubic and
antialiased on uint8, then rescale (1/255) and normalise with its mean/std (OpenAI CLIP's).
It is `dinov2_pixel_values` with no centre crop and an exact (height, width) resize.

Decoding is greedy (`num_beams=1`, no sampling): deterministic, and the same caption for an
image alone or in a batch. The published model card decodes greedily too (its
`model.generate(**inputs)` example). `max_length` counts the tokens of the output sequence,
the decoder's start token included, so a caption has at most `max_length - 1` tokens.
Captions come back decoded without special tokens and stripped of surrounding whitespace.
Caption quality is the published model's; the tests use a tiny random model.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from app.core.config import Settings
from app.imaging.decode import DecodedImage
from app.models.base import ModelAdapter, ModelNotFound
from app.models.clip_files import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD  # BlipImageProcessor's defaults too
from app.models.dinov2 import Dinov2Preprocessing, dinov2_pixel_values
from app.models.download import hub_snapshot
from app.models.torch_runtime import autocast, bf16_wanted, configure_torch_threads, resolve_device, source_rgb

if TYPE_CHECKING:
    from transformers import BlipForConditionalGeneration, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

CAPTION_HUB_ID = "Salesforce/blip-image-captioning-base"
PREPROCESSOR_FILE = "preprocessor_config.json"
#: transformers >= 5 saves a BlipProcessor's image processor inside this file instead (key "image_processor")
PROCESSOR_FILE = "processor_config.json"
#: what `download` fetches from a BLIP repo on the hub
CAPTION_ALLOW_PATTERNS = [
    "config.json",
    "model.safetensors",
    PREPROCESSOR_FILE,
    PROCESSOR_FILE,
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.json",
    "vocab.txt",
]
#: the caption length when a caller names none (tokens, start token included)
DEFAULT_MAX_LENGTH = 50
MAX_LENGTH_LIMIT = 512  # BLIP's text decoder has 512 positions


def blip_preprocessing(cfg: dict[str, Any]) -> Dinov2Preprocessing:
    """A BLIP preprocessor_config.json's dict → parameters (missing keys: BlipImageProcessor's defaults)."""
    size = cfg.get("size", {"height": 384, "width": 384})
    if isinstance(size, int):
        hw: tuple[int, int] = (size, size)
    elif isinstance(size, dict) and size.get("height") and size.get("width"):
        hw = (int(size["height"]), int(size["width"]))
    else:
        raise ValueError(f"unsupported BLIP size {size!r} (expected height and width)")
    resample = int(cfg.get("resample", 3))
    if resample not in (0, 2, 3):
        raise ValueError(f"unsupported resample {resample} in {PREPROCESSOR_FILE}")
    do_rescale, do_normalize = cfg.get("do_rescale", True), cfg.get("do_normalize", True)

    def triple(v: Any) -> tuple[float, float, float]:
        vals = [float(x) for x in (v if isinstance(v, list | tuple) else [v])]
        vals = vals * 3 if len(vals) == 1 else vals
        return vals[0], vals[1], vals[2]

    return Dinov2Preprocessing(
        resize_to=hw if cfg.get("do_resize", True) else None,
        resample=resample,
        crop=None,
        rescale=float(cfg.get("rescale_factor", 1 / 255)) if do_rescale else 1.0,
        mean=triple(cfg.get("image_mean", OPENAI_CLIP_MEAN)) if do_normalize else (0.0, 0.0, 0.0),
        std=triple(cfg.get("image_std", OPENAI_CLIP_STD)) if do_normalize else (1.0, 1.0, 1.0),
    )


def read_image_processor_config(folder: Path) -> dict[str, Any]:
    """The image processor's dict: preprocessor_config.json (the hub repos), else the "image_processor"
    of processor_config.json (what `BlipProcessor.save_pretrained` writes with transformers >= 5)."""
    folder = Path(folder)
    if (folder / PREPROCESSOR_FILE).is_file():
        return json.loads((folder / PREPROCESSOR_FILE).read_text(encoding="utf-8"))
    cfg = json.loads((folder / PROCESSOR_FILE).read_text(encoding="utf-8"))
    inner = cfg.get("image_processor", cfg)
    if not isinstance(inner, dict):
        raise ValueError(f"{folder / PROCESSOR_FILE} has no image_processor settings")
    return inner


def blip_pixel_values(rgb: np.ndarray, prep: Dinov2Preprocessing) -> np.ndarray:
    """BlipImageProcessor (torchvision backend) for one HxWx3 uint8 image → float32 (3, h, w)."""
    return dinov2_pixel_values(rgb, prep)


class CaptionAdapter(ModelAdapter):
    name: ClassVar[str] = "caption"
    title: ClassVar[str] = "Image captions (transformers BLIP, greedy decoding)"
    path_setting: ClassVar[str | None] = "caption_path"
    default_subdir: ClassVar[str] = "caption"
    source: ClassVar[str] = f"hf://{CAPTION_HUB_ID}"
    files: ClassVar[tuple[str, ...]] = ("config.json", "model.safetensors", PREPROCESSOR_FILE, "tokenizer_config.json")
    #: copied too by `download_models.py --from`: the tokenizer's vocabulary (one of tokenizer.json /
    #: vocab.txt is enough), and the transformers-5 processor file that may stand in for PREPROCESSOR_FILE
    alt_files: ClassVar[tuple[str, ...]] = ("tokenizer.json", "vocab.txt", "special_tokens_map.json", PROCESSOR_FILE)
    uses_torch: ClassVar[bool] = True
    #: blip-base: a ViT-B/16 at 384 px (577 tokens) plus a BERT-base decoder run per token; 8 images
    #: per generate keeps a CPU forward's activations well under 1 GB
    max_batch: ClassVar[int] = 8

    def __init__(self, settings: Settings):
        super().__init__(settings)
        self.model: BlipForConditionalGeneration | None = None
        self.tokenizer: PreTrainedTokenizerBase | None = None
        self.model_name: str = settings.caption_model_name
        self.prep = blip_preprocessing({})
        self.bf16 = False

    # -- files ---------------------------------------------------------------------
    @classmethod
    def has_files(cls, path: Path) -> bool:
        path = Path(path)
        needed = [f for f in cls.files if f != PREPROCESSOR_FILE]
        return (all((path / f).is_file() for f in needed)
                and any((path / f).is_file() for f in (PREPROCESSOR_FILE, PROCESSOR_FILE))
                and any((path / f).is_file() for f in ("tokenizer.json", "vocab.txt")))

    @classmethod
    def download(cls, dest: Path, repo_id: str = CAPTION_HUB_ID) -> Path:
        """The files BLIP, its processor and tokenizer need, into `dest`."""
        return hub_snapshot(dest, repo_id, CAPTION_ALLOW_PATTERNS)

    def _ensure_files(self, path: Path) -> None:
        if self.has_files(path):
            return
        if self.settings.allow_model_downloads:
            log.info("downloading BLIP %s into %s", self.model_name, path)
            self.download(path, self.model_name)
            if self.has_files(path):
                return
        raise ModelNotFound(
            f"caption model files ({' + '.join(self.files)} + tokenizer.json/vocab.txt) not found at {path}; run "
            f"scripts/download_models.py caption (fetches {self.model_name!r}), set ALLOW_MODEL_DOWNLOADS=true, or "
            f"point CAPTION_PATH at a folder written by BlipForConditionalGeneration and BlipProcessor.save_pretrained"
        )

    # -- lifecycle -------------------------------------------------------------------
    def load(self, path: Path, device: str) -> None:
        path = Path(path)
        self._ensure_files(path)  # before importing torch: a missing model costs nothing
        import torch
        from transformers import AutoTokenizer, BlipForConditionalGeneration

        kind = json.loads((path / "config.json").read_text(encoding="utf-8")).get("model_type")
        if kind != "blip":
            raise ValueError(f"{path / 'config.json'} describes a {kind!r} model, not blip")
        prep = blip_preprocessing(read_image_processor_config(path))
        configure_torch_threads(self.settings)
        device = resolve_device(device, as_given=True)
        model = BlipForConditionalGeneration.from_pretrained(str(path), local_files_only=True, dtype=torch.float32)
        model.eval().requires_grad_(False).to(device)
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        except Exception as exc:
            raise ModelNotFound(f"BLIP tokenizer files not found or unreadable in {path}: {exc}") from exc
        self.model, self.tokenizer, self.prep, self.device = model, tokenizer, prep, device
        self.bf16 = bf16_wanted(self.settings, device)

    # -- inference -----------------------------------------------------------------------
    def prepare(self, image: DecodedImage) -> np.ndarray:
        """float32 (3, 384, 384) pixel_values, cached on the image."""
        prep = self.prep

        def make() -> np.ndarray:
            r = prep.resize_to
            short = (1 << 30) if r is None else (r if isinstance(r, int) else max(r))
            return blip_pixel_values(source_rgb(image, short, self.settings.analysis_max_dim), prep)

        return image.cached(("blip_pixels", prep), make)

    def predict(self, batch: Sequence[np.ndarray]) -> list[str]:
        """One caption per prepared image, at most DEFAULT_MAX_LENGTH tokens."""
        return self.caption(batch, DEFAULT_MAX_LENGTH)

    def caption(self, batch: Sequence[np.ndarray], max_length: int = DEFAULT_MAX_LENGTH) -> list[str]:
        """One caption per prepared image (greedy decoding; `max_length` tokens at most, the start token
        included), in generate calls of at most `max_batch` images. The task layer calls it as
        `registry.call("caption", lambda m, xs: m.caption(xs, n), prepared)`."""
        if not 2 <= max_length <= MAX_LENGTH_LIMIT:
            raise ValueError(f"max_length must be between 2 and {MAX_LENGTH_LIMIT}, got {max_length}")
        # never past the text decoder's positions (512 for the published BLIP; a caption stops far earlier)
        positions = getattr(getattr(getattr(self.model, "config", None), "text_config", None), "max_position_embeddings", None)
        if isinstance(positions, int) and positions >= 2:
            max_length = min(max_length, positions)
        out: list[str] = []
        step = max(1, self.max_batch)
        for i in range(0, len(batch), step):
            out.extend(self._generate(batch[i : i + step], max_length))
        return out

    def generate_ids(self, batch: Sequence[np.ndarray], max_length: int) -> Any:
        """The generated token ids (batch, <= max_length), start token included (a torch tensor)."""
        import torch

        if self.model is None:
            raise RuntimeError("caption is not loaded")
        configure_torch_threads(self.settings)
        x = torch.from_numpy(np.stack(batch)).to(self.device)
        with torch.inference_mode(), autocast(self.device, self.bf16):
            return self.model.generate(pixel_values=x, max_length=max_length, num_beams=1, do_sample=False)

    def _generate(self, batch: Sequence[np.ndarray], max_length: int) -> list[str]:
        if not batch:
            return []
        if self.tokenizer is None:
            raise RuntimeError("caption is not loaded")
        ids = self.generate_ids(batch, max_length)
        texts = self.tokenizer.batch_decode(ids.cpu().tolist(), skip_special_tokens=True)
        return [t.strip() for t in texts]
