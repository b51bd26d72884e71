"""The neural models on ONNX Runtime and OpenVINO give torch's outputs, and their exports are cached by the
source's SHA-256 (tests/factories/models.py writes NIMA checkpoints in pyiqa's format with random weights;
the real loader exports them exactly as it exports the published files)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from app.imaging.decode import decode_image
from app.models.nima import NimaAestheticAdapter, NimaTechnicalAdapter
from app.models.onnx_runtime import SOURCE_KEY, onnx_file_for, stamped_source
from tests.factories.models import write_nima_checkpoint
from tests.helpers import encode, load_adapter, photo

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")
NIMA = {"nima_technical": NimaTechnicalAdapter, "nima_aesthetic": NimaAestheticAdapter}


@pytest.fixture(scope="module")
def nima_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("onnx-nima")
    for kind in NIMA:
        write_nima_checkpoint(root / kind, kind)
    return root


@pytest.fixture(scope="module")
def prepared():
    images = [decode_image(encode(photo(n)), max_pixels=60_000_000) for n in PHOTOS]
    return images


def outputs(cls, model_dir, runtime, images):
    adapter = load_adapter(cls, model_dir=model_dir, inference_runtime=runtime)
    return adapter, adapter.forward([adapter.prepare(im) for im in images])


@pytest.mark.parametrize("kind", list(NIMA))
def test_nima_on_onnxruntime_and_openvino_equals_torch(nima_dir, prepared, kind):
    cls = NIMA[kind]
    _, ref = outputs(cls, nima_dir, "torch", prepared)
    for runtime in ("onnxruntime", "openvino"):
        adapter, out = outputs(cls, nima_dir, runtime, prepared)
        assert adapter.net is None and adapter.session is not None and adapter.session.runtime == runtime
        assert out.shape == ref.shape and out.dtype == np.float32
        rel = np.abs(out - ref).max() / np.abs(ref).max()
        assert rel < 1e-5, (runtime, rel)
        # and the scores the service returns
        torch_scores = load_adapter(cls, model_dir=nima_dir, inference_runtime="torch").predict(
            [adapter.prepare(im) for im in prepared])
        scores = adapter.predict([adapter.prepare(im) for im in prepared])
        if kind == "nima_technical":
            np.testing.assert_allclose(scores, torch_scores, rtol=1e-5)
        else:
            np.testing.assert_allclose([s["mean"] for s in scores], [s["mean"] for s in torch_scores], rtol=1e-5)


def test_the_export_is_cached_and_redone_when_the_weights_change(tmp_path):
    folder = tmp_path / "nima_technical"
    write_nima_checkpoint(folder, "nima_technical")
    source = folder / "NIMA_koniq-250367ae.pth"
    first = load_adapter(NimaTechnicalAdapter, model_dir=tmp_path, inference_runtime="onnxruntime")
    exported = onnx_file_for(source, "nima_technical")
    assert exported == folder / "NIMA_koniq-250367ae.nima_technical.onnx" and exported.is_file()
    assert stamped_source(exported) is not None and stamped_source(exported).endswith(" nima_technical")
    stamp, mtime = stamped_source(exported), exported.stat().st_mtime_ns
    load_adapter(NimaTechnicalAdapter, model_dir=tmp_path, inference_runtime="onnxruntime")
    assert exported.stat().st_mtime_ns == mtime  # the cached graph was used
    x = [first.prepare(decode_image(encode(photo("coffee")), max_pixels=60_000_000))]
    before = first.forward(x)
    write_nima_checkpoint(folder, "nima_technical", seed=1)  # other weights, same file name
    second = load_adapter(NimaTechnicalAdapter, model_dir=tmp_path, inference_runtime="onnxruntime")
    assert stamped_source(exported) != stamp  # re-exported for the new source
    after = second.forward(x)
    ref = load_adapter(NimaTechnicalAdapter, model_dir=tmp_path, inference_runtime="torch").forward(x)
    assert not np.allclose(before, after) and np.allclose(after, ref, rtol=1e-5)
    assert SOURCE_KEY.startswith("loupe.")


def test_a_read_only_model_folder_exports_to_the_cache(tmp_path, monkeypatch):
    """A model volume mounted read-only: the export goes to the user's cache folder instead (the folder is
    reported read-only through os.access: as root, chmod would not stop the write)."""
    import app.models.onnx_runtime as rt

    folder = tmp_path / "nima_technical"
    write_nima_checkpoint(folder, "nima_technical")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    real_access = os.access
    monkeypatch.setattr(rt.os, "access", lambda p, mode: False if Path(p) == folder else real_access(p, mode))
    adapter = load_adapter(NimaTechnicalAdapter, model_dir=tmp_path, inference_runtime="onnxruntime")
    assert not list(folder.glob("*.onnx"))
    cached = list((tmp_path / "cache" / "loupe" / "onnx").glob("*.nima_technical.onnx"))
    assert len(cached) == 1 and adapter.session is not None and adapter.session.path == cached[0]
