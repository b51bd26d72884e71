"""CLIP's image and text towers on ONNX Runtime and OpenVINO give the torch runtime's embeddings, and so does the
LAION head on them; the graphs are cached in the CLIP folder by the SHA-256 of its files; the torch-free image
preprocessing equals torchvision's. CLIP is the tiny random-weight folder of tests/factories/models.py (exported
by the same code as a downloaded one); the LAION head is the real one from ../shared/weights when present."""

from __future__ import annotations

import numpy as np
import pytest

from app.imaging.decode import decode_image
from app.models.clip import ClipAdapter, clip_pixel_values, clip_pixel_values_np
from app.models.clip_files import (
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    ClipTextTokenizer,
    clip_tokenizer_file,
    read_clip_preprocessing,
)
from app.models.laion import LAION_FILES, LaionAestheticAdapter
from app.models.onnx_runtime import onnx_file_for, stamped_source
from tests.factories.models import write_tiny_clip
from tests.helpers import SHARED_WEIGHTS, cosines, encode, load_adapter, photo

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")
RUNTIMES = ("onnxruntime", "openvino")
TEXTS = [
    "a",
    "a photo of the cat",
    "",
    "an astronaut in a white suit standing in front of a flag, " * 6,  # longer than 77 tokens: truncated
    "coffee",
]


def rel(out: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(out - ref).max() / np.abs(ref).max())


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    return write_tiny_clip(tmp_path_factory.mktemp("onnx-clip") / "clip")


@pytest.fixture(scope="module")
def images():
    return [decode_image(encode(photo(n)), max_pixels=60_000_000) for n in PHOTOS]


@pytest.fixture(scope="module")
def adapters(clip_folder):
    return {rt: load_adapter(ClipAdapter, clip_model_name=str(clip_folder), inference_runtime=rt)
            for rt in ("torch", *RUNTIMES)}


@pytest.fixture(scope="module")
def laion_dir(tmp_path_factory):
    """The real LAION heads, or a random ViT-B/32 head in their format (nn.Linear's state dict, torch.save)."""
    real = SHARED_WEIGHTS / "aesthetic_laion_v1_linear"
    if real.is_dir():
        return real
    import torch

    folder = tmp_path_factory.mktemp("laion")
    torch.manual_seed(0)
    torch.save(torch.nn.Linear(512, 1).state_dict(), folder / LAION_FILES[512])
    return folder


def _shapes():
    rng = np.random.default_rng(0)
    yield from (photo(n) for n in PHOTOS)
    yield photo("motorcycle_left")[:, :300]  # portrait
    yield rng.integers(0, 256, (100, 1200, 3), dtype=np.uint8)  # panorama: resized below the crop, padded
    yield rng.integers(0, 256, (60, 90, 3), dtype=np.uint8)  # smaller than the crop: enlarged
    yield rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)  # no resize
    for _ in range(6):
        h, w = rng.integers(30, 1500, 2)
        yield rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_the_numpy_preprocessing_equals_torchvisions():
    """clip_pixel_values_np (ONNX runtimes) = clip_pixel_values (torchvision, the torch runtime): the same
    uint8 resampling, crop, padding and float32 normalisation (on this machine they agree bit for bit)."""
    params = [dict(mean=(0.48145466, 0.4578275, 0.40821073), std=(0.26862954, 0.26130258, 0.27577711)),
              dict(shortest_edge=256, crop=(224, 224), mean=(0.5,) * 3, std=(0.5,) * 3),
              dict(shortest_edge=336, crop=(336, 336), mean=(0.5,) * 3, std=(0.25,) * 3)]
    for rgb in _shapes():
        for kw in params:
            ref = clip_pixel_values(rgb, **kw)
            ours = clip_pixel_values_np(rgb, **kw)
            assert ours.shape == ref.shape and ours.dtype == np.float32 and ours.flags.c_contiguous
            np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-5)


