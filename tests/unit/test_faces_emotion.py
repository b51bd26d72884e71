"""Face detection (YuNet, real weights) and per-face emotion (DeepFace's real loading
path with random weights in its own file format; the FER2013 mini-Xception with its
real weights when h5py is installed)."""

from __future__ import annotations

import urllib.request

import numpy as np
import pytest

from app.core.config import Settings
from app.imaging.decode import DecodedImage
from app.models import emotion, faces
from app.models.base import ModelNotFound
from app.models.emotion import EmotionAdapter
from app.models.faces import EMOTION_LABELS, LANDMARK_NAMES, YunetAdapter
from tests.factories.faces import write_random_deepface_emotion_weights
from tests.helpers import decoded, load_adapter, photo, require_weights, upscale

ASTRONAUT_SIZE = 512


# --------------------------------------------------------------------------- helpers
def as_image(rgb: np.ndarray, width: int | None = None, height: int | None = None) -> DecodedImage:
    """A DecodedImage without the encode/decode round trip (for the 3000-px copies)."""
    rgb = np.ascontiguousarray(rgb)
    h, w = rgb.shape[:2]
    # positional: pixels, width, height, sha256, format, n_bytes
    return DecodedImage(rgb, width or w, height or h, "test", "PNG", 0)


def on_astronauts_face(box: dict, scale: float = 1.0) -> bool:
    """The astronaut's face in skimage's 512x512 photo, determined by looking at it:
    hairline at y~60, chin at y~180, cheeks at x~175 and ~270. A detector box must be
    centred on it, about its size, and inside the head."""
    x, y, w, h = (box[k] / scale for k in ("x", "y", "w", "h"))
    cx, cy = x + w / 2, y + h / 2
    return (
        205 <= cx <= 245
        and 100 <= cy <= 135
        and 70 <= w <= 135
        and 70 <= h <= 135
        and x >= 150
        and y >= 25
        and x + w <= 300
        and y + h <= 200
    )


def iou(a: dict, b: dict) -> float:
    ix = max(0, min(a["x"] + a["w"], b["x"] + b["w"]) - max(a["x"], b["x"]))
    iy = max(0, min(a["y"] + a["h"], b["y"] + b["h"]) - max(a["y"], b["y"]))
    inter = ix * iy
    return inter / (a["w"] * a["h"] + b["w"] * b["h"] - inter)


def assert_inside(box: dict, width: int, height: int) -> None:
    assert box["x"] >= 0 and box["y"] >= 0 and box["w"] > 0 and box["h"] > 0
    assert box["x"] + box["w"] <= width and box["y"] + box["h"] <= height


def assert_emotion_face(face: dict) -> None:
    assert set(face) >= {"box", "confidence", "dominant_emotion", "emotions"}
    assert list(face["emotions"]) == list(EMOTION_LABELS)
    probs = np.array(list(face["emotions"].values()))
    assert np.all(probs >= 0) and np.all(probs <= 1)
    assert probs.sum() == pytest.approx(1.0, abs=1e-6)
    assert face["dominant_emotion"] == EMOTION_LABELS[int(np.argmax(probs))]
    assert 0.0 <= face["confidence"] <= 1.0


@pytest.fixture
def no_network(monkeypatch):
    """Any download attempt (DeepFace: requests.head + gdown; ours: urllib) fails the test."""
    import gdown
    import requests

    def forbidden(*args, **kwargs):
        raise AssertionError(f"a download was attempted: {args[:1]}")

    monkeypatch.setattr(gdown, "download", forbidden)
    monkeypatch.setattr(requests, "head", forbidden)
    monkeypatch.setattr(requests, "get", forbidden)
    monkeypatch.setattr(urllib.request, "urlopen", forbidden)


@pytest.fixture
def deepface_home(tmp_path, monkeypatch):
    """A DEEPFACE_HOME with random emotion weights; the env var is restored afterwards."""
    home = tmp_path / "deepface"
    write_random_deepface_emotion_weights(home, seed=0)
    monkeypatch.setenv(
        "DEEPFACE_HOME", str(home)
    )  # the adapter overwrites it; restored at teardown
    return home


