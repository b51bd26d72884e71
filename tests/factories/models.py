"""Random-weight NIMA (pyiqa) and CLIP (transformers) models in their real on-disk formats.

Neither pyiqa's NIMA checkpoints nor CLIP ViT-B/32 can be downloaded here, so the
loading code is tested against files these functions write:

* NIMA: pyiqa's own `pyiqa.archs.nima_arch.NIMA` class, built with random weights
  (timm's ImageNet download switched off), saved exactly as pyiqa's published files
  are: `torch.save({"params": net.state_dict()}, "NIMA_koniq-250367ae.pth")`. The
  backbone is the real full-size InceptionResNetV2 (≈ 55 M parameters, 218 MB), so
  the adapters' real loader and the real forward run; tests build each file once
  per session (about 3 s each).
* CLIP: a tiny `CLIPConfig` (2 layers, width 32, 224 px input, patch 32, 512-d
  projection like ViT-B/32) saved with
  `CLIPModel.save_pretrained`, a byte-level BPE tokenizer (vocab.json + merges.txt
  written here, then re-saved with `CLIPTokenizer.save_pretrained`, which adds
  tokenizer.json) and the default `CLIPImageProcessor` (224 shortest side / crop,
  OpenAI mean/std), i.e. the same file set as `openai/clip-vit-base-patch32`.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

NIMA_FILES = {
    "nima_technical": ("NIMA_koniq-250367ae.pth", {"train_dataset": "koniq", "num_classes": 1}),
    "nima_aesthetic": ("NIMA_InceptionV2_ava-b0c77c00.pth", {"train_dataset": "ava", "num_classes": 10}),
}


@contextmanager
def _no_timm_download():
    """pyiqa's NIMA always calls timm.create_model(..., pretrained=True); make that offline."""
    from unittest import mock

    import timm

    real = timm.create_model

    def offline(name, pretrained=False, **kw):
        return real(name, pretrained=False, **kw)

    with mock.patch.object(timm, "create_model", offline):
        yield


def pyiqa_nima(kind: str, seed: int = 0):
    """pyiqa's NIMA net for `kind` ("nima_technical" | "nima_aesthetic"), random weights, eval mode."""
    import torch
    from pyiqa.archs.nima_arch import NIMA

    _, opts = NIMA_FILES[kind]
    torch.manual_seed(seed)
    with _no_timm_download():
        net = NIMA(base_model_name="inception_resnet_v2", pretrained=False, **opts)
    return net.eval()


def write_nima_checkpoint(folder: Path, kind: str, seed: int = 0) -> Path:
    """Write pyiqa's checkpoint file for `kind` into `folder`; returns the file."""
    import torch

    fname, _ = NIMA_FILES[kind]
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    net = pyiqa_nima(kind, seed)
    path = folder / fname
    torch.save({"params": net.state_dict()}, path)
    return path


# -- CLIP ------------------------------------------------------------------------------


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP byte → printable unicode table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


#: a few merges so that common words become one token (as in the real vocab)
_MERGES = ["t h", "th e</w>", "o f</w>", "c a", "ca t</w>", "d o", "do g</w>", "p h", "ph o", "pho t", "phot o</w>"]


def write_clip_tokenizer(folder: Path) -> Path:
    """A tiny CLIP byte-level BPE tokenizer, saved as the hub repos have it."""
    from transformers import CLIPTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    chars = list(_bytes_to_unicode().values())
    vocab_list = chars + [c + "</w>" for c in chars]
    for m in _MERGES:
        vocab_list.append(m.replace(" ", ""))
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(vocab_list)}
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(_MERGES) + "\n", encoding="utf-8")
    tok = CLIPTokenizer(vocab=vocab, merges=[tuple(m.split(" ")) for m in _MERGES], model_max_length=77)
    tok.save_pretrained(str(folder))
    return folder


