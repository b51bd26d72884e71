"""ImageNet tags (app.models.tags): the real MobileNetV2 TFLite, EfficientNet-B3's loader, `top_labels`.

* Accuracy uses the real MobileNetV2 1.0/224 quantized model and labels from
  ../shared/weights/imagenet_mobilenet_tflite (skipped with the reason when absent): skimage's
  coffee is "espresso" (class 967) at the top, chelsea a cat class (Egyptian cat / tiger cat /
  tabby …) at the top, and the cameraman has "tripod" (class 872) in his top 5.
* EfficientNet-B3's weights cannot be downloaded here: a torchvision `efficientnet_b3` with random
  weights is saved as its `state_dict` under the release file name, which is exactly what
  torchvision publishes, and the adapter loads it through the registry with TAGS_MODEL=efficientnet_b3.
  Its probabilities are checked against torchvision's own eval pipeline on the same file.
* `top_labels` follows image_tagger: at most `top` labels, each >= minconf; bad arguments raise.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import httpx
import numpy as np
import pytest

from app.core.config import Settings
from app.core.errors import ModelUnavailable
from app.models import tags as T
from app.models.base import ModelNotFound
from app.models.registry import ModelRegistry
from app.models.tags import (
    EFFICIENTNET_B3_FILE,
    LABELS_FILE,
    MOBILENET_V2_FILE,
    NUM_CLASSES,
    TagsAdapter,
    imagenet_names,
    mobilenet_v2_input,
    top_labels,
)
from tests.helpers import PHOTO_NAMES, PROJECT_ROOT, decoded, load_adapter, photo, require_weights

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

REAL = "imagenet_mobilenet_tflite"
CAT_CLASSES = {"tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat"}


def settings(**kw) -> Settings:
    return Settings(_env_file=None, **kw)


def torchvision_categories() -> list[str]:
    from torchvision.models import EfficientNet_B3_Weights

    return list(EfficientNet_B3_Weights.IMAGENET1K_V1.meta["categories"])


@pytest.fixture(scope="module")
def real_dir() -> Path:
    return require_weights(REAL)


@pytest.fixture(scope="module")
def mobilenet(real_dir) -> TagsAdapter:
    return load_adapter(TagsAdapter, tags_path=str(real_dir))


@pytest.fixture()
def model_dir(tmp_path, real_dir) -> Path:
    """A MODEL_DIR whose tags/ holds the real files (as `download_models.py --from` leaves it)."""
    (tmp_path / "tags").mkdir()
    for name in TagsAdapter.files:
        shutil.copy2(real_dir / name, tmp_path / "tags" / name)
    return tmp_path


def top_names(adapter: TagsAdapter, name: str, k: int = 5) -> list[str]:
    probs = adapter.predict([adapter.prepare(decoded(photo(name)))])[0]
    return [t["label"] for t in top_labels(probs, adapter.labels, k)]


# ================================================================== declarations and labels
def test_declared_files_and_sha256_are_the_published_ones(real_dir):
    assert TagsAdapter.name == "tags" and TagsAdapter.path_setting == "tags_path"
    assert TagsAdapter.default_subdir == "tags" and not TagsAdapter.uses_torch
    assert TagsAdapter.files == (MOBILENET_V2_FILE, LABELS_FILE)
    assert TagsAdapter.alt_files == (EFFICIENTNET_B3_FILE,)
    assert TagsAdapter.source.startswith("https://github.com/google-coral/test_data/")
    for name in TagsAdapter.files:
        assert hashlib.sha256((real_dir / name).read_bytes()).hexdigest() == TagsAdapter.sha256[name]
    from torchvision.models import EfficientNet_B3_Weights

    eff = T.VARIANTS["efficientnet_b3"]
    assert eff.urls[EFFICIENTNET_B3_FILE] == EfficientNet_B3_Weights.IMAGENET1K_V1.url
    assert EFFICIENTNET_B3_FILE.split("-")[-1].removesuffix(".pth") == eff.sha256[EFFICIENTNET_B3_FILE]


def test_labels_drop_background_and_match_torchvision(real_dir):
    lines = (real_dir / LABELS_FILE).read_text(encoding="utf-8").splitlines()
    assert lines[0] == "background" and len(lines) == NUM_CLASSES + 1
    names = imagenet_names(lines)
    assert len(names) == NUM_CLASSES and "background" not in names
    assert names == torchvision_categories()  # both variants name class i the same way
    assert names[281] == "tabby" and names[967] == "espresso" and names[872] == "tripod"
    assert imagenet_names(lines[1:]) == names  # a file without background is read the same
    with pytest.raises(ValueError, match="expected 1000"):
        imagenet_names(lines[:500])


# ================================================================== accuracy (real MobileNetV2)
def test_coffee_is_espresso(mobilenet):
    assert top_names(mobilenet, "coffee", 1) == ["espresso"]


def test_chelsea_is_a_cat(mobilenet):
    assert top_names(mobilenet, "chelsea", 1)[0] in CAT_CLASSES


def test_cameraman_has_a_tripod_in_the_top_5(mobilenet):
    assert "tripod" in top_names(mobilenet, "camera", 5)


def test_probabilities_are_the_dequantized_output_renormalised(mobilenet):
    image = decoded(photo("chelsea"))
    x = mobilenet.prepare(image)
    probs = mobilenet.predict([x])[0]
    assert probs.dtype == np.float32 and probs.shape == (NUM_CLASSES,)
    assert abs(float(probs.sum()) - 1.0) < 1e-5 and (probs >= 0).all()
    impl = mobilenet._impl
    assert isinstance(impl, T._MobileNetV2)
    interpreter = impl.interpreter
    out = interpreter.get_output_details()[0]
    scale, zero = out["quantization"]
    assert (scale, zero) == (1 / 256, 0)
    raw = interpreter.get_tensor(out["index"]).reshape(-1).astype(np.float64)  # still this image's output
    assert raw.size == NUM_CLASSES + 1
    expected = (raw[1:] - zero) * scale
    np.testing.assert_allclose(probs, expected / expected.sum(), rtol=1e-6)


def test_prepare_is_the_eval_crop_and_is_cached_on_the_image(mobilenet):
    image = decoded(photo("coffee"))
    x = mobilenet.prepare(image)
    assert x.shape == (224, 224, 3) and x.dtype == np.uint8
    assert mobilenet.prepare(image) is x  # made once per image
    np.testing.assert_array_equal(x, mobilenet_v2_input(image.rgb))
    # the central 87.5 %: a frame around the picture does not reach the input
    framed = np.array(photo("coffee"))
    h, w = framed.shape[:2]
    framed[: h // 20], framed[-h // 20 :], framed[:, : w // 20], framed[:, -w // 20 :] = 0, 0, 0, 0
    np.testing.assert_array_equal(mobilenet_v2_input(framed), x)


def test_a_batch_gives_one_vector_per_image_in_order(mobilenet):
    xs = [mobilenet.prepare(decoded(photo(n))) for n in ("coffee", "camera")]
    both = mobilenet.predict(xs)
    assert len(both) == 2
    for x, p in zip(xs, both):
        np.testing.assert_array_equal(p, mobilenet.predict([x])[0])
    assert mobilenet.predict([]) == []


# ================================================================== top / minconf
PROBS = np.array([0.05, 0.4, 0.1, 0.3, 0.1, 0.05], np.float32)
NAMES = ["a", "b", "c", "d", "e", "f"]


def test_top_defaults_to_the_single_best_label():
    assert top_labels(PROBS, NAMES) == [{"label": "b", "class_id": 1, "confidence": pytest.approx(0.4)}]


def test_top_and_minconf_both_apply_and_order_is_by_confidence():
    assert [t["label"] for t in top_labels(PROBS, NAMES, top=4)] == ["b", "d", "c", "e"]  # tie: class order
    assert [t["label"] for t in top_labels(PROBS, NAMES, top=5, minconf=0.2)] == ["b", "d"]  # minconf cuts
    assert [t["label"] for t in top_labels(PROBS, NAMES, top=1, minconf=0.2)] == ["b"]  # top cuts
    assert top_labels(PROBS, NAMES, top=3, minconf=0.5) == []
    assert [t["label"] for t in top_labels(PROBS, NAMES, top=6, minconf=0.1)] == ["b", "d", "c", "e"]  # >= minconf
    assert len(top_labels(PROBS, NAMES, top=1000)) == len(NAMES)
    assert top_labels(PROBS, NAMES, top=2, minconf=1.0) == []
    out = top_labels(PROBS, NAMES, top=6)
    assert [t["confidence"] for t in out] == sorted((t["confidence"] for t in out), reverse=True)
    assert all(type(t["class_id"]) is int and type(t["confidence"]) is float for t in out)


@pytest.mark.parametrize("top", [0, -1, 1001, 2.0, True, "3", None])
def test_top_out_of_range_raises(top):
    with pytest.raises(ValueError, match="top must be"):
        top_labels(PROBS, NAMES, top=top)


@pytest.mark.parametrize("minconf", [-0.01, 1.01, float("nan"), float("inf"), "0.5", None, True])
def test_minconf_out_of_range_raises(minconf):
    with pytest.raises(ValueError, match="minconf must be"):
        top_labels(PROBS, NAMES, minconf=minconf)


def test_probabilities_and_labels_must_align():
    with pytest.raises(ValueError, match="6 probabilities for 5 labels"):
        top_labels(PROBS, NAMES[:5])


# ================================================================== EfficientNet-B3 (random weights)
@pytest.fixture(scope="module")
def efficientnet_dir(tmp_path_factory) -> Path:
    """MODEL_DIR/tags with a random-weight torchvision efficientnet_b3 state_dict under the release name.

    Freshly initialised, the network's features vanish in eval mode (about 1e-14: every image gets the
    same uniform output), which would hide any preprocessing mistake. So its BatchNorm statistics are
    measured on real photos (through torchvision's own transform) and its classifier scaled up: still
    random weights in the same state_dict, but each photo now gets its own, non-uniform distribution."""
    import torch
    from PIL import Image
    from torchvision.models import EfficientNet_B3_Weights, efficientnet_b3

    root = tmp_path_factory.mktemp("models")
    (root / "tags").mkdir()
    torch.manual_seed(0)
    net = efficientnet_b3(weights=None)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # running stats = this batch's
    transform = EfficientNet_B3_Weights.IMAGENET1K_V1.transforms()
    batch = torch.stack([transform(Image.fromarray(np.ascontiguousarray(photo(n)))) for n in PHOTO_NAMES])
    with torch.no_grad():
        net.train()(batch)
        net.classifier[1].weight.mul_(10.0)
    torch.save(net.eval().state_dict(), root / "tags" / EFFICIENTNET_B3_FILE)
    return root


@pytest.fixture(scope="module")
def efficientnet(efficientnet_dir) -> TagsAdapter:
    reg = ModelRegistry(settings(model_dir=efficientnet_dir, tags_model="efficientnet_b3"), ThreadPoolExecutor(2))
    try:
        adapter = reg.load("tags")
    finally:
        reg.shutdown()
    assert isinstance(adapter, TagsAdapter)
    return adapter


def test_efficientnet_b3_gives_1000_probabilities_summing_to_1(efficientnet):
    assert efficientnet.variant.name == "efficientnet_b3"
    assert efficientnet.labels == torchvision_categories()
    images = [decoded(photo(n)) for n in ("coffee", "camera")]
    xs = [efficientnet.prepare(img) for img in images]
    assert all(x.shape == (3, T.EFFICIENTNET_B3_CROP, T.EFFICIENTNET_B3_CROP) and x.dtype == np.float32 for x in xs)
    assert efficientnet.prepare(images[0]) is xs[0]  # cached on the image
    out = efficientnet.predict(xs)
    assert len(out) == 2
    for p in out:
        assert p.dtype == np.float32 and p.shape == (NUM_CLASSES,)
        assert abs(float(p.sum()) - 1.0) < 1e-5 and (p >= 0).all()
    assert len(efficientnet.top(out[0], top=5)) == 5


def test_efficientnet_b3_matches_torchvision_eval_pipeline(efficientnet, efficientnet_dir):
    """The same file through torchvision's documented path (PIL image → weights.transforms() → softmax)."""
    import torch
    from PIL import Image
    from torchvision.models import EfficientNet_B3_Weights, efficientnet_b3

    net = efficientnet_b3(weights=None)
    net.load_state_dict(torch.load(efficientnet_dir / "tags" / EFFICIENTNET_B3_FILE, weights_only=True))
    net.eval()
    transform = EfficientNet_B3_Weights.IMAGENET1K_V1.transforms()
    refs = []
    for name in ("chelsea", "coffee"):
        rgb = np.ascontiguousarray(photo(name))
        with torch.inference_mode():
            x = transform(Image.fromarray(rgb))
            ref = torch.softmax(net(x[None]), dim=1)[0].numpy()
        prepared = efficientnet.prepare(decoded(rgb))
        # torchvision resizes a PIL image and a tensor with slightly different bicubic rounding
        assert np.abs(prepared - x.numpy()).mean() < 0.01
        got = efficientnet.predict([prepared])[0]
        assert ref.max() > 5 / NUM_CLASSES  # the random net does tell images apart
        assert got.argmax() == ref.argmax() and np.corrcoef(got, ref)[0, 1] > 0.995
        assert np.abs(got - ref).max() < 0.05 * ref.max()
        refs.append(ref)
    assert np.corrcoef(*refs)[0, 1] < 0.99  # two photos, two distributions


def test_efficientnet_b3_rejects_another_networks_state_dict(tmp_path):
    import torch

    (tmp_path / "tags").mkdir()
    torch.save({"fc.weight": torch.zeros(2, 2)}, tmp_path / "tags" / EFFICIENTNET_B3_FILE)
    adapter = TagsAdapter(settings(model_dir=tmp_path, tags_model="efficientnet_b3"))
    with pytest.raises(ValueError, match="not torchvision's efficientnet_b3 state_dict"):
        adapter.load(adapter.resolve_path(), "cpu")


# ================================================================== registry
async def test_registry_loads_tags_from_model_dir_and_runs_images(model_dir):
    reg = ModelRegistry(settings(model_dir=model_dir), ThreadPoolExecutor(2))
    try:
        assert reg.contract("tags") is TagsAdapter
        info = reg.info("tags")
        assert info.files_present and info.path == str(model_dir / "tags") and info.thread_safe is False
        images = [decoded(photo(n)) for n in ("coffee", "chelsea")]
        out = await reg.run("tags", images)
        adapter = reg.loaded("tags")
        assert isinstance(adapter, TagsAdapter) and reg.info("tags").state == "ready"
        assert len(out) == 2 and all(p.shape == (NUM_CLASSES,) for p in out)
        assert top_labels(out[0], adapter.labels)[0]["label"] == "espresso"
        assert top_labels(out[1], adapter.labels)[0]["label"] in CAT_CLASSES
    finally:
        reg.shutdown()


def test_registry_reports_a_missing_folder_clearly(tmp_path):
    reg = ModelRegistry(settings(model_dir=tmp_path), ThreadPoolExecutor(1))
    try:
        assert not reg.info("tags").files_present
        with pytest.raises(ModelUnavailable) as err:
            reg.load("tags")
        msg = err.value.message
        assert "'tags' is not available" in msg and str(tmp_path / "tags") in msg and "does not exist" in msg
        assert MOBILENET_V2_FILE in msg and LABELS_FILE in msg and "TAGS_PATH" in msg
        assert "download_models.py tags" in msg
        assert reg.info("tags").state == "failed"
    finally:
        reg.shutdown()


def test_a_missing_labels_file_or_variant_file_is_named(model_dir):
    (model_dir / "tags" / LABELS_FILE).unlink()
    adapter = TagsAdapter(settings(model_dir=model_dir))
    with pytest.raises(ModelNotFound, match=f"{LABELS_FILE} missing in"):
        adapter.load(adapter.resolve_path(), "cpu")
    adapter = TagsAdapter(settings(model_dir=model_dir, tags_model="efficientnet_b3"))
    with pytest.raises(ModelNotFound, match=f"{EFFICIENTNET_B3_FILE} missing in"):
        adapter.load(adapter.resolve_path(), "cpu")


def test_tags_path_may_name_the_weights_file(real_dir):
    adapter = load_adapter(TagsAdapter, tags_path=str(real_dir / MOBILENET_V2_FILE))
    assert len(adapter.labels) == NUM_CLASSES


# ================================================================== scripts/download_models.py
def _script(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(PROJECT_ROOT / "scripts" / "download_models.py"), *args],
                          cwd=cwd, capture_output=True, text=True, timeout=120)


