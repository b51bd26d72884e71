"""QUANTIZE=int8 (app.models.quantize): static int8 graphs, calibrated on real photos, used only within each
model's deviation limit, measured on photos the calibration did not see, once per graph.

CLIP and DINOv2 are the tiny random-weight folders of tests/factories (quantized by the same code as the real
ones); the deviation of random weights says nothing of the real models' (`scripts/bench.py models --quantize`
prints it for the weights at hand), but the mechanism is the same: what is measured, stamped, reused, refused.
"""

from __future__ import annotations

import numpy as np
import pytest

from app.models.clip import ClipAdapter
from app.models.dinov2 import Dinov2Adapter
from app.models.onnx_runtime import SOURCE_KEY, metadata_props, onnx_file_for
from app.models.quantize import DEVIATION_KEY, RECIPE, calibration_photos, int8_file_for
from tests.factories.models import write_tiny_clip, write_tiny_dinov2
from tests.helpers import cosines, decoded, encode, load_adapter, photo

pytest.importorskip("skimage", reason="the default calibration photos are scikit-image's")


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    return write_tiny_clip(tmp_path_factory.mktemp("q-clip") / "clip")


def test_int8_clip_is_quantized_once_measured_and_close_to_fp32(clip_folder):
    fp32 = load_adapter(ClipAdapter, clip_model_name=str(clip_folder))
    assert fp32.precision.precision == "fp32" and fp32.precision.int8_deviation is None
    int8 = load_adapter(ClipAdapter, clip_model_name=str(clip_folder), quantize="int8")
    graph = int8_file_for(onnx_file_for(clip_folder, "clip_image"))
    assert graph.is_file() and int8.image_session.path == graph
    props = metadata_props(graph)
    assert props[SOURCE_KEY].split()[2:] == [RECIPE, props[SOURCE_KEY].split()[-1]]
    assert props[SOURCE_KEY].split()[-1].startswith("skimage-")
    p = int8.precision
    assert p.precision == "int8" and p.int8_metric == "1 - min cosine to fp32" and p.int8_limit == 0.01
    assert 0 <= p.int8_deviation <= p.int8_limit and float(props[DEVIATION_KEY]) == p.int8_deviation
    assert graph.stat().st_size < onnx_file_for(clip_folder, "clip_image").stat().st_size
    # on photos that are in neither half of the calibration set, the embeddings stay close
    images = [decoded(photo(n)) for n in ("chelsea", "page", "text")]
    ref = fp32.image_features([fp32.prepare(im) for im in images])
    out = int8.image_features([int8.prepare(im) for im in images])
    assert cosines(out, ref).min() >= 0.99
    # the text tower is not quantized
    np.testing.assert_array_equal(int8.text_features(["a cat"]), fp32.text_features(["a cat"]))
    # cached: a second load (also on OpenVINO, which runs the same QDQ graph) measures nothing again
    mtime = graph.stat().st_mtime_ns
    again = load_adapter(ClipAdapter, clip_model_name=str(clip_folder), quantize="int8", inference_runtime="openvino")
    assert graph.stat().st_mtime_ns == mtime and again.precision == p
    ov = again.image_features([again.prepare(im) for im in images])
    assert cosines(ov, ref).min() >= 0.99


def test_a_model_over_its_limit_stays_fp32_and_says_so(clip_folder, monkeypatch, caplog):
    import app.models.clip as clip_module
    from app.models.quantize import embedding_check

    monkeypatch.setattr(clip_module, "embedding_check", lambda: embedding_check(limit=0.0))
    # at WARNING on the logger itself: an app built earlier in the run may have set the root's level higher
    with caplog.at_level("WARNING", logger="loupe.models"):
        adapter = load_adapter(ClipAdapter, clip_model_name=str(clip_folder), quantize="int8")
    assert adapter.image_session.path == onnx_file_for(clip_folder, "clip_image")  # the fp32 graph
    p = adapter.precision
    assert p.precision == "fp32" and p.int8_limit == 0.0 and p.int8_deviation > 0.0
    assert "stays fp32 under QUANTIZE=int8" in caplog.text