def tiny_clip_config(vocab_size: int):
    from transformers import CLIPConfig, CLIPTextConfig, CLIPVisionConfig

    text = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=77,
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1,
    )
    vision = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=224, patch_size=32
    )
    # projection_dim 512 = ViT-B/32, so the embeddings can feed the real LAION ViT-B/32 head
    return CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=512)


def write_tiny_clip(folder: Path, seed: int = 0) -> Path:
    """config.json + model.safetensors + tokenizer + preprocessor_config.json in `folder`."""
    import torch
    from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizer

    folder = Path(folder)
    write_clip_tokenizer(folder)
    vocab_size = len(CLIPTokenizer.from_pretrained(str(folder)))
    torch.manual_seed(seed)
    model = CLIPModel(tiny_clip_config(vocab_size)).eval()
    model.save_pretrained(str(folder))
    CLIPImageProcessor().save_pretrained(str(folder))
    return folder


def full_size_clip():
    """CLIPModel() with the ViT-B/32 defaults and random weights (for speed measurements)."""
    import torch
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    return CLIPModel(CLIPConfig()).eval()


# -- DINOv2 ----------------------------------------------------------------------------

DINOV2_HIDDEN = 32


def tiny_config():
    from transformers import Dinov2Config

    return Dinov2Config(hidden_size=DINOV2_HIDDEN, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2, patch_size=14, image_size=56)


def dinov2_processor(**overrides):
    """The processor facebook/dinov2-* repos ship (transformers' convert_dinov2_to_hf.py)."""
    from transformers import BitImageProcessor
    from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, PILImageResampling

    kw = dict(size={"shortest_edge": 256}, resample=PILImageResampling.BICUBIC, image_mean=IMAGENET_DEFAULT_MEAN, image_std=IMAGENET_DEFAULT_STD)
    return BitImageProcessor(**{**kw, **overrides})


def write_tiny_dinov2(folder: Path, *, processor=True, seed: int = 0, **processor_overrides) -> Path:
    """config.json + model.safetensors (+ preprocessor_config.json) in `folder`."""
    import torch
    from transformers import Dinov2Model

    torch.manual_seed(seed)
    Dinov2Model(tiny_config()).eval().save_pretrained(str(folder))
    if processor:
        dinov2_processor(**processor_overrides).save_pretrained(str(folder))
    return Path(folder)


# -- BLIP ------------------------------------------------------------------------------

BLIP_IMAGE_SIZE = 32
BLIP_WORDS = ("a an the cat dog man woman sitting standing on in of with next to red blue green white black "
         "photo picture table street grass sky water tree car room bed plate cup").split()


def write_tiny_blip(folder: Path, *, seed: int = 0) -> Path:
    """config.json + model.safetensors + preprocessor_config.json + tokenizer files in `folder`."""
    import torch
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *BLIP_WORDS]) + "\n")
    tok = BertTokenizer.from_pretrained(str(folder), local_files_only=True)
    tok.add_special_tokens({"bos_token": "[DEC]"})  # BLIP's decoder start token
    tok.save_pretrained(str(folder))
    text = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                max_position_embeddings=64, encoder_hidden_size=32, bos_token_id=tok.bos_token_id,
                sep_token_id=tok.sep_token_id, pad_token_id=tok.pad_token_id, eos_token_id=tok.sep_token_id)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                  image_size=BLIP_IMAGE_SIZE, patch_size=8)
    torch.manual_seed(seed)
    model = BlipForConditionalGeneration(BlipConfig(vision_config=vision, text_config=text)).eval()
    with torch.no_grad():  # BLIP initialises the patch/position embeddings at std 1e-10: every image would look alike
        for p in model.vision_model.embeddings.parameters():
            p.normal_(0.0, 1.0)
        for name, p in model.text_decoder.named_parameters():  # and let the image weigh on the words
            if "crossattention" in name and name.endswith("weight") and p.dim() == 2:
                p.normal_(0.0, 0.5)
    model.save_pretrained(str(folder))
    BlipImageProcessor(size={"height": BLIP_IMAGE_SIZE, "width": BLIP_IMAGE_SIZE}).save_pretrained(str(folder))
    return folder
