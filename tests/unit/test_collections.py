"""Per-collection classifiers on REAL MobileNet embeddings of skimage photos: training, the store's checks, the bake-off.

The collection is "astronaut or coffee": those two photos and their degraded copies (blur, JPEG, brightness,
10 % crops) are positives; nine other skimage photos and their copies are negatives. Held-out copies
(other crops, blur + darkening) of the positives must classify in, of the negatives out.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from app.collections.store import BEST_MODELS, ClassifierError, CollectionStore, load_classifier, save_classifier, version_path
from app.collections.train import MIN_PER_CLASS, Example, TrainError, train_collection
from app.core.config import Settings
from tests.helpers import SHARED_WEIGHTS, encode, exposure, gaussian_blur, jpeg_roundtrip, photo

POSITIVE = ("astronaut", "coffee")
NEGATIVE = ("chelsea", "rocket", "camera", "coins", "moon", "brick", "hubble_deep_field", "immunohistochemistry", "motorcycle_left")
MOBILENET = SHARED_WEIGHTS / "imagenet_mobilenet_tflite"


def crop(rgb: np.ndarray, share: float, corner: str) -> np.ndarray:
    """Cut `share` of the height and width away from one side pair ("tl", "br", …) or evenly ("c")."""
    h, w = rgb.shape[:2]
    dh, dw = round(h * share), round(w * share)
    top = {"t": 0, "b": dh, "c": dh // 2}[corner[0]]
    left = {"l": 0, "r": dw, "c": dw // 2}[corner[-1]]
    return np.ascontiguousarray(rgb[top : top + h - dh, left : left + w - dw])


def training_copies(rgb: np.ndarray) -> list[np.ndarray]:
    """The photo and the degraded copies it is trained with (10 % crops, blur, JPEG, brightness)."""
    return [np.ascontiguousarray(rgb), gaussian_blur(rgb, 2.0), jpeg_roundtrip(rgb, 30), exposure(rgb, 0.6), exposure(rgb, 1.4),
            crop(rgb, 0.1, "tl"), crop(rgb, 0.1, "tr"), crop(rgb, 0.1, "bl"), crop(rgb, 0.1, "br"), crop(rgb, 0.1, "c")]


def held_out_copies(rgb: np.ndarray) -> list[np.ndarray]:
    """Copies never trained on: other crops, and degradations stacked on a crop."""
    return [crop(rgb, 0.15, "c"), crop(rgb, 0.2, "tl"), crop(rgb, 0.2, "br"), exposure(gaussian_blur(crop(rgb, 0.1, "cl"), 1.5), 0.75),
            jpeg_roundtrip(crop(rgb, 0.12, "cr"), 50)]


def require_mobilenet() -> Path:
    if not MOBILENET.is_dir():
        pytest.skip(f"real MobileNet weights not available: {MOBILENET} is missing")
    return MOBILENET


def mobilenet_embed(images: list[np.ndarray]) -> np.ndarray:
    """Real 1024-d embeddings through the service's own decode and adapter (prepare + predict)."""
    from app.imaging.decode import decode_image
    from app.models.mobilenet import MobileNetEmbedAdapter
    from tests.helpers import load_adapter

    adapter = load_adapter(MobileNetEmbedAdapter, mobilenet_path=str(require_mobilenet()))
    prepared = [adapter.prepare(decode_image(encode(im, "PNG"), max_pixels=60_000_000)) for im in images]
    return np.stack(adapter.predict(prepared)).astype(np.float64)


@pytest.fixture(scope="module")
def data() -> dict[str, list[tuple[str, np.ndarray]]]:
    """{"train", "held_in", "held_out"}: (image_id, embedding) lists; train items' ids say their label."""
    require_mobilenet()
    train, held_in, held_out = [], [], []
    for name in POSITIVE + NEGATIVE:
        rgb = photo(name)
        label = "pos" if name in POSITIVE else "neg"
        tv = mobilenet_embed(training_copies(rgb))
        hv = mobilenet_embed(held_out_copies(rgb))
        train += [(f"{label}/{name}/{i}", v) for i, v in enumerate(tv)]
        (held_in if label == "pos" else held_out).extend((f"{name}/held{i}", v) for i, v in enumerate(hv))
    return {"train": train, "held_in": held_in, "held_out": held_out}


