"""NIMA (pyiqa checkpoints), CLIP (transformers folders) and the LAION aesthetic head.

NIMA and CLIP weights cannot be downloaded here: the files are built by
tests/factories/models.py with random weights in exactly the published format
(NIMA through pyiqa's own class, full-size InceptionResNetV2; CLIP as a tiny
CLIPModel folder). The NIMA adapters are compared with pyiqa's own forward pass
(including its resize / crop / normalisation) on the same checkpoint. The LAION
head uses its real weights from ../shared/weights.
"""

from __future__ import annotations

import numpy as np
import pytest

from app.core.config import Settings
from app.imaging.decode import DecodedImage
from app.models.base import ModelNotFound
from app.models.clip import ClipAdapter, clip_pixel_values, is_hub_id
from app.models.laion import LAION_FILES, LaionAestheticAdapter
from app.models.nima import (
    NIMA_INPUT_SIZE,
    NimaAestheticAdapter,
    NimaTechnicalAdapter,
    build_nima_net,
    nima_input,
)
from tests.factories.models import NIMA_FILES, pyiqa_nima, write_tiny_clip
from tests.helpers import decoded, photo, require_weights, upscale

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")
CLIP_HUB_ID = "openai/clip-vit-base-patch32"


def to_unit_tensor(rgb: np.ndarray):
    import torch

    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float().div(255.0)[None]


@pytest.fixture(scope="module")
def images() -> dict[str, DecodedImage]:
    return {name: decoded(photo(name)) for name in PHOTOS}


# ================================================================== NIMA
@pytest.fixture(scope="module")
def nima_dir(tmp_path_factory):
    """MODEL_DIR with both pyiqa NIMA checkpoints; also returns pyiqa's nets for comparison."""
    import torch

    root = tmp_path_factory.mktemp("models")
    nets = {}
    for i, (kind, (fname, _)) in enumerate(NIMA_FILES.items()):
        net = pyiqa_nima(kind, seed=i)
        (root / kind).mkdir()
        torch.save({"params": net.state_dict()}, root / kind / fname)
        nets[kind] = net
    return root, nets


@pytest.fixture(scope="module")
def nima(nima_dir):
    root, _ = nima_dir
    settings = Settings(model_dir=root)
    out = {}
    for cls in (NimaTechnicalAdapter, NimaAestheticAdapter):
        adapter = cls(settings)
        adapter.load(adapter.resolve_path(), "cpu")
        out[cls.name] = adapter
    return out


@pytest.mark.slow
def test_nima_module_tree_is_pyiqas(nima_dir):
    """Same state-dict keys and shapes as pyiqa's NIMA for both configurations."""
    _, nets = nima_dir
    for kind, classes in (("nima_technical", 1), ("nima_aesthetic", 10)):
        ours = build_nima_net(classes).state_dict()
        theirs = nets[kind].state_dict()
        assert list(ours) == list(theirs)
        assert all(ours[k].shape == theirs[k].shape for k in ours)
        assert theirs["classifier.2.weight"].shape == (classes, 1536)


def test_nima_class_attributes():
    assert NimaTechnicalAdapter.files == ("NIMA_koniq-250367ae.pth",)
    assert NimaAestheticAdapter.files == ("NIMA_InceptionV2_ava-b0c77c00.pth",)
    assert NimaTechnicalAdapter.output.range == (0.0, 1.0) and NimaTechnicalAdapter.output.higher_is_better
    assert NimaAestheticAdapter.output.range == (1.0, 10.0) and NimaAestheticAdapter.output.higher_is_better
    # the URLs pyiqa itself downloads from
    from pyiqa.archs.nima_arch import default_model_urls

    assert NimaTechnicalAdapter.urls()[0] == default_model_urls["inception_resnet_v2-koniq"]
    assert NimaAestheticAdapter.urls()[0] == default_model_urls["inception_resnet_v2-ava"]
    assert NimaTechnicalAdapter.source == default_model_urls["inception_resnet_v2-koniq"]