def deepface_adapter(home, tmp_path, **kw) -> EmotionAdapter:
    adapter = load_adapter(EmotionAdapter, model_dir=tmp_path / "models", deepface_home=str(home), **kw)
    return adapter


@pytest.fixture(scope="module")
def yunet() -> YunetAdapter:
    path = require_weights("face_yunet")
    adapter = load_adapter(YunetAdapter, yunet_path=str(path))
    return adapter


def detect(adapter, image: DecodedImage) -> list[dict]:
    return adapter.predict([adapter.prepare(image)])[0]


# --------------------------------------------------------------------------- DeepFace emotion
def test_deepface_emotion_loads_random_weights_and_finds_the_astronaut(
    deepface_home, tmp_path, no_network
):
    adapter = deepface_adapter(deepface_home, tmp_path)
    assert adapter.resolve_path() == deepface_home
    result = detect(adapter, decoded(photo("astronaut")))
    assert len(result) == 1, result
    face = result[0]
    assert_emotion_face(face)
    assert_inside(face["box"], ASTRONAUT_SIZE, ASTRONAUT_SIZE)
    assert on_astronauts_face(face["box"]), face["box"]
    assert face["confidence"] > 0  # a real detection, not DeepFace's whole-image stand-in


def test_deepface_emotion_uses_the_weights_in_the_file(deepface_home, tmp_path, no_network):
    image = decoded(photo("astronaut"))
    first = detect(deepface_adapter(deepface_home, tmp_path), image)[0]["emotions"]
    write_random_deepface_emotion_weights(deepface_home, seed=1)
    second = detect(deepface_adapter(deepface_home, tmp_path), image)[0]["emotions"]
    assert first != second


def test_deepface_emotion_model_is_built_once(deepface_home, tmp_path, monkeypatch, no_network):
    from deepface.models.demography.pytorch import Emotion

    calls = []
    real = Emotion.load_model
    monkeypatch.setattr(Emotion, "load_model", lambda *a, **k: calls.append(1) or real(*a, **k))
    adapter = deepface_adapter(deepface_home, tmp_path, inference_runtime="torch")  # DeepFace's own client
    client = adapter._impl.client
    image = decoded(photo("astronaut"))
    results = [detect(adapter, image) for _ in range(3)]
    assert calls == [1]
    assert adapter._impl.client is client
    assert results[0] == results[1] == results[2]  # eval mode: dropout off, deterministic


@pytest.mark.parametrize("name", ["coffee", "rocket"])
def test_deepface_emotion_without_a_face_is_empty(deepface_home, tmp_path, name, no_network):
    adapter = deepface_adapter(deepface_home, tmp_path)
    assert detect(adapter, decoded(photo(name))) == []


def test_deepface_emotion_batches_and_keeps_order(deepface_home, tmp_path, no_network):
    adapter = deepface_adapter(deepface_home, tmp_path)
    images = [decoded(photo(n)) for n in ("coffee", "astronaut", "rocket", "astronaut")]
    results = adapter.predict([adapter.prepare(i) for i in images])
    assert [len(r) for r in results] == [0, 1, 0, 1]
    assert results[1] == results[3]


def test_deepface_emotion_maps_boxes_back_from_a_large_image(deepface_home, tmp_path, no_network):
    adapter = deepface_adapter(deepface_home, tmp_path)  # EMOTION_MAX_DIM 640
    big = upscale(photo("astronaut"), 3000)
    result = detect(adapter, as_image(big))
    assert len(result) == 1
    assert_inside(result[0]["box"], 3000, 3000)
    assert on_astronauts_face(result[0]["box"], scale=3000 / ASTRONAUT_SIZE), result[0]["box"]