def test_dinov2_int8_and_the_registry_reports_each_precision(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from app.core.config import Settings
    from app.models.registry import ModelRegistry

    write_tiny_dinov2(tmp_path / "dinov2")
    registry = ModelRegistry(Settings(_env_file=None, model_dir=tmp_path, quantize="int8"), ThreadPoolExecutor(1))
    adapter = registry.load("dinov2")
    assert isinstance(adapter, Dinov2Adapter) and adapter.precision.precision == "int8"
    status = registry.status()
    assert status["dinov2"]["precision"] == adapter.precision.public()
    assert status["brisque"]["precision"] is None  # not an ONNX model
    fp32 = load_adapter(Dinov2Adapter, model_dir=str(tmp_path))
    images = [decoded(photo(n)) for n in ("chelsea", "coins")]
    out = np.stack(adapter.predict([adapter.prepare(im) for im in images]))
    ref = np.stack(fp32.predict([fp32.prepare(im) for im in images]))
    assert cosines(out, ref).min() >= 0.99


def test_calibration_from_the_operators_folder(tmp_path):
    folder = tmp_path / "calib"
    folder.mkdir()
    for n in ("astronaut", "coffee", "rocket"):
        (folder / f"{n}.jpg").write_bytes(encode(photo(n)))
    with pytest.raises(ValueError, match="at least 4"):
        calibration_photos(folder)
    (folder / "sub").mkdir()
    (folder / "sub" / "chelsea.png").write_bytes(encode(photo("chelsea"), "PNG"))
    (folder / "notes.txt").write_text("not an image")
    photos, name = calibration_photos(folder)
    assert len(photos) == 4 * 3 and name.startswith("dir:")  # each with a blurred and a darkened copy
    assert all(p.dtype == np.uint8 and p.ndim == 3 and p.shape[2] == 3 for p in photos)
    assert photos[2].mean() < photos[0].mean() * 0.5  # the darkened copy
    (folder / "sub" / "chelsea.png").write_bytes(encode(photo("camera"), "PNG"))
    assert calibration_photos(folder)[1] != name  # other photos, another set: quantized again


def test_the_nima_checks_measure_the_score_as_a_share_of_its_range():
    from app.models.nima import NimaAestheticAdapter, NimaTechnicalAdapter

    tech = NimaTechnicalAdapter.int8_check()
    assert tech.limit == 0.02 and tech.op_types is None  # a CNN: every operator quantized
    assert tech.measure(np.array([[0.5], [0.2]]), np.array([[0.51], [0.17]])) == pytest.approx(0.02)
    aes = NimaAestheticAdapter.int8_check()
    ref = np.zeros((2, 10))
    ref[:, 4] = 1.0  # mean 5
    out = ref.copy()
    out[0, 4], out[0, 5] = 0.5, 0.5  # mean 5.5: 0.5 of the 9-point range, on one photo of two
    assert aes.measure(ref, out) == pytest.approx(0.25 / 9)


def test_a_measured_int8_graph_serves_where_the_calibration_photos_are_not(tmp_path, monkeypatch):
    """Quantized on a machine with scikit-image (scripts/download_models.py), run where it is not installed;
    an operator's own calibration folder is honoured: other photos, another int8 graph."""
    import app.models.quantize as quantize

    folder = write_tiny_clip(tmp_path / "clip")
    first = load_adapter(ClipAdapter, clip_model_name=str(folder), quantize="int8")
    graph = first.image_session.path
    mtime = graph.stat().st_mtime_ns

    def unavailable(_folder):
        raise ValueError("no calibration photos here")

    monkeypatch.setattr(quantize, "calibration_photos", unavailable)
    again = load_adapter(ClipAdapter, clip_model_name=str(folder), quantize="int8")
    assert again.image_session.path == graph and graph.stat().st_mtime_ns == mtime
    assert again.precision == first.precision
    monkeypatch.undo()

    calib = tmp_path / "calib"
    calib.mkdir()
    for n in ("astronaut", "coffee", "chelsea", "rocket"):
        (calib / f"{n}.jpg").write_bytes(encode(photo(n)))
    own = load_adapter(ClipAdapter, clip_model_name=str(folder), quantize="int8", quantize_calibration_dir=str(calib))
    stamp = metadata_props(graph)[SOURCE_KEY]
    assert stamp.split()[-1].startswith("dir:") and own.precision.precision == "int8"
    assert own.precision.int8_deviation != first.precision.int8_deviation  # measured on the folder's photos