def test_image_embeddings_equal_torchs(adapters, images):
    torch_adapter = adapters["torch"]
    prepared = [torch_adapter.prepare(im) for im in images]
    ref = torch_adapter.image_features(prepared)
    ref_unit = np.stack(torch_adapter.predict(prepared))
    for runtime in RUNTIMES:
        adapter = adapters[runtime]
        assert adapter.model is None and adapter.image_session is not None and adapter.image_session.runtime == runtime
        ours = [adapter.prepare(im) for im in images]  # its own (torch-free) preprocessing
        np.testing.assert_allclose(np.stack(ours), np.stack(prepared), rtol=0, atol=1e-5)
        out = adapter.image_features(ours)
        assert out.shape == ref.shape == (len(PHOTOS), 512) and out.dtype == np.float32
        assert rel(out, ref) < 1e-5, (runtime, rel(out, ref))
        unit = np.stack(adapter.predict(ours))
        assert cosines(unit, ref_unit).min() > 0.99999
        np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, atol=1e-5)
        # batch of one = its row in the batch
        np.testing.assert_allclose(adapter.image_features(ours[1:2])[0], out[1], rtol=1e-5, atol=1e-6)
        assert adapter.predict([]) == [] and adapter.image_features([]).shape == (0, 512)


def test_the_tokenizer_is_transformers_own_without_transformers(clip_folder, adapters):
    """The tokenizer file the export writes, read with `tokenizers` alone, gives transformers' CLIPTokenizer ids
    and masks (padding=True, truncation=True, max_length=77) on texts of every kind, batched and alone."""
    from transformers import CLIPTokenizer

    reference = CLIPTokenizer.from_pretrained(str(clip_folder), local_files_only=True)
    texts = [*TEXTS, "  Two   spaces\tand a TAB\n", "Ünïcödé café — naïve façade", "emoji 📷🙂 and ½ ligatures ﬁ",
             "numbers 1234567 and 3.14", "UPPER lower MiXeD", "punctuation!?,.;:'\"()[]", "x" * 300, "日本語のテキスト"]
    tok = clip_tokenizer_file(clip_folder)
    assert tok.parent == clip_folder and ".onnx." in tok.name  # an export artefact, left out of the folder's hash
    ours = ClipTextTokenizer(tok)
    assert ours.max_length == 77
    ids, mask = ours(texts)
    want = reference(texts, padding=True, truncation=True, max_length=77)
    assert ids.dtype == mask.dtype == np.int64
    assert ids.tolist() == want["input_ids"] and mask.tolist() == want["attention_mask"]
    assert ids.shape[1] == 77  # the long texts are truncated at the context, end token kept
    for text in texts:
        one_ids, one_mask = ours([text])
        want_one = reference([text], padding=True, truncation=True, max_length=77)
        assert one_ids.tolist() == want_one["input_ids"] and one_mask.tolist() == want_one["attention_mask"]
    for runtime in ("torch", *RUNTIMES):  # every runtime tokenizes with it
        assert isinstance(adapters[runtime].tokenizer, ClipTextTokenizer) and adapters[runtime].max_text_len == 77


