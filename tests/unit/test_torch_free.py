"""On ONNX Runtime / OpenVINO the service runs without torch: every neural model loads and scores in a process
where `import torch` (and transformers, torchvision) fails, with the outputs of a process that has them.

Also the two readers that make this possible: torch's weights format read without torch
(app.models.torch_files, checked against torch.load), and an ONNX file's metadata read without parsing its
graph (app.models.onnx_runtime.metadata_props, checked against onnx.load).
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from app.models.onnx_runtime import metadata_props, stamped_source
from app.models.torch_files import WeightsFileError, read_state_dict
from tests.factories.faces import write_random_deepface_emotion_weights
from tests.factories.models import write_nima_checkpoint, write_tiny_clip, write_tiny_dinov2
from tests.helpers import PROJECT_ROOT, SHARED_WEIGHTS, encode, photo

MODELS = ("nima_technical", "clip", "laion_aesthetic", "emotion", "dinov2")
BLOCKED = ("torch", "torchvision", "transformers")


# -- torch's file format without torch ---------------------------------------------------------------------------


def test_the_state_dict_reader_equals_torch_load_for_every_dtype_and_layout(tmp_path):
    import torch

    torch.manual_seed(0)
    base = torch.randn(6, 5)
    state = {
        "f32": torch.randn(3, 4), "f64": torch.randn(2, 3, dtype=torch.float64), "f16": torch.randn(5).half(),
        "bf16": torch.randn(4, 2).bfloat16(), "i64": torch.arange(-3, 9), "i32": torch.arange(7, dtype=torch.int32),
        "i8": torch.tensor([-128, 0, 127], dtype=torch.int8), "u8": torch.tensor([0, 255], dtype=torch.uint8),
        "bool": torch.tensor([True, False, True]), "scalar": torch.tensor(3.5), "empty": torch.zeros(0, 4),
        "transposed": base.t(), "offset_slice": base[2:5, 1:4],  # views: the whole storage is saved, with strides
        "param": torch.nn.Parameter(torch.randn(2, 2)),
    }
    file = tmp_path / "w.pth"
    torch.save(state, file)
    ours = read_state_dict(file)
    ref = torch.load(file, map_location="cpu", weights_only=True)
    assert list(ours) == list(ref)
    for key, want in ref.items():
        want_np = want.detach().float().numpy() if want.dtype == torch.bfloat16 else want.detach().numpy()
        assert ours[key].shape == tuple(want.shape), key
        assert ours[key].dtype == want_np.dtype, key
        np.testing.assert_array_equal(ours[key], want_np, err_msg=key)
    # pyiqa's checkpoints nest the state dict under one key
    torch.save({"params": {"w": base}}, tmp_path / "nested.pth")
    np.testing.assert_array_equal(read_state_dict(tmp_path / "nested.pth")["w"], base.numpy())


def test_the_state_dict_reader_reads_the_real_laion_heads_as_torch_does():
    import torch

    folder = SHARED_WEIGHTS / "aesthetic_laion_v1_linear"
    if not folder.is_dir():
        pytest.skip(f"the real LAION heads are not here ({folder} is missing)")
    for file in sorted(folder.glob("*.pth")):
        ref = torch.load(file, map_location="cpu", weights_only=True)
        ours = read_state_dict(file)
        assert sorted(ours) == sorted(ref) and {"weight", "bias"} <= set(ours)
        for key in ref:
            np.testing.assert_array_equal(ours[key], ref[key].numpy())


def test_the_state_dict_reader_refuses_what_is_not_a_state_dict(tmp_path):
    import torch

    torch.save(torch.nn.Linear(2, 1), tmp_path / "module.pth")  # a pickled module: code, not weights
    with pytest.raises(WeightsFileError, match="not allowed"):
        read_state_dict(tmp_path / "module.pth")
    (tmp_path / "text.pth").write_bytes(b"not a zip file")
    with pytest.raises(WeightsFileError, match="zip-format"):
        read_state_dict(tmp_path / "text.pth")
    torch.save([torch.zeros(2)], tmp_path / "list.pth")
    with pytest.raises(WeightsFileError, match="state dict"):
        read_state_dict(tmp_path / "list.pth")


# -- an ONNX file's metadata without its graph ----------------------------------------------------------------


def test_metadata_props_equals_onnx_load_and_a_truncated_file_has_no_stamp(tmp_path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = numpy_helper.from_array(np.random.default_rng(0).normal(size=(256, 256)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 256])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 256])], [weights])
    model = helper.make_model(graph, producer_name="loupe-test", doc_string="d" * 300)
    helper.set_model_props(model, {"loupe.source_sha256": "abc nima_technical", "other": "ünï ✓", "empty": ""})
    file = tmp_path / "m.onnx"
    onnx.save(model, file)
    want = {p.key: p.value for p in onnx.load(str(file)).metadata_props}
    assert metadata_props(file) == want and stamped_source(file) == "abc nima_technical"
    data = file.read_bytes()
    (tmp_path / "cut.onnx").write_bytes(data[: len(data) // 2])  # cut inside the weights
    assert stamped_source(tmp_path / "cut.onnx") is None
    (tmp_path / "junk.onnx").write_bytes(b"\xff" * 64)
    assert stamped_source(tmp_path / "junk.onnx") is None


# -- the models, in a process without torch ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("torch-free")
    write_nima_checkpoint(root / "nima_technical", "nima_technical")
    write_tiny_clip(root / "clip")
    real_laion = SHARED_WEIGHTS / "aesthetic_laion_v1_linear"
    if real_laion.is_dir():
        import shutil

        shutil.copytree(real_laion, root / "laion_aesthetic")
    else:
        import torch

        (root / "laion_aesthetic").mkdir()
        torch.manual_seed(0)
        torch.save(torch.nn.Linear(512, 1).state_dict(), root / "laion_aesthetic" / "sa_0_4_vit_b_32_linear.pth")
    write_random_deepface_emotion_weights(root / "deepface")
    write_tiny_dinov2(root / "dinov2")
    for name in ("astronaut", "coffee"):
        (root / f"{name}.jpg").write_bytes(encode(photo(name)))
    return root


#: loads every model on `runtime` through the registry and prints each one's outputs on the photos as JSON;
#: with "block" as the last argument, torch, torchvision and transformers cannot be imported
CHILD = r"""
import json, sys
from pathlib import Path
root, runtime, block = Path(sys.argv[1]), sys.argv[2], sys.argv[3] == "block"
BLOCKED, MODELS = json.loads(sys.argv[5]), json.loads(sys.argv[6])
if block:
    for name in BLOCKED:
        sys.modules[name] = None  # `import torch` now raises ImportError