def test_nima_preprocessing_is_pyiqas(images):
    """Our input equals pyiqa's resize(299) + centre crop + (x - 0.5) / 0.5 on the same pixels: to 5e-5 (a 400th
    of a grey level), the float difference between Pillow's resampling and torchvision's port of it."""
    import torch
    import torchvision.transforms.functional as TF

    for name in ("coffee", "chelsea"):
        rgb = images[name].rgb
        x = to_unit_tensor(rgb)
        x = TF.center_crop(TF.resize(x, NIMA_INPUT_SIZE), NIMA_INPUT_SIZE)
        ref = ((x - 0.5) / 0.5)[0].numpy()
        ours = nima_input(rgb)
        assert ours.shape == (3, 299, 299) and ours.dtype == np.float32
        np.testing.assert_allclose(ours, ref, atol=5e-5)
        assert torch.from_numpy(ours).min() >= -1.0001 and torch.from_numpy(ours).max() <= 1.0001


@pytest.mark.slow
def test_nima_matches_pyiqa_forward(nima_dir, nima, images):
    """The adapters give pyiqa's own scores for its checkpoint (its forward resizes the raw image)."""
    import torch

    _, nets = nima_dir
    batch = [images["coffee"]]
    tech = nima["nima_technical"].predict([nima["nima_technical"].prepare(im) for im in batch])
    aest = nima["nima_aesthetic"].predict([nima["nima_aesthetic"].prepare(im) for im in batch])
    for im, t, a in zip(batch, tech, aest):
        with torch.inference_mode():
            ref_t = nets["nima_technical"](to_unit_tensor(im.rgb))
            ref_mos, ref_dist = nets["nima_aesthetic"](to_unit_tensor(im.rgb), return_mos=True, return_dist=True)
        assert t == pytest.approx(float(ref_t), rel=1e-4, abs=1e-5)
        assert a["mean"] == pytest.approx(float(ref_mos), rel=1e-5)
        np.testing.assert_allclose(a["distribution"], ref_dist[0].numpy(), rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_nima_batch_equals_single(nima, images):
    ims = [images[n] for n in ("astronaut", "coffee", "chelsea")]
    for name in ("nima_technical", "nima_aesthetic"):
        adapter = nima[name]
        prepared = [adapter.prepare(im) for im in ims]
        batch = adapter.predict(prepared)
        singles = [adapter.predict([p])[0] for p in prepared]
        assert len(batch) == len(ims)
        for b, s in zip(batch, singles):
            if name == "nima_technical":
                assert isinstance(b, float) and np.isfinite(b)
                assert b == pytest.approx(s, rel=1e-4, abs=1e-5)
            else:
                assert b["mean"] == pytest.approx(s["mean"], rel=1e-5)
                np.testing.assert_allclose(b["distribution"], s["distribution"], rtol=1e-4, atol=1e-6)
    assert nima["nima_technical"].predict([]) == []


@pytest.mark.slow
def test_nima_aesthetic_output(nima, images):
    adapter = nima["nima_aesthetic"]
    (out,) = adapter.predict([adapter.prepare(images["astronaut"])])
    assert set(out) == {"mean", "std", "distribution"}
    dist = np.asarray(out["distribution"])
    assert dist.shape == (10,) and (dist >= 0).all() and dist.sum() == pytest.approx(1.0, abs=1e-5)
    bins = np.arange(1, 11)
    assert 1.0 <= out["mean"] <= 10.0
    assert out["mean"] == pytest.approx(float((dist * bins).sum()), rel=1e-6)
    assert out["std"] == pytest.approx(float(np.sqrt((dist * (bins - out["mean"]) ** 2).sum())), rel=1e-6)


def test_nima_input_is_made_once_and_shared():
    """prepare needs no weights; both NIMA adapters get the very same array."""
    settings = Settings()
    im = decoded(photo("rocket"))
    a = NimaTechnicalAdapter(settings).prepare(im)
    b = NimaAestheticAdapter(settings).prepare(im)
    assert a is b and a.shape == (3, 299, 299) and a.dtype == np.float32


def test_nima_large_image_uses_the_shared_reduced_copy():
    """A 2000-px image is read through rgb_max(ANALYSIS_MAX_DIM); the input stays close to the direct one."""
    rgb = upscale(photo("chelsea"), 2000)
    im = decoded(rgb)
    adapter = NimaTechnicalAdapter(Settings())
    x = adapter.prepare(im)
    assert ("rgb", adapter.settings.analysis_max_dim) in im._cache
    direct = nima_input(rgb)
    assert np.abs(x - direct).mean() < 0.01


@pytest.mark.slow
def test_nima_path_setting_may_name_the_file(nima_dir, images):
    root, _ = nima_dir
    file = root / "nima_technical" / NIMA_FILES["nima_technical"][0]
    adapter = NimaTechnicalAdapter(Settings(model_dir=root / "nowhere", nima_technical_path=str(file)))
    assert adapter.resolve_path() == file
    adapter.load(adapter.resolve_path(), "cpu")
    assert np.isfinite(adapter.predict([adapter.prepare(images["coffee"])])[0])


def test_nima_missing_file_is_model_not_found(tmp_path):
    for cls in (NimaTechnicalAdapter, NimaAestheticAdapter):
        adapter = cls(Settings(model_dir=tmp_path))
        with pytest.raises(ModelNotFound) as err:
            adapter.load(adapter.resolve_path(), "cpu")
        msg = str(err.value)
        assert cls.files[0] in msg and str(tmp_path / cls.default_subdir) in msg
        assert "huggingface.co/chaofengc/IQA-PyTorch-Weights" in msg
    (tmp_path / "nima_aesthetic").mkdir()
    adapter = NimaAestheticAdapter(Settings(model_dir=tmp_path))
    with pytest.raises(ModelNotFound, match="NIMA_InceptionV2_ava-b0c77c00.pth not found in"):
        adapter.load(adapter.resolve_path(), "cpu")


@pytest.mark.slow
def test_nima_wrong_checkpoint_is_a_clear_error(nima_dir):
    root, _ = nima_dir
    aesthetic_file = root / "nima_aesthetic" / NIMA_FILES["nima_aesthetic"][0]
    adapter = NimaTechnicalAdapter(Settings(nima_technical_path=str(aesthetic_file)))
    with pytest.raises(ValueError, match="not a pyiqa nima-koniq checkpoint"):
        adapter.load(adapter.resolve_path(), "cpu")


def test_nima_download_uses_pyiqas_url(tmp_path, monkeypatch):
    import httpx

    import app.models.download as dl

    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(str(request.url))
        return httpx.Response(200, content=b"x")

    real_client = httpx.Client
    monkeypatch.setattr(httpx, "Client", lambda **kw: real_client(transport=httpx.MockTransport(handler)))
    path = NimaTechnicalAdapter.download(tmp_path / "nima_technical")
    assert path == tmp_path / "nima_technical" / "NIMA_koniq-250367ae.pth" and path.is_file()
    assert calls == [NimaTechnicalAdapter.urls()[0]]
    NimaTechnicalAdapter.download(tmp_path / "nima_technical")  # present: no second download
    assert len(calls) == 1 and dl.sha256_file(path)


# ================================================================== CLIP
@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    write_tiny_clip(root / "clip" / CLIP_HUB_ID.replace("/", "__"))
    return root


@pytest.fixture(scope="module")
def clip(clip_dir) -> ClipAdapter:
    adapter = ClipAdapter(Settings(model_dir=clip_dir, clip_model_name=CLIP_HUB_ID))
    adapter.load(adapter.resolve_path(), "cpu")
    return adapter


def test_clip_path_resolution(tmp_path):
    adapter = ClipAdapter(Settings(model_dir=tmp_path, clip_model_name="openai/clip-vit-large-patch14"))
    assert adapter.resolve_path() == tmp_path / "clip" / "openai__clip-vit-large-patch14"
    local = tmp_path / "my-clip"
    local.mkdir()
    for name in (str(local), "./some/dir", "~/clip", "/opt/clip"):
        assert not is_hub_id(name)
    assert ClipAdapter(Settings(model_dir=tmp_path, clip_model_name=str(local))).resolve_path() == local
    assert is_hub_id("openai/clip-vit-base-patch32") and is_hub_id("laion/CLIP-ViT-B-32-laion2B-s34B-b79K")


def test_clip_loads_from_local_folder_and_embeds(clip, images):
    assert clip.dim == 512 and clip.model_name == CLIP_HUB_ID
    ims = [images[n] for n in PHOTOS]
    prepared = [clip.prepare(im) for im in ims]
    assert prepared[0].shape == (3, 224, 224) and prepared[0].dtype == np.float32
    batch = clip.predict(prepared)
    assert len(batch) == len(ims)
    for e in batch:
        assert e.shape == (512,) and e.dtype == np.float32
        assert np.linalg.norm(e) == pytest.approx(1.0, abs=1e-5)
    for p, b in zip(prepared, batch):
        np.testing.assert_allclose(clip.predict([p])[0], b, atol=1e-5)
    assert not np.allclose(batch[0], batch[1])
    assert clip.predict([]) == []


def test_clip_embedding_is_the_models_image_features(clip, clip_dir, images):
    """On the default runtime (ONNX Runtime) the embedding is the transformers model's own image features."""
    import torch

    x = clip.prepare(images["coffee"])
    model = ClipAdapter.build(clip_dir / "clip" / CLIP_HUB_ID.replace("/", "__"))
    with torch.inference_mode():
        out = model.get_image_features(pixel_values=torch.from_numpy(x)[None])
    ref = getattr(out, "pooler_output", out)[0].numpy()
    np.testing.assert_allclose(clip.predict([x])[0], ref / np.linalg.norm(ref), atol=1e-5)


@pytest.mark.parametrize("name", ["astronaut", "coffee", "chelsea", "rocket"])
def test_clip_preprocessing_matches_the_hf_processors(clip, clip_dir, images, name):
    from transformers import CLIPImageProcessor

    folder = clip_dir / "clip" / CLIP_HUB_ID.replace("/", "__")
    rgb = images[name].rgb
    ours = clip.prepare(images[name])
    fast = CLIPImageProcessor.from_pretrained(str(folder))(images=rgb, return_tensors="np")["pixel_values"][0]
    np.testing.assert_allclose(ours, fast, atol=1e-4)  # the same torchvision ops
    try:
        from transformers import CLIPImageProcessorPil
    except ImportError:  # older transformers: the slow processor is PIL
        return
    pil = CLIPImageProcessorPil.from_pretrained(str(folder))(images=rgb, return_tensors="np")["pixel_values"][0]
    # PIL's and torchvision's bicubic differ by a few grey levels at edges, not more
    assert np.abs(ours - pil).mean() < 0.02
    assert np.abs(ours - pil).max() < 0.5


def test_clip_pixel_values_of_a_panorama():
    rgb = np.zeros((100, 1200, 3), np.uint8)
    x = clip_pixel_values(rgb, mean=(0.5,) * 3, std=(0.5,) * 3)
    assert x.shape == (3, 224, 224)


def test_clip_text_embeddings(clip):
    texts = ["a photo of the cat", "a dog", "a photo of the cat"]
    emb = clip.embed_text(texts)
    assert emb.shape == (3, 512) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(emb[0], emb[2], atol=1e-6)
    assert not np.allclose(emb[0], emb[1])
    # padding in a batch does not change an embedding
    np.testing.assert_allclose(clip.embed_text(["a dog"])[0], emb[1], atol=1e-5)
    assert clip.embed_text([]).shape == (0, 512)


def test_clip_missing_is_model_not_found(tmp_path):
    adapter = ClipAdapter(Settings(model_dir=tmp_path, clip_model_name=CLIP_HUB_ID))
    with pytest.raises(ModelNotFound) as err:
        adapter.load(adapter.resolve_path(), "cpu")
    msg = str(err.value)
    assert str(tmp_path / "clip" / "openai__clip-vit-base-patch32") in msg and "ALLOW_MODEL_DOWNLOADS" in msg
    adapter = ClipAdapter(Settings(model_dir=tmp_path, clip_model_name=str(tmp_path / "empty")))
    with pytest.raises(ModelNotFound, match="CLIP_MODEL_NAME"):
        adapter.load(adapter.resolve_path(), "cpu")


def test_clip_downloads_only_when_allowed(tmp_path, monkeypatch):
    calls = []

    def fake_download(cls, dest, repo_id="openai/clip-vit-base-patch32"):
        calls.append((dest, repo_id))
        write_tiny_clip(dest)
        return dest

    monkeypatch.setattr(ClipAdapter, "download", classmethod(fake_download))
    off = ClipAdapter(Settings(model_dir=tmp_path, clip_model_name=CLIP_HUB_ID, allow_model_downloads=False))
    with pytest.raises(ModelNotFound):
        off.load(off.resolve_path(), "cpu")
    assert calls == []
    on = ClipAdapter(Settings(model_dir=tmp_path, clip_model_name=CLIP_HUB_ID, allow_model_downloads=True))
    on.load(on.resolve_path(), "cpu")
    assert calls == [(tmp_path / "clip" / "openai__clip-vit-base-patch32", CLIP_HUB_ID)]
    assert on.dim == 512


def test_clip_download_asks_for_the_needed_files(tmp_path, monkeypatch):
    import huggingface_hub

    seen = []

    def fake_snapshot(repo_id, local_dir, allow_patterns):
        seen.append((repo_id, tuple(allow_patterns)))
        if "model.safetensors" in allow_patterns:
            (tmp_path / "x" / "model.safetensors").write_bytes(b"")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    ClipAdapter.download(tmp_path / "x", "openai/clip-vit-base-patch32")
    assert len(seen) == 1
    repo, patterns = seen[0]
    assert repo == "openai/clip-vit-base-patch32"
    for f in ("config.json", "preprocessor_config.json", "model.safetensors", "vocab.json", "merges.txt"):
        assert f in patterns


# ================================================================== LAION aesthetic
@pytest.fixture(scope="module")
def laion() -> LaionAestheticAdapter:
    weights = require_weights("aesthetic_laion_v1_linear")
    adapter = LaionAestheticAdapter(Settings(laion_aesthetic_path=str(weights)))
    adapter.load(adapter.resolve_path(), "cpu")
    return adapter


def test_laion_head_equals_nn_linear(laion):
    import torch

    weights = require_weights("aesthetic_laion_v1_linear")
    assert laion.dims == [512, 768]
    rng = np.random.default_rng(0)
    for dim, fname in LAION_FILES.items():
        emb = rng.normal(size=(5, dim)).astype(np.float32)
        scores = laion.predict([laion.prepare(e) for e in emb])
        lin = torch.nn.Linear(dim, 1)
        lin.load_state_dict(torch.load(weights / fname, weights_only=True))
        x = torch.from_numpy(emb / np.linalg.norm(emb, axis=1, keepdims=True))
        with torch.inference_mode():
            ref = lin(x)[:, 0].numpy()
        np.testing.assert_allclose(scores, ref, rtol=1e-5, atol=1e-5)
        assert all(np.isfinite(scores))


def test_laion_scores_clip_embeddings(laion, clip, images):
    """CLIP adapter output (512-d) → LAION ViT-B/32 head: finite scores, one per image."""
    embs = clip.predict([clip.prepare(images[n]) for n in PHOTOS])
    scores = laion.predict([laion.prepare(e) for e in embs])
    assert len(scores) == len(PHOTOS) and all(np.isfinite(s) for s in scores)
    assert all(-5.0 < s < 15.0 for s in scores)


def test_laion_wrong_dim_and_missing(laion, tmp_path):
    with pytest.raises(ValueError, match="no LAION aesthetic head for 16-d"):
        laion.predict([np.ones(16, np.float32)])
    adapter = LaionAestheticAdapter(Settings(model_dir=tmp_path))
    with pytest.raises(ModelNotFound, match="sa_0_4_vit_b_32_linear.pth"):
        adapter.load(adapter.resolve_path(), "cpu")
