"""DINOv2 embeddings (app.models.dinov2) from a tiny random-weight Dinov2Model folder.

facebook/dinov2-small cannot be downloaded here, so each folder is written the way the
hub repo was: `Dinov2Model.save_pretrained` (a tiny config: width 32, 2 layers, 2 heads,
patch 14, image size 56) plus, as transformers' convert_dinov2_to_hf.py saves it,
`BitImageProcessor(size={"shortest_edge": 256}, resample=BICUBIC, ImageNet mean/std)`.
The model is loaded through the real `ModelRegistry`; its vectors are compared with
transformers' own processor + `Dinov2Model(...).pooler_output` on the same folder.
"""

from __future__ import annotations

import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from app.core.config import Settings
from app.core.errors import ModelUnavailable
from app.imaging.decode import DecodedImage
from app.models.base import ModelNotFound
from app.models.dinov2 import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Dinov2Adapter,
    Dinov2Preprocessing,
    dinov2_pixel_values,
    preprocessing_from_config,
    resized_shape,
)
from app.models.registry import ModelRegistry
from tests.factories.models import DINOV2_HIDDEN as HIDDEN
from tests.factories.models import dinov2_processor, write_tiny_dinov2
from tests.helpers import PROJECT_ROOT, decoded, photo, upscale

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

PHOTOS = ("astronaut", "coffee", "chelsea")


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("models")
    write_tiny_dinov2(root / "dinov2")
    return root


@pytest.fixture(scope="module")
def registry(model_dir):
    pool = ThreadPoolExecutor(2)
    reg = ModelRegistry(Settings(model_dir=model_dir, device="cpu"), pool)
    yield reg
    reg.shutdown()
    pool.shutdown()


@pytest.fixture(scope="module")
def dinov2(registry) -> Dinov2Adapter:
    adapter = registry.load("dinov2")
    assert isinstance(adapter, Dinov2Adapter)
    return adapter


@pytest.fixture(scope="module")
def images() -> dict[str, DecodedImage]:
    return {name: decoded(photo(name)) for name in PHOTOS}


# ================================================================== the adapter's contract
def test_declarations():
    assert Dinov2Adapter.name == "dinov2" and Dinov2Adapter.uses_torch
    assert Dinov2Adapter.files == ("config.json", "model.safetensors")
    assert Dinov2Adapter.source == "hf://facebook/dinov2-small"
    assert 1 < Dinov2Adapter.max_batch <= 64 and Dinov2Adapter.output is None


def test_path_is_model_dir_or_dinov2_path(tmp_path):
    assert Dinov2Adapter(Settings(model_dir=tmp_path)).resolve_path() == tmp_path / "dinov2"
    own = tmp_path / "elsewhere"
    assert Dinov2Adapter(Settings(model_dir=tmp_path, dinov2_path=str(own))).resolve_path() == own


# ================================================================== vectors
async def test_registry_embeds_unit_vectors_of_hidden_size(registry, dinov2, images):
    assert dinov2.dim == HIDDEN and dinov2.model_name == "facebook/dinov2-small" and dinov2.device == "cpu"
    vectors = await registry.run("dinov2", [images[n] for n in PHOTOS])
    assert len(vectors) == len(PHOTOS)
    for v in vectors:
        assert isinstance(v, np.ndarray) and v.shape == (HIDDEN,) and v.dtype == np.float32
        assert np.linalg.norm(v) == pytest.approx(1.0, abs=1e-5)
    assert dinov2.predict([]) == []


def test_same_photo_same_vector(dinov2):
    first = dinov2.predict([dinov2.prepare(decoded(photo("coffee")))])[0]
    again = decoded(photo("coffee"))  # a fresh decode: nothing cached
    np.testing.assert_allclose(dinov2.predict([dinov2.prepare(again)])[0], first, atol=1e-6)
    batch = dinov2.predict([dinov2.prepare(decoded(photo(n))) for n in ("astronaut", "coffee")])
    np.testing.assert_allclose(batch[1], first, atol=1e-5)  # a batch neighbour changes nothing


def test_prepare_is_cached_on_the_image(dinov2):
    image = decoded(photo("chelsea"))
    x = dinov2.prepare(image)
    assert x.shape == (3, 224, 224) and x.dtype == np.float32
    assert dinov2.prepare(image) is x


def test_different_photos_give_different_vectors(dinov2, images):
    """Random weights keep every CLS token close (cosine ≈ 0.99), so the bar is "far beyond numerical
    noise" (the same photo repeats within 1e-6), not "semantically apart"."""
    vectors = dinov2.predict([dinov2.prepare(images[n]) for n in PHOTOS])
    for i in range(len(PHOTOS)):
        for j in range(i + 1, len(PHOTOS)):
            assert np.linalg.norm(vectors[i] - vectors[j]) > 0.01, (PHOTOS[i], PHOTOS[j])
            assert cosine(vectors[i], vectors[j]) < 0.9999, (PHOTOS[i], PHOTOS[j])