def examples(data, collection: str = "space_coffee") -> list[Example]:
    return [Example(collection, iid, v, 1 if iid.startswith("pos/") else 0) for iid, v in data["train"]]


def settings(tmp_path: Path, **kw) -> Settings:
    return Settings(_env_file=None, model_dir=tmp_path / "models", **kw)


def test_classifier_dir_defaults_to_model_dir(tmp_path):
    assert CollectionStore(settings(tmp_path)).root == tmp_path / "models" / "classifiers"
    assert CollectionStore(settings(tmp_path, classifier_dir=str(tmp_path / "c"))).root == tmp_path / "c"


def test_trained_on_real_embeddings_held_out_copies_classify(tmp_path, data):
    s = settings(tmp_path)
    root = CollectionStore(s).root
    clf, ranked, problems = train_collection(root, "space_coffee", examples(data), "mobilenet", s)
    assert not problems and [r.version for r in ranked] == [clf.version]
    assert clf.dim == 1024 and clf.metrics["n_train"] + clf.metrics["n_test"] == len(data["train"])
    store = CollectionStore(s)
    served = store.get("space_coffee")
    assert served is not None and served.version == clf.version and np.allclose(served.coef, clf.coef)
    p_in = {iid: served.predict(v) for iid, v in data["held_in"]}
    p_out = {iid: served.predict(v) for iid, v in data["held_out"]}
    print("\nheld-out positives:", {k: round(p, 3) for k, (p, _) in p_in.items()})
    print("held-out negatives: max", max(p for p, _ in p_out.values()), "metrics", clf.metrics)
    assert all(is_in for _, is_in in p_in.values()), p_in
    assert not any(is_in for _, is_in in p_out.values()), {k: v for k, v in p_out.items() if v[1]}
    assert clf.metrics["precision"] >= 0.9 and clf.metrics["roc_auc"] >= 0.95
    listed = store.list()
    assert [e["collection_id"] for e in listed] == ["space_coffee"] and listed[0]["version"] == clf.version
    assert set(listed[0]["metrics"]) >= {"precision", "recall", "f1", "roc_auc", "n_train", "n_test"}


def test_bake_off_keeps_the_best_and_prunes_beyond_ten(tmp_path, data):
    s = settings(tmp_path)
    root = CollectionStore(s).root
    good, _, _ = train_collection(root, "space_coffee", examples(data), "mobilenet", s)
    # an inverted classifier, stored properly (valid sha256): it must rank last and be deleted first
    bad = replace(good, version=good.version[:-7] + "000001Z", coef=-good.coef, intercept=-good.intercept)
    assert bad.version < good.version
    save_classifier(root, bad)
    for _ in range(9):  # 11 versions: one beyond ten
        time.sleep(0.002)
        clf, ranked, _ = train_collection(root, "space_coffee", examples(data), "mobilenet", s)
    assert len(ranked) == 11 and [r.kept for r in ranked] == [True] * 10 + [False]
    assert ranked[-1].version == bad.version and ranked[-1].metrics["precision"] < 0.5
    kept = sorted(p.stem for p in (root / "space_coffee").glob("*.json"))
    assert len(kept) == 10 and bad.version not in kept and good.version in kept and clf.version in kept
    time.sleep(0.002)
    clf, ranked, _ = train_collection(root, "space_coffee", examples(data), "mobilenet", s)  # ties: the oldest goes
    kept = sorted(p.stem for p in (root / "space_coffee").glob("*.json"))
    assert len(kept) == 10 and good.version not in kept and clf.version in kept and ranked[-1].version == good.version
    precisions = [r.metrics["precision"] for r in ranked]
    assert precisions == sorted(precisions, reverse=True)
    best = json.loads((root / BEST_MODELS).read_text())["space_coffee"]
    assert best["version"] == ranked[0].version and best["metrics"]["precision"] == max(precisions)
    assert best["embedding_model"] == "mobilenet" and best["dim"] == 1024