def test_download_models_copies_tags_from_the_shared_weights(tmp_path, real_dir):
    md = tmp_path / "models"
    done = _script("tags", "--from", str(real_dir.parent), "--model-dir", str(md), cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    got = sorted(p.name for p in (md / "tags").iterdir())
    assert set(TagsAdapter.files) <= set(got) and "mobilenet_v1_1.0_224_quant_embedding_extractor.tflite" not in got
    listed = _script("tags", "--list", "--model-dir", str(md), cwd=tmp_path)
    assert listed.returncode == 0 and "tags" in listed.stdout and "present" in listed.stdout
    assert TagsAdapter.source in listed.stdout


def _mock_client(payloads: dict[str, bytes]) -> httpx.Client:
    def handler(request: httpx.Request) -> httpx.Response:
        body = payloads.get(str(request.url))
        return httpx.Response(200, content=body) if body is not None else httpx.Response(404)

    return httpx.Client(transport=httpx.MockTransport(handler))


def test_download_fetches_and_verifies_each_variant(tmp_path, real_dir, monkeypatch):
    mn = T.VARIANTS["mobilenet_v2"]
    client = _mock_client({mn.urls[f]: (real_dir / f).read_bytes() for f in mn.files})
    paths = TagsAdapter.download(tmp_path / "tags", client=client)
    assert [p.name for p in paths] == list(mn.files)
    assert load_adapter(TagsAdapter, model_dir=tmp_path).labels[967] == "espresso"

    blob = b"not the efficientnet weights"
    client = _mock_client({T.EFFICIENTNET_B3_URL: blob})
    with pytest.raises(RuntimeError, match="sha256 .* does not match"):
        TagsAdapter.download(tmp_path / "eff", "efficientnet_b3", client=client)
    assert not (tmp_path / "eff" / EFFICIENTNET_B3_FILE).exists()
    eff = T.VARIANTS["efficientnet_b3"]
    monkeypatch.setitem(T.VARIANTS, "efficientnet_b3",
                        replace(eff, sha256={EFFICIENTNET_B3_FILE: hashlib.sha256(blob).hexdigest()[:8]}))
    assert TagsAdapter.download(tmp_path / "eff", "efficientnet_b3", client=client)[0].read_bytes() == blob