@pytest.mark.parametrize("name", PHOTOS)
def test_vector_is_transformers_pooler_output(dinov2, model_dir, images, name):
    """The processor's pixel_values → Dinov2Model → pooler_output (CLS after the final layernorm), normalised."""
    import torch
    from transformers import AutoImageProcessor, Dinov2Model

    folder = model_dir / "dinov2"
    model = Dinov2Model.from_pretrained(str(folder)).eval()
    pixels = AutoImageProcessor.from_pretrained(str(folder))(images=photo(name), return_tensors="pt")["pixel_values"]
    with torch.inference_mode():
        out = model(pixel_values=pixels)
    ref = out.pooler_output[0].numpy()
    np.testing.assert_allclose(ref, out.last_hidden_state[0, 0].numpy())  # the CLS token
    np.testing.assert_allclose(dinov2.predict([dinov2.prepare(images[name])])[0], ref / np.linalg.norm(ref), atol=1e-5)


# ================================================================== preprocessing
@pytest.mark.parametrize("name", PHOTOS + ("rocket",))
def test_preprocessing_matches_transformers_processor(dinov2, model_dir, images, name):
    from transformers import AutoImageProcessor, BitImageProcessor

    proc = AutoImageProcessor.from_pretrained(str(model_dir / "dinov2"))
    assert isinstance(proc, BitImageProcessor)  # what AutoImageProcessor picks for dinov2
    image = images[name] if name in images else decoded(photo(name))
    ref = proc(images=photo(name), return_tensors="np")["pixel_values"][0]
    np.testing.assert_allclose(dinov2.prepare(image), ref, atol=1e-5)


@pytest.mark.parametrize("name", ("coffee", "rocket"))
def test_large_photo_starts_from_the_reduced_copy(dinov2, name):
    """1500 px wide: the shared 1024 px copy is resized, to the shape the full image would get."""
    big = upscale(photo(name), 1500)
    image = decoded(big)
    ours = dinov2.prepare(image)
    assert ("rgb", Settings().analysis_max_dim) in image._cache  # the reduced copy was used
    ref = dinov2_processor()(images=big, return_tensors="np")["pixel_values"][0]
    assert np.abs(ours - ref).mean() < 0.01 and np.abs(ours - ref).max() < 0.25
    assert cosine(dinov2.predict([ours])[0], dinov2.predict([ref])[0]) > 0.99999


def test_preprocessing_follows_the_folders_config(tmp_path):
    """A non-default preprocessor_config.json (64 px, 56 crop, bilinear, other mean/std) is what runs."""
    from transformers import AutoImageProcessor
    from transformers.image_utils import PILImageResampling

    folder = write_tiny_dinov2(
        tmp_path / "dinov2", size={"shortest_edge": 64}, crop_size={"height": 56, "width": 56},
        resample=PILImageResampling.BILINEAR, image_mean=[0.5, 0.4, 0.3], image_std=[0.2, 0.3, 0.4],
    )
    adapter = Dinov2Adapter(Settings(model_dir=tmp_path))
    adapter.load(adapter.resolve_path(), "cpu")
    proc = AutoImageProcessor.from_pretrained(str(folder))
    for name in ("coffee", "rocket"):
        ours = adapter.prepare(decoded(photo(name)))
        assert ours.shape == (3, 56, 56)
        np.testing.assert_allclose(ours, proc(images=photo(name), return_tensors="np")["pixel_values"][0], atol=1e-5)


def test_without_preprocessor_config_dinov2s_published_values_apply(tmp_path):
    """Not BitImageProcessor()'s class defaults (224, OpenAI CLIP mean/std): DINOv2's 256 → 224, ImageNet."""
    from transformers import BitImageProcessor

    folder = write_tiny_dinov2(tmp_path / "bare", processor=False)
    adapter = Dinov2Adapter(Settings(model_dir=tmp_path, dinov2_path=str(folder)))
    adapter.load(adapter.resolve_path(), "cpu")
    assert adapter.prep == Dinov2Preprocessing(resize_to=256, resample=3, crop=(224, 224), mean=IMAGENET_MEAN, std=IMAGENET_STD)
    assert BitImageProcessor().size == {"shortest_edge": 224}  # why the defaults are ours, not the class's
    rgb = photo("chelsea")
    ref = dinov2_processor()(images=rgb, return_tensors="np")["pixel_values"][0]
    np.testing.assert_allclose(adapter.prepare(decoded(rgb)), ref, atol=1e-5)


