"""DINOv2 and DeepFace's emotion CNN on ONNX Runtime and OpenVINO give the torch runtime's outputs on real photos,
their exports are cached by the source's SHA-256 (the DINOv2 folder, the emotion weights file), and DINOv2's
preprocessing, now numpy, is torchvision's pixel for pixel (tiny random DINOv2 folders as tests/unit/test_dinov2.py
writes them; DeepFace's emotion file with random weights from tests/factories/faces.py)."""

from __future__ import annotations

import numpy as np
import pytest

from app.imaging.decode import decode_image
from app.models.dinov2 import Dinov2Adapter, Dinov2Preprocessing, dinov2_pixel_values, resize_uint8, resized_shape
from app.models.emotion import EmotionAdapter
from app.models.onnx_runtime import onnx_file_for, stamped_source
from app.models.torch_runtime import uint8_chw_tensor
from tests.factories.faces import write_random_deepface_emotion_weights
from tests.helpers import encode, load_adapter, photo
from tests.factories.models import write_tiny_dinov2

# the export's TracerWarnings are about values that are constant for DINOv2 (3 channels; not causal)
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning",
                                        "ignore::torch.jit.TracerWarning")

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")
RUNTIMES = ("onnxruntime", "openvino")


def rel_diff(out: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(np.asarray(out, np.float64) - ref).max() / np.abs(ref).max())


@pytest.fixture(scope="module")
def images():
    return [decode_image(encode(photo(n)), max_pixels=60_000_000) for n in PHOTOS]