def test_deepface_emotion_missing_weights_is_model_not_found(tmp_path, monkeypatch, no_network):
    home = tmp_path / "empty-home"
    monkeypatch.setenv("DEEPFACE_HOME", str(home))
    adapter = EmotionAdapter(Settings(model_dir=tmp_path, deepface_home=str(home)))
    with pytest.raises(ModelNotFound) as err:
        adapter.load(adapter.resolve_path(), "cpu")
    message = str(err.value)
    assert str(home / ".deepface" / "weights" / "facial_expression_model_weights.pth") in message
    assert "ALLOW_MODEL_DOWNLOADS" in message
    assert not home.exists()  # nothing created, nothing fetched


def test_deepface_emotion_default_home_is_under_model_dir(tmp_path):
    adapter = EmotionAdapter(Settings(model_dir=tmp_path))
    assert adapter.resolve_path() == tmp_path / "deepface"


def test_deepface_detector_file_missing_is_model_not_found(deepface_home, tmp_path, no_network):
    # DeepFace's yunet detector wants its ONNX in DEEPFACE_HOME: missing → no download.
    with pytest.raises(ModelNotFound, match="face_detection_yunet_2023mar.onnx"):
        deepface_adapter(deepface_home, tmp_path, deepface_detector="yunet")


# --------------------------------------------------------------------------- YuNet
def test_yunet_finds_exactly_the_astronauts_face(yunet):
    result = detect(yunet, decoded(photo("astronaut")))
    assert len(result) == 1, result
    face = result[0]
    assert on_astronauts_face(face["box"]), face["box"]
    assert_inside(face["box"], ASTRONAUT_SIZE, ASTRONAUT_SIZE)
    assert Settings(_env_file=None).face_score_threshold <= face["confidence"] <= 1.0
    marks = face["landmarks"]
    assert list(marks) == list(LANDMARK_NAMES)
    # the subject's right eye is on the image's left; eyes above nose above mouth
    assert 185 <= marks["right_eye"]["x"] <= 215 and 90 <= marks["right_eye"]["y"] <= 115
    assert 232 <= marks["left_eye"]["x"] <= 262 and 90 <= marks["left_eye"]["y"] <= 115
    assert marks["right_eye"]["y"] < marks["nose"]["y"] < marks["mouth_right"]["y"]
    assert marks["mouth_right"]["x"] < marks["nose"]["x"] < marks["mouth_left"]["x"]


def test_face_region_check_rejects_a_moved_face(yunet):
    # The same face mirrored sits ~65 px to the right: the region check must say no.
    result = detect(yunet, decoded(photo("astronaut")[:, ::-1]))
    assert len(result) == 1
    assert not on_astronauts_face(result[0]["box"])
    mirrored = dict(
        result[0]["box"], x=ASTRONAUT_SIZE - result[0]["box"]["x"] - result[0]["box"]["w"]
    )
    assert on_astronauts_face(mirrored)


def test_yunet_maps_boxes_back_from_an_upscaled_copy(yunet):
    small = detect(yunet, decoded(photo("astronaut")))[0]
    big = detect(yunet, as_image(upscale(photo("astronaut"), 3000)))
    assert len(big) == 1, big
    box = big[0]["box"]
    assert_inside(box, 3000, 3000)
    assert on_astronauts_face(box, scale=3000 / ASTRONAUT_SIZE), box
    scaled = {k: v * 3000 / ASTRONAUT_SIZE for k, v in small["box"].items()}
    assert iou(box, scaled) > 0.8
    eye = big[0]["landmarks"]["right_eye"]
    assert abs(eye["x"] - small["landmarks"]["right_eye"]["x"] * 3000 / 512) < 40


def test_yunet_uses_original_size_of_a_reduced_decode(yunet):
    # A JPEG decoded at 1/2 scale: the pixels are 512 wide, the original was 1024.
    result = detect(yunet, as_image(photo("astronaut"), width=1024, height=1024))
    assert len(result) == 1
    assert on_astronauts_face(result[0]["box"], scale=2.0), result[0]["box"]


@pytest.mark.parametrize("name", ["coffee", "rocket", "chelsea"])
def test_yunet_without_a_face_is_empty(yunet, name):
    assert detect(yunet, decoded(photo(name))) == []


