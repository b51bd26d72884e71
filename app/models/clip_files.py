"""What a CLIP folder says besides its weights, read without transformers or torch.

On ONNX Runtime / OpenVINO the CLIP adapter needs three things from the folder at load time, and
none of them may import transformers (which imports torch, about 400 MiB of resident memory):

* the image preprocessing (`read_clip_preprocessing`): `preprocessor_config.json` as JSON, with
  `CLIPImageProcessor`'s defaults for keys a config leaves out;
* the text tokenizer (`ClipTextTokenizer`): transformers' own tokenizer for the folder, saved once as
  the `tokenizers` library's JSON with CLIP's padding and truncation set (`clip_tokenizer_file`). It is
  written at export time, next to the text graph, by transformers itself (so it is exactly the
  tokenizer transformers would use, whichever files the folder has: `tokenizer.json`, or only
  `vocab.json` + `merges.txt`), keyed by the folder's SHA-256 like the graphs;
* the embedding width and image size, which the exported graphs' shapes say (clip.py).

tests/unit/test_onnx_clip.py compares the tokenizer with transformers' on many texts (padding,
truncation at the context length, unicode) and the preprocessing with `CLIPImageProcessor`.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from app.models.onnx_runtime import onnx_file_for, sha256_of

log = logging.getLogger("loupe.models")

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
#: CLIPImageProcessor's defaults (transformers 5), for keys a preprocessor_config.json leaves out
_DEFAULT_SIZE: dict[str, int] = {"shortest_edge": 224}
_DEFAULT_CROP: dict[str, int] = {"height": 224, "width": 224}

_tokenizer_lock = threading.Lock()


def size_value(size: Any, *keys: str) -> int | None:
    """A processor's size entry (an int, or a dict / object with `shortest_edge`, `height`, …) → the first of
    `keys` it has."""
    if size is None:
        return None
    if isinstance(size, int):
        return size
    for k in keys:
        v = size.get(k) if isinstance(size, dict) else getattr(size, k, None)
        if v:
            return int(v)
    return None


def clip_image_size(path: Path) -> int:
    """The vision tower's input side from `config.json` (CLIPVisionConfig's default 224 when a config saved as a
    diff from the defaults leaves it out)."""
    cfg = json.loads((Path(path) / "config.json").read_text(encoding="utf-8"))
    return int((cfg.get("vision_config") or {}).get("image_size") or 224)


def read_clip_preprocessing(path: Path, image_size: int) -> tuple[int, tuple[int, int], tuple[float, ...],
                                                                   tuple[float, ...]]:
    """(shortest_edge, (crop height, crop width), mean, std) from the folder's `preprocessor_config.json`;
    without one, the model's own `image_size` for both and CLIP's mean and std."""
    file = Path(path) / "preprocessor_config.json"
    if not file.is_file():
        return image_size, (image_size, image_size), OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
    cfg = json.loads(file.read_text(encoding="utf-8"))
    shortest = size_value(cfg.get("size", _DEFAULT_SIZE), "shortest_edge", "height") or 224
    crop = cfg.get("crop_size", _DEFAULT_CROP)
    ch = size_value(crop, "height") or shortest
    cw = size_value(crop, "width") or ch
    mean = tuple(float(v) for v in cfg.get("image_mean", OPENAI_CLIP_MEAN))
    std = tuple(float(v) for v in cfg.get("image_std", OPENAI_CLIP_STD))
    return shortest, (ch, cw), mean, std


def clip_tokenizer_file(path: Path) -> Path:
    """The folder's tokenizer as `tokenizers` JSON with CLIP's padding (to the longest text, with the pad token)
    and truncation (at the text model's `max_position_embeddings`) set: `clip_text.onnx.<digest>.tokenizer.json`
    beside the text graph. Written by transformers the first time (an export step: transformers and torch are
    imported for it only), read without them afterwards; a changed folder gets a new file."""
    path = Path(path)
    graph = onnx_file_for(path, "clip_text")
    dest = graph.with_name(f"{graph.name}.{sha256_of(path)[:16]}.tokenizer.json")
    if dest.is_file():
        return dest
    with _tokenizer_lock:
        if dest.is_file():
            return dest
        from transformers import CLIPConfig, CLIPTokenizer

        tok = CLIPTokenizer.from_pretrained(str(path), local_files_only=True)
        config: Any = CLIPConfig.from_pretrained(str(path), local_files_only=True)
        context = int(config.text_config.max_position_embeddings)
        if tok.pad_token_id is None:
            raise ValueError(f"the CLIP tokenizer in {path} has no pad token")
        backend = type(tok.backend_tokenizer).from_str(tok.backend_tokenizer.to_str())
        backend.enable_truncation(max_length=context, direction=tok.truncation_side)
        backend.enable_padding(direction=tok.padding_side, pad_id=int(tok.pad_token_id), pad_token=str(tok.pad_token))
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + f".{os.getpid()}.tmp")
        backend.save(str(tmp))
        os.replace(tmp, dest)
        for old in dest.parent.glob(f"{graph.name}.*.tokenizer.json"):
            if old != dest:
                old.unlink(missing_ok=True)
        log.info("CLIP tokenizer for %s saved as %s", path, dest.name)
    return dest


class ClipTextTokenizer:
    """Texts → (input_ids, attention_mask), (N, L) int64, padded to the longest text and truncated at the context,
    with the start and end tokens: what `CLIPTokenizer(texts, padding=True, truncation=True, max_length=…)` gives."""

    def __init__(self, file: Path):
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_file(str(file))
        truncation = self.tokenizer.truncation
        if not truncation or self.tokenizer.padding is None:
            raise ValueError(f"{file} sets no padding or truncation: not a Loupe CLIP tokenizer file")
        self.max_length = int(truncation["max_length"])

    def __call__(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        encoded = self.tokenizer.encode_batch(list(texts))
        ids = np.asarray([e.ids for e in encoded], np.int64).reshape(len(encoded), -1)
        mask = np.asarray([e.attention_mask for e in encoded], np.int64).reshape(len(encoded), -1)
        return ids, mask