# ============================================================ DINOv2's preprocessing without torch
def torchvision_pixel_values(rgb: np.ndarray, prep: Dinov2Preprocessing, full_hw=None) -> np.ndarray:
    """The torchvision implementation `dinov2_pixel_values` replaced (transformers' BitImageProcessor)."""
    import torch
    import torchvision.transforms.v2.functional as TF
    from torchvision.transforms import InterpolationMode

    t = uint8_chw_tensor(rgb)
    if prep.resize_to is not None:
        h, w = full_hw or (t.shape[-2], t.shape[-1])
        new_hw = resized_shape(h, w, prep.resize_to)
        if new_hw != tuple(t.shape[-2:]):
            mode = InterpolationMode[{0: "NEAREST", 2: "BILINEAR", 3: "BICUBIC"}[prep.resample]]
            t = TF.resize(t, list(new_hw), interpolation=mode, antialias=True)
    if prep.crop is not None:
        ch, cw = prep.crop
        h, w = t.shape[-2:]
        if ch > h or cw > w:
            t = TF.pad(t, [(cw - w) // 2 if cw > w else 0, (ch - h) // 2 if ch > h else 0,
                           (cw - w + 1) // 2 if cw > w else 0, (ch - h + 1) // 2 if ch > h else 0], fill=0)
            h, w = t.shape[-2:]
        top, left = int((h - ch) / 2.0), int((w - cw) / 2.0)
        t = t[:, top:top + ch, left:left + cw]
    m = torch.tensor(prep.mean, dtype=torch.float32).view(3, 1, 1) / prep.rescale
    s = torch.tensor(prep.std, dtype=torch.float32).view(3, 1, 1) / prep.rescale
    return ((t.float() - m) / s).contiguous().numpy()


@pytest.mark.parametrize("resample", [3, 2, 0])
def test_resize_is_torchvisions_uint8_resize_pixel_for_pixel(resample):
    import torchvision.transforms.v2.functional as TF
    from torchvision.transforms import InterpolationMode

    mode = InterpolationMode[{0: "NEAREST", 2: "BILINEAR", 3: "BICUBIC"}[resample]]
    rng = np.random.default_rng(0)
    sources = [photo(n) for n in PHOTOS] + [rng.integers(0, 256, (37, 91, 3), dtype=np.uint8)]
    for rgb in sources:
        h, w = rgb.shape[:2]
        # down, up, one axis only, extreme ratios, exact doubling
        for hw in [(256, 384), (224, 224), (57, 33), (3 * h // 2, 2 * w), (h, 101), (31, w), (700, 13), (2 * h, w)]:
            ref = TF.resize(uint8_chw_tensor(rgb), list(hw), interpolation=mode, antialias=True).permute(1, 2, 0)
            ours = resize_uint8(rgb, hw, resample)
            assert ours.shape == (*hw, 3) and ours.dtype == np.uint8
            assert np.array_equal(ours, ref.numpy()), (rgb.shape, hw, resample)


@pytest.mark.parametrize("prep", [
    Dinov2Preprocessing(),  # DINOv2's: shortest edge 256, bicubic, crop 224
    Dinov2Preprocessing(resize_to=64, resample=2, crop=(56, 56), mean=(0.5, 0.4, 0.3), std=(0.2, 0.3, 0.4)),
    Dinov2Preprocessing(resize_to=(100, 80), resample=0, crop=None, rescale=1.0, mean=(0, 0, 0), std=(1, 1, 1)),
    Dinov2Preprocessing(resize_to=8, crop=(224, 224)),  # zero padding
], ids=["dinov2", "bilinear", "nearest-exact-size", "padded"])
def test_pixel_values_equal_torchvisions(prep):
    for name in PHOTOS:
        rgb = photo(name)
        np.testing.assert_allclose(dinov2_pixel_values(rgb, prep), torchvision_pixel_values(rgb, prep), rtol=0, atol=1e-5)
    reduced = np.ascontiguousarray(photo("coffee")[::2, ::2])  # a reduced copy, sized from the full image
    np.testing.assert_allclose(dinov2_pixel_values(reduced, prep, (400, 600)),
                               torchvision_pixel_values(reduced, prep, (400, 600)), rtol=0, atol=1e-5)


# ============================================================ DINOv2
@pytest.fixture(scope="module")
def dinov2_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("onnx-dinov2")
    write_tiny_dinov2(root / "dinov2")
    return root


def test_dinov2_on_onnxruntime_and_openvino_equals_torch(dinov2_dir, images):
    torch_adapter = load_adapter(Dinov2Adapter, model_dir=dinov2_dir, inference_runtime="torch")
    x = [torch_adapter.prepare(im) for im in images]
    ref, ref_vectors = torch_adapter.forward(x), np.stack(torch_adapter.predict(x))
    for runtime in RUNTIMES:
        adapter = load_adapter(Dinov2Adapter, model_dir=dinov2_dir, inference_runtime=runtime)
        assert adapter.model is None and adapter.session is not None and adapter.session.runtime == runtime
        assert adapter.session.path == dinov2_dir / "dinov2" / "dinov2.onnx" and adapter.dim == ref.shape[1]
        out = adapter.forward(x)
        assert out.shape == ref.shape and out.dtype == np.float32
        assert rel_diff(out, ref) < 1e-5, (runtime, rel_diff(out, ref))
        vectors = np.stack(adapter.predict(x))  # the unit vectors the service returns
        assert vectors.dtype == np.float32 and rel_diff(vectors, ref_vectors) < 1e-5
        np.testing.assert_allclose(adapter.forward(x[1:2]), out[1:2], rtol=1e-5, atol=1e-6)  # batch of one
        assert adapter.predict([]) == []


def test_dinov2_export_is_cached_and_redone_when_the_weights_change(tmp_path, images):
    folder = write_tiny_dinov2(tmp_path / "dinov2")
    first = load_adapter(Dinov2Adapter, model_dir=tmp_path, inference_runtime="onnxruntime")
    exported = onnx_file_for(folder, "dinov2")
    assert exported == folder / "dinov2.onnx" and first.session is not None and first.session.path == exported
    stamp, mtime = stamped_source(exported), exported.stat().st_mtime_ns
    assert stamp is not None and stamp.endswith(" dinov2")
    load_adapter(Dinov2Adapter, model_dir=tmp_path, inference_runtime="openvino")
    assert exported.stat().st_mtime_ns == mtime  # the cached graph was used, by either runtime
    x = [first.prepare(images[1])]
    before = first.forward(x)
    write_tiny_dinov2(folder, seed=1)  # other weights, same files
    second = load_adapter(Dinov2Adapter, model_dir=tmp_path, inference_runtime="onnxruntime")
    assert stamped_source(exported) != stamp  # re-exported for the new weights
    after = second.forward(x)
    ref = load_adapter(Dinov2Adapter, model_dir=tmp_path, inference_runtime="torch").forward(x)
    assert not np.allclose(before, after) and rel_diff(after, ref) < 1e-5


def test_dinov2_without_a_fixed_input_size_exports_dynamic_height_and_width(tmp_path, images):
    """No centre crop: every photo keeps its aspect ratio, so the graph's H and W follow the input."""
    write_tiny_dinov2(tmp_path / "dinov2", size={"shortest_edge": 56}, do_center_crop=False)
    adapter = load_adapter(Dinov2Adapter, model_dir=tmp_path, inference_runtime="onnxruntime")
    ref = load_adapter(Dinov2Adapter, model_dir=tmp_path, inference_runtime="torch")
    shapes = set()
    for image in images[:2]:
        x = [adapter.prepare(image)]
        shapes.add(x[0].shape)
        assert rel_diff(adapter.forward(x), ref.forward(x)) < 1e-5
    assert len(shapes) == 2  # 512x512 and 400x600 photos: two input sizes, one graph


# ============================================================ DeepFace's emotion CNN
@pytest.fixture
def deepface_home(tmp_path, monkeypatch):
    home = tmp_path / "deepface"
    write_random_deepface_emotion_weights(home, seed=0)
    monkeypatch.setenv("DEEPFACE_HOME", str(home))  # the adapter overwrites it; restored at teardown
    return home


def emotion_adapter(home, runtime):
    return load_adapter(EmotionAdapter, model_dir=home.parent, deepface_home=str(home), inference_runtime=runtime)


def face_crops() -> np.ndarray:
    """(N, 224, 224, 3) BGR [0, 1] crops as DeepFace.analyze makes them: the astronaut's face and a few
    face-sized patches of the other photos (letterboxed by DeepFace's own resize)."""
    from deepface.modules import preprocessing

    patches = [photo("astronaut")[60:180, 170:275], photo("chelsea")[50:200, 100:250],
               photo("coffee")[100:260, 200:330], photo("rocket")[0:300, 150:300]]
    return np.concatenate([preprocessing.resize_image(img=(p[:, :, ::-1] / 255.0).astype(np.float32),
                                                      target_size=(224, 224)) for p in patches])


def test_emotion_on_onnxruntime_and_openvino_equals_torch(deepface_home, images):
    reference = emotion_adapter(deepface_home, "torch")
    assert reference._impl.session is None and reference._impl.client is not None
    crops = face_crops()
    ref_probs = reference._impl.probabilities(crops)
    ref_faces = reference.predict([reference.prepare(im) for im in images])
    assert [len(f) for f in ref_faces] == [1, 0, 0, 0]  # the astronaut's face
    ref_face = np.array(list(ref_faces[0][0]["emotions"].values()))
    for runtime in RUNTIMES:
        adapter = emotion_adapter(deepface_home, runtime)
        impl = adapter._impl
        assert impl.client is None and impl.session is not None and impl.session.runtime == runtime
        probs = impl.probabilities(crops)
        assert probs.shape == (len(crops), 7) and probs.dtype == np.float32
        assert rel_diff(probs, ref_probs) < 1e-5, (runtime, rel_diff(probs, ref_probs))
        faces = adapter.predict([adapter.prepare(im) for im in images])
        assert [len(f) for f in faces] == [1, 0, 0, 0]
        assert faces[0][0]["box"] == ref_faces[0][0]["box"]
        assert faces[0][0]["dominant_emotion"] == ref_faces[0][0]["dominant_emotion"]
        face = np.array(list(faces[0][0]["emotions"].values()))
        assert rel_diff(face, ref_face) < 1e-5, (runtime, rel_diff(face, ref_face))


def test_emotion_export_is_cached_and_redone_when_the_weights_change(deepface_home):
    weights = deepface_home / ".deepface" / "weights" / "facial_expression_model_weights.pth"
    first = emotion_adapter(deepface_home, "onnxruntime")
    exported = onnx_file_for(weights, "emotion")
    assert exported == weights.with_name("facial_expression_model_weights.emotion.onnx")
    assert first._impl.session.path == exported
    stamp, mtime = stamped_source(exported), exported.stat().st_mtime_ns
    assert stamp is not None and stamp.endswith(" emotion")
    emotion_adapter(deepface_home, "openvino")
    assert exported.stat().st_mtime_ns == mtime  # the cached graph was used
    assert first.export_onnx(deepface_home) == exported and exported.stat().st_mtime_ns == mtime
    crops = face_crops()
    before = first._impl.probabilities(crops)
    write_random_deepface_emotion_weights(deepface_home, seed=1)
    second = emotion_adapter(deepface_home, "onnxruntime")
    assert stamped_source(exported) != stamp
    after = second._impl.probabilities(crops)
    ref = emotion_adapter(deepface_home, "torch")._impl.probabilities(crops)
    assert not np.allclose(before, after) and rel_diff(after, ref) < 1e-5