sys.path.insert(0, sys.argv[4])
from concurrent.futures import ThreadPoolExecutor
from app.core.config import Settings
from app.imaging.decode import decode_image
from app.models.registry import ModelRegistry

settings = Settings(_env_file=None, model_dir=root, inference_runtime=runtime, clip_model_name=str(root / "clip"),
                    log_level="WARNING")
registry = ModelRegistry(settings, ThreadPoolExecutor(2))
images = [decode_image((root / f"{n}.jpg").read_bytes(), max_pixels=60_000_000) for n in ("astronaut", "coffee")]
out = {}
for name in MODELS:
    adapter = registry.load(name)
    if name == "laion_aesthetic":
        clip = registry.load("clip")
        batch = [adapter.prepare(e) for e in clip.predict([clip.prepare(im) for im in images])]
    else:
        batch = [adapter.prepare(im) for im in images]
    result = adapter.predict(batch)
    if name == "clip":
        result = [*result, *adapter.embed_text(["a photo of an astronaut", "coffee"])]
    if name == "emotion":
        result = [[[f["box"], f["dominant_emotion"], list(f["emotions"].values())] for f in faces] for faces in result]
    out[name] = [r.tolist() if hasattr(r, "tolist") else r for r in result]
print("RESULT " + json.dumps({"outputs": out, "device": registry.device_in_use(),
                              "imported": sorted(m for m in BLOCKED if sys.modules.get(m) is not None)}))
"""


def run_child(model_dir, runtime: str, block: bool) -> dict:
    proc = subprocess.run([sys.executable, "-c", CHILD, str(model_dir), runtime, "block" if block else "-",
                           str(PROJECT_ROOT), json.dumps(BLOCKED), json.dumps(MODELS)], capture_output=True, text=True, timeout=600, cwd=PROJECT_ROOT)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    assert proc.returncode == 0 and line, proc.stderr[-3000:]
    return json.loads(line[len("RESULT "):])


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_every_model_loads_and_scores_where_torch_cannot_be_imported(model_dir, runtime):
    # first with torch: exports the graphs (and the CLIP tokenizer file) that the export step is for
    with_torch = run_child(model_dir, runtime, block=False)
    without = run_child(model_dir, runtime, block=True)
    assert without["imported"] == [] and without["device"] == "cpu"
    for name in MODELS:
        got, want = without["outputs"][name], with_torch["outputs"][name]
        if name == "emotion":  # per face: the box, the label, the 7 probabilities
            assert [[f[:2] for f in faces] for faces in got] == [[f[:2] for f in faces] for faces in want]
            assert sum(len(faces) for faces in got) >= 1  # the astronaut's face
            got = [f[2] for faces in got for f in faces]
            want = [f[2] for faces in want for f in faces]
        np.testing.assert_allclose(np.asarray(got, float), np.asarray(want, float), rtol=1e-6, atol=1e-7,
                                   err_msg=name)
    assert len(without["outputs"]["clip"]) == 4 and len(without["outputs"]["dinov2"]) == 2