@pytest.mark.parametrize("config", [
    None,
    {"size": {"shortest_edge": 256}, "crop_size": {"height": 240, "width": 200}, "image_mean": [0.5, 0.4, 0.3],
     "image_std": [0.2, 0.25, 0.3]},
    {"size": 288, "crop_size": 256},
    {"image_mean": [0.1, 0.2, 0.3]},
])
def test_the_preprocessing_is_read_as_clipimageprocessor_reads_it(tmp_path, config):
    import json

    from transformers import CLIPImageProcessor

    if config is not None:
        (tmp_path / "preprocessor_config.json").write_text(json.dumps({"image_processor_type": "CLIPImageProcessor",
                                                                         **config}))
    shortest, crop, mean, std = read_clip_preprocessing(tmp_path, 224)
    if config is None:
        assert (shortest, crop, mean, std) == (224, (224, 224), OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
        return
    proc = CLIPImageProcessor.from_pretrained(str(tmp_path), local_files_only=True)
    assert shortest == proc.size["shortest_edge"]
    assert crop == (proc.crop_size["height"], proc.crop_size["width"])
    np.testing.assert_allclose(mean, proc.image_mean)
    np.testing.assert_allclose(std, proc.image_std)


def test_text_embeddings_equal_torchs_for_any_length(adapters):
    """One padded batch of texts from 2 to 77 tokens, and each text alone (the sequence axis is dynamic)."""
    ids, _ = adapters["torch"].tokenizer(TEXTS)
    lengths = {int(m.sum()) for m in (adapters["torch"].tokenizer([t])[1] for t in TEXTS)}
    assert ids.shape[1] == 77 and len(lengths) == len(TEXTS)
    ref = adapters["torch"].text_features(TEXTS)
    alone_ref = np.concatenate([adapters["torch"].text_features([t]) for t in TEXTS])
    for runtime in RUNTIMES:
        adapter = adapters[runtime]
        assert adapter.model is None and adapter.text_session is not None and adapter.text_session.runtime == runtime
        out = adapter.text_features(TEXTS)
        assert out.shape == (len(TEXTS), 512) and out.dtype == np.float32
        assert rel(out, ref) < 1e-5, (runtime, rel(out, ref))
        alone = np.concatenate([adapter.text_features([t]) for t in TEXTS])
        assert rel(alone, alone_ref) < 1e-5, (runtime, rel(alone, alone_ref))
        np.testing.assert_allclose(alone, out, rtol=1e-4, atol=1e-5)  # padding does not change an embedding
        assert cosines(adapter.embed_text(TEXTS), adapters["torch"].embed_text(TEXTS)).min() > 0.99999
        assert adapter.embed_text([]).shape == (0, 512)


def test_laion_scores_equal_torchs(adapters, images, laion_dir):
    scores = {}
    for runtime in ("torch", *RUNTIMES):
        clip = adapters[runtime]
        laion = load_adapter(LaionAestheticAdapter, laion_aesthetic_path=str(laion_dir), inference_runtime=runtime)
        embeddings = clip.predict([clip.prepare(im) for im in images])
        scores[runtime] = np.asarray(laion.predict([laion.prepare(e) for e in embeddings]))
    assert np.all(np.isfinite(scores["torch"]))
    for runtime in RUNTIMES:
        np.testing.assert_allclose(scores[runtime], scores["torch"], rtol=1e-5)


def test_the_exports_are_cached_and_redone_when_the_weights_change(tmp_path):
    folder = write_tiny_clip(tmp_path / "clip")
    first = load_adapter(ClipAdapter, clip_model_name=str(folder), inference_runtime="onnxruntime")
    graphs = [onnx_file_for(folder, "clip_image"), onnx_file_for(folder, "clip_text")]
    assert graphs == [folder / "clip_image.onnx", folder / "clip_text.onnx"]
    stamps = [stamped_source(g) for g in graphs]
    assert stamps[0].endswith(" clip_image") and stamps[1].endswith(" clip_text")
    assert stamps[0].split()[0] == stamps[1].split()[0]  # both keyed by the folder's hash
    mtimes = [g.stat().st_mtime_ns for g in graphs]
    load_adapter(ClipAdapter, clip_model_name=str(folder), inference_runtime="openvino")
    assert [g.stat().st_mtime_ns for g in graphs] == mtimes  # the cached graphs were used
    x = [first.prepare(decode_image(encode(photo("coffee")), max_pixels=60_000_000))]
    before_image, before_text = first.image_features(x), first.text_features(["a cat"])

    write_tiny_clip(folder, seed=1)  # other weights, same file names
    second = load_adapter(ClipAdapter, clip_model_name=str(folder), inference_runtime="onnxruntime")
    assert all(stamped_source(g) != s for g, s in zip(graphs, stamps))  # both re-exported for the new folder
    ref = load_adapter(ClipAdapter, clip_model_name=str(folder), inference_runtime="torch")
    after_image, after_text = second.image_features(x), second.text_features(["a cat"])
    assert not np.allclose(before_image, after_image) and not np.allclose(before_text, after_text)
    assert rel(after_image, ref.image_features(x)) < 1e-5 and rel(after_text, ref.text_features(["a cat"])) < 1e-5
