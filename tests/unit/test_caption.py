"""Image captions (app.models.caption) from a tiny random-weight BLIP folder.

Salesforce/blip-image-captioning-base cannot be downloaded here, so the folder is written the
way the hub repo is: `BlipForConditionalGeneration.save_pretrained` (tiny vision and text
configs: width 32, 2 layers, 32 px images), the image processor's `preprocessor_config.json`
and a BERT tokenizer (`vocab.txt` written by the test, `[DEC]` added as the decoder's start
token, as BLIP's tokenizer has it). BLIP initialises its patch and position embeddings at std
1e-10, which would make every image look the same to the decoder, so those and the decoder's
cross-attention are re-drawn larger: each photo then gets its own words. The model is loaded
through the real `ModelRegistry`.
Random weights make random words: the tests check the contract (strings, batch = one by one,
the length bound, the processor's pixels), not caption quality.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from app.core.config import Settings
from app.core.errors import ModelUnavailable
from app.imaging.decode import DecodedImage
from app.models.caption import (
    CAPTION_HUB_ID,
    CaptionAdapter,
    blip_pixel_values,
    blip_preprocessing,
)
from app.models.registry import CATALOG, ModelRegistry
from tests.factories.models import BLIP_IMAGE_SIZE as IMAGE_SIZE
from tests.factories.models import BLIP_WORDS as WORDS
from tests.factories.models import write_tiny_blip
from tests.helpers import decoded, photo

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

PHOTOS = ("astronaut", "coffee", "chelsea")
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("models")
    write_tiny_blip(root / "caption")
    return root


@pytest.fixture(scope="module")
def registry(model_dir):
    pool = ThreadPoolExecutor(2)
    reg = ModelRegistry(Settings(model_dir=model_dir, device="cpu"), pool)
    yield reg
    reg.shutdown()
    pool.shutdown()


@pytest.fixture(scope="module")
def captioner(registry) -> CaptionAdapter:
    adapter = registry.load("caption")
    assert isinstance(adapter, CaptionAdapter)
    return adapter


@pytest.fixture(scope="module")
def images() -> dict[str, DecodedImage]:
    return {name: decoded(photo(name)) for name in PHOTOS}


# ================================================================== the adapter's contract
def test_declarations():
    assert CATALOG["caption"] == "app.models.caption:CaptionAdapter"
    assert CaptionAdapter.name == "caption" and CaptionAdapter.uses_torch and CaptionAdapter.output is None
    assert CaptionAdapter.source == f"hf://{CAPTION_HUB_ID}" == "hf://Salesforce/blip-image-captioning-base"
    assert {"config.json", "model.safetensors", "preprocessor_config.json"} <= set(CaptionAdapter.files)
    assert 1 <= CaptionAdapter.max_batch <= 64
    assert Settings(_env_file=None).caption_model_name == CAPTION_HUB_ID


def test_path_is_model_dir_or_caption_path(tmp_path):
    assert CaptionAdapter(Settings(model_dir=tmp_path)).resolve_path() == tmp_path / "caption"
    own = tmp_path / "elsewhere"
    assert CaptionAdapter(Settings(model_dir=tmp_path, caption_path=str(own))).resolve_path() == own


def test_missing_folder_is_model_unavailable(tmp_path):
    pool = ThreadPoolExecutor(1)
    reg = ModelRegistry(Settings(model_dir=tmp_path, device="cpu"), pool)
    try:
        with pytest.raises(ModelUnavailable, match="CAPTION_PATH"):
            reg.load("caption")
        assert reg.info("caption").state.value == "failed"
    finally:
        reg.shutdown()
        pool.shutdown()


# ================================================================== captions
async def test_registry_captions_are_stripped_strings(registry, captioner, images):
    caps = await registry.run("caption", [images[n] for n in PHOTOS])
    assert len(caps) == len(PHOTOS)
    for c in caps:
        assert isinstance(c, str) and c == c.strip()
        assert all(w in WORDS for w in c.split())  # words of the tokenizer, no special tokens
    assert captioner.predict([]) == [] and captioner.caption([], 10) == []


async def test_caption_with_max_length_through_registry_call(registry, captioner, images):
    prepared = [captioner.prepare(images[n]) for n in PHOTOS]
    caps = await registry.call("caption", lambda m, xs: m.caption(xs, 6), prepared)
    assert len(caps) == len(PHOTOS) and all(isinstance(c, str) for c in caps)


def test_batched_equals_one_by_one(captioner, images, monkeypatch):
    prepared = [captioner.prepare(images[n]) for n in PHOTOS]
    alone = [captioner.caption([x], 12)[0] for x in prepared]
    assert len(set(alone)) == len(PHOTOS)  # each photo its own words: a mixed-up batch would show
    assert captioner.caption(prepared, 12) == alone
    monkeypatch.setattr(captioner, "max_batch", 2)  # split into generate calls of 2 + 1: same captions
    assert captioner.caption(prepared, 12) == alone


def test_max_length_bounds_the_generated_tokens(captioner, images):
    prepared = [captioner.prepare(images[n]) for n in PHOTOS]
    for n in (2, 4, 9, 20):
        ids = captioner.generate_ids(prepared, n)
        assert ids.shape[0] == len(PHOTOS) and ids.shape[1] <= n
        for cap in captioner.caption(prepared, n):
            assert len(cap.split()) <= n - 1  # the start token counts; every word here is one token
    longest = captioner.generate_ids(prepared, 20).shape[1]
    assert longest > 4  # random weights rarely stop early: the bound is what stopped the short runs
    with pytest.raises(ValueError):
        captioner.caption(prepared, 1)


def test_same_photo_same_caption(captioner):
    first = captioner.predict([captioner.prepare(decoded(photo("coffee")))])
    assert captioner.predict([captioner.prepare(decoded(photo("coffee")))]) == first  # greedy: deterministic


# ================================================================== preprocessing
def test_prepare_equals_blip_processor(captioner, model_dir, images):
    from transformers import BlipProcessor

    proc = BlipProcessor.from_pretrained(str(model_dir / "caption"), local_files_only=True)
    for name in PHOTOS:
        ours = captioner.prepare(images[name])
        assert ours.shape == (3, IMAGE_SIZE, IMAGE_SIZE) and ours.dtype == np.float32
        theirs = proc(images=photo(name), return_tensors="pt")["pixel_values"][0].numpy()
        np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=0)
    x = captioner.prepare(images["coffee"])
    assert captioner.prepare(images["coffee"]) is x  # cached on the image


def test_published_384_preprocessing_equals_blip_image_processor():
    """The hub model's processor (BlipImageProcessor's defaults: 384x384 bicubic, CLIP mean/std)."""
    from transformers import BlipImageProcessor

    proc = BlipImageProcessor()
    prep = blip_preprocessing(proc.to_dict())
    assert prep.resize_to == (384, 384) and prep.crop is None
    for name in PHOTOS:
        rgb = photo(name)
        ours = blip_pixel_values(rgb, prep)
        theirs = proc(images=rgb, return_tensors="pt")["pixel_values"][0].numpy()
        np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=0)


def test_ms_per_image(captioner, images, capsys):
    prepared = [captioner.prepare(images[n]) for n in PHOTOS] * 4
    captioner.caption(prepared[:2], 20)  # warm up
    t0 = time.perf_counter()
    captioner.caption(prepared, 20)
    ms = (time.perf_counter() - t0) * 1000 / len(prepared)
    with capsys.disabled():
        print(f"\ntiny BLIP: {ms:.1f} ms per image (batch {len(prepared)}, max_length 20, CPU)")
    assert ms < 2000