def test_missing_keys_take_dinov2_values():
    assert preprocessing_from_config({}) == Dinov2Preprocessing()
    p = preprocessing_from_config({"size": {"height": 100, "width": 80}, "do_center_crop": False, "do_normalize": False})
    assert p.resize_to == (100, 80) and p.crop is None and p.mean == (0.0,) * 3 and p.std == (1.0,) * 3
    with pytest.raises(ValueError, match="unsupported resample"):
        preprocessing_from_config({"resample": 1})


def test_resize_and_crop_edge_cases():
    assert resized_shape(300, 451, 256) == (256, 384)  # the long side is floored, as transformers does
    assert resized_shape(451, 300, 256) == (384, 256)
    panorama = np.zeros((40, 1200, 3), np.uint8)
    x = dinov2_pixel_values(panorama, Dinov2Preprocessing(resize_to=8, crop=(224, 224)))
    assert x.shape == (3, 224, 224)  # zero-padded to the crop


# ================================================================== missing or wrong files
def test_missing_folder_is_model_unavailable(tmp_path):
    reg = ModelRegistry(Settings(model_dir=tmp_path, device="cpu"), ThreadPoolExecutor(1))
    with pytest.raises(ModelUnavailable) as err:
        reg.load("dinov2")
    msg = err.value.message
    assert "ModelNotFound" in msg and str(tmp_path / "dinov2") in msg
    for hint in ("config.json + model.safetensors", "scripts/download_models.py dinov2", "DINOV2_PATH", "ALLOW_MODEL_DOWNLOADS"):
        assert hint in msg
    info = reg.info("dinov2")
    assert info.state.value == "failed" and not info.files_present and info.source == "hf://facebook/dinov2-small"
    reg.shutdown()


def test_not_a_dinov2_folder(tmp_path):
    folder = write_tiny_dinov2(tmp_path / "dinov2", processor=False)
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "model_type": "vit"}))
    adapter = Dinov2Adapter(Settings(model_dir=tmp_path))
    with pytest.raises(ValueError, match="'vit' model, not dinov2"):
        adapter.load(adapter.resolve_path(), "cpu")


def test_downloads_only_when_allowed(tmp_path, monkeypatch):
    calls = []

    def fake_download(cls, dest, repo_id="facebook/dinov2-small"):
        calls.append((dest, repo_id))
        return write_tiny_dinov2(Path(dest))

    monkeypatch.setattr(Dinov2Adapter, "download", classmethod(fake_download))
    off = Dinov2Adapter(Settings(model_dir=tmp_path, allow_model_downloads=False))
    with pytest.raises(ModelNotFound):
        off.load(off.resolve_path(), "cpu")
    assert calls == []
    on = Dinov2Adapter(Settings(model_dir=tmp_path, allow_model_downloads=True, dinov2_model_name="facebook/dinov2-base"))
    on.load(on.resolve_path(), "cpu")
    assert calls == [(tmp_path / "dinov2", "facebook/dinov2-base")] and on.dim == HIDDEN
    assert on.model_name == "facebook/dinov2-base"


def test_download_asks_for_the_needed_files(tmp_path, monkeypatch):
    import huggingface_hub

    seen = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo_id, local_dir, allow_patterns: seen.append((repo_id, local_dir, tuple(allow_patterns))))
    assert Dinov2Adapter.download(tmp_path / "d", "facebook/dinov2-small") == tmp_path / "d"
    assert seen == [("facebook/dinov2-small", str(tmp_path / "d"), ("config.json", "preprocessor_config.json", "model.safetensors"))]


def test_download_models_script_handles_dinov2(tmp_path, monkeypatch, capsys):
    import runpy

    script = str(PROJECT_ROOT / "scripts" / "download_models.py")
    monkeypatch.setattr(sys, "argv", [script, "--list", "--model-dir", str(tmp_path), "dinov2"])
    with pytest.raises(SystemExit) as done:
        runpy.run_path(script, run_name="__main__")
    assert done.value.code == 0
    assert f"MISSING  {tmp_path / 'dinov2'}" in capsys.readouterr().out

    calls = []
    monkeypatch.setattr(Dinov2Adapter, "download", classmethod(lambda cls, dest, repo_id: calls.append((dest, repo_id))))
    monkeypatch.setattr(sys, "argv", [script, "--model-dir", str(tmp_path), "dinov2"])
    with pytest.raises(SystemExit) as done:
        runpy.run_path(script, run_name="__main__")
    assert done.value.code == 0 and calls == [(tmp_path / "dinov2", "facebook/dinov2-small")]