def test_yunet_missing_weights_is_model_not_found(tmp_path, no_network):
    adapter = YunetAdapter(Settings(model_dir=tmp_path))
    assert adapter.resolve_path() == tmp_path / "yunet"
    with pytest.raises(ModelNotFound, match=r"face_detection_yunet_2023mar\.onnx.*YUNET_PATH"):
        adapter.load(adapter.resolve_path(), "cpu")


def test_yunet_path_may_name_the_file(tmp_path):
    folder = require_weights("face_yunet")
    adapter = load_adapter(YunetAdapter, yunet_path=str(folder / faces.YUNET_FILE))
    assert len(detect(adapter, decoded(photo("astronaut")))) == 1


# --------------------------------------------------------------------------- mini-Xception (real weights)
class _MiniXceptionSettings(Settings):
    # EMOTION_MODEL / EMOTION_MINI_XCEPTION_PATH are proposed settings, not in Settings yet
    emotion_model: str = "mini_xception"
    emotion_mini_xception_path: str = ""


@pytest.fixture(scope="module")
def mini_xception() -> EmotionAdapter:
    pytest.importorskip("h5py", reason="EMOTION_MODEL=mini_xception needs h5py")
    settings = _MiniXceptionSettings(
        yunet_path=str(require_weights("face_yunet")),
        emotion_mini_xception_path=str(require_weights("emotion_fer_mini_xception")),
    )
    adapter = EmotionAdapter(settings)
    adapter.load(adapter.resolve_path(), "cpu")
    return adapter


def test_mini_xception_sees_the_astronaut_smile(mini_xception):
    result = detect(mini_xception, decoded(photo("astronaut")))
    assert len(result) == 1
    assert_emotion_face(result[0])
    assert on_astronauts_face(result[0]["box"])
    assert result[0]["dominant_emotion"] == "happy"
    assert result[0]["emotions"]["happy"] > 0.9


def test_mini_xception_large_image_and_no_face(mini_xception):
    big = detect(mini_xception, as_image(upscale(photo("astronaut"), 3000)))
    assert len(big) == 1 and big[0]["dominant_emotion"] == "happy"
    assert on_astronauts_face(big[0]["box"], scale=3000 / ASTRONAUT_SIZE)
    assert detect(mini_xception, decoded(photo("coffee"))) == []


def test_mini_xception_missing_weights_is_model_not_found(tmp_path):
    adapter = EmotionAdapter(_MiniXceptionSettings(model_dir=tmp_path))
    assert adapter.resolve_path() == tmp_path / "emotion_mini_xception"
    with pytest.raises(ModelNotFound, match="fer2013_mini_XCEPTION"):
        adapter.load(adapter.resolve_path(), "cpu")


# --------------------------------------------------------------------------- downloads (file:// URLs)
def test_download_tries_sources_in_order_and_checks_sha256(tmp_path, monkeypatch):
    source = require_weights("face_yunet") / faces.YUNET_FILE
    missing = (tmp_path / "nowhere.onnx").as_uri()
    monkeypatch.setattr(faces, "YUNET_URLS", (missing, source.as_uri()))
    [path] = YunetAdapter.download(tmp_path / "yunet")
    assert path == tmp_path / "yunet" / faces.YUNET_FILE
    assert path.read_bytes() == source.read_bytes()
    load_adapter(YunetAdapter, model_dir=tmp_path)  # the downloaded file is where load looks


def test_download_rejects_a_wrong_sha256(tmp_path):
    source = require_weights("face_yunet") / faces.YUNET_FILE
    target = tmp_path / "x.onnx"
    with pytest.raises(RuntimeError, match="sha256"):
        faces.fetch([source.as_uri()], target, "0" * 64)
    assert not target.exists() and not list(tmp_path.iterdir())


def test_deepface_download_writes_where_deepface_reads(tmp_path, monkeypatch):
    weights = write_random_deepface_emotion_weights(tmp_path / "src")
    monkeypatch.setattr(emotion, "DEEPFACE_EMOTION_URLS", (weights.as_uri(),))
    [path] = EmotionAdapter.download(tmp_path / "home")
    assert path == tmp_path / "home" / ".deepface" / "weights" / weights.name