def test_tampered_and_dim_mismatched_files_are_refused(tmp_path, data):
    s = settings(tmp_path)
    root = CollectionStore(s).root
    clf, _, _ = train_collection(root, "space_coffee", examples(data), "mobilenet", s)
    path = version_path(root, "space_coffee", clf.version)
    doc = json.loads(path.read_text())
    doc["coef"][3] += 0.5  # one coefficient edited by hand
    path.write_text(json.dumps(doc))
    with pytest.raises(ClassifierError, match="sha256 mismatch"):
        load_classifier(path, s)
    with pytest.raises(ClassifierError, match="sha256 mismatch"):
        CollectionStore(s).get("space_coffee")
    # a 512-d classifier claiming to be MobileNet (sha256 valid): refused for its width
    narrow = replace(clf, version=clf.version[:-7] + "000002Z", dim=512, coef=clf.coef[:512])
    narrow_path = save_classifier(root, narrow)
    with pytest.raises(ClassifierError, match=r"512-d mobilenet embeddings, but mobilenet here gives 1024-d"):
        load_classifier(narrow_path, s)
    doc = json.loads(narrow_path.read_text())
    doc["coef"] = doc["coef"][:100]
    narrow_path.write_text(json.dumps(doc))
    with pytest.raises(ClassifierError, match="coef has 100 numbers but dim is 512"):
        load_classifier(narrow_path, s)
    doc["coef"] = [float("nan")] * 512
    narrow_path.write_text(json.dumps(doc))
    with pytest.raises(ClassifierError, match="finite"):
        load_classifier(narrow_path, s)


def test_best_models_changes_are_picked_up_without_a_new_store(tmp_path, data):
    s = settings(tmp_path)
    root = CollectionStore(s).root
    store = CollectionStore(s)
    assert store.get("space_coffee") is None and store.list() == []
    first, _, _ = train_collection(root, "space_coffee", examples(data), "mobilenet", s)
    assert store.get("space_coffee").version == first.version  # appeared
    second = replace(first, version=first.version[:-7] + "999999Z", threshold=0.9)
    save_classifier(root, second)
    best = json.loads((root / BEST_MODELS).read_text())
    best["space_coffee"] = {**best["space_coffee"], "version": second.version, "threshold": 0.9}
    (root / BEST_MODELS).write_text(json.dumps(best))
    got = store.get("space_coffee")
    assert got.version == second.version and got.threshold == 0.9
    assert store.list()[0]["threshold"] == 0.9
    os.remove(root / BEST_MODELS)
    assert store.get("space_coffee") is None


def test_one_class_and_too_few_examples_are_refused_clearly(tmp_path, data):
    s = settings(tmp_path)
    root = CollectionStore(s).root
    positives = [e for e in examples(data) if e.label == 1]
    with pytest.raises(TrainError, match=rf"only one class \({len(positives)} positive, 0 negative\).*at least {MIN_PER_CLASS}"):
        train_collection(root, "only_yes", positives, "mobilenet", s)
    few = positives[:3] + [e for e in examples(data) if e.label == 0][:20]
    with pytest.raises(TrainError, match=rf"too few examples \(3 positive, 20 negative\); the minimum is {MIN_PER_CLASS} of each class"):
        train_collection(root, "few", few, "mobilenet", s)
    with pytest.raises(TrainError, match="gives 1024-d"):
        train_collection(root, "wrong", [replace(e, embedding=e.embedding[:512]) for e in examples(data)], "mobilenet", s)
    assert not root.exists() or not any(root.iterdir())
