"""The classify task and GET /v1/collections over real HTTP, with a classifier trained on real MobileNet
embeddings of skimage photos (app.collections.train) and crops it never saw."""

from __future__ import annotations

import base64
import json
import shutil

import httpx
import pytest

from app.collections.train import train_collection
from tests.helpers import SHARED_WEIGHTS, encode, photo
from tests.unit.test_collections import crop, data, examples  # noqa: F401 - `data` is a fixture used here

MOBILENET = SHARED_WEIGHTS / "imagenet_mobilenet_tflite"


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, data):  # noqa: F811 - the imported fixture
    if not MOBILENET.is_dir():
        pytest.skip(f"real MobileNet weights not available: {MOBILENET} is missing")
    root = tmp_path_factory.mktemp("classify-models")
    shutil.copytree(MOBILENET, root / "mobilenet")
    train_collection(root / "classifiers", "space_coffee", examples(data), "mobilenet")
    return root


@pytest.fixture
def server(live_factory, model_dir):
    return live_factory(model_dir=model_dir)


def classify(server, rgb, collection="space_coffee", **params):
    task = {"operation_id": "c", "type": "classify", "params": {"collection_id": collection, **params}}
    r = httpx.post(f"{server.url}/v1/tasks", json={"image": {"base64": b64(encode(rgb))}, "tasks": [task]}, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()["results"]["c"]


def test_unseen_crops_of_the_collection_are_in_and_others_out(server):
    for name in ("astronaut", "coffee"):
        res = classify(server, crop(photo(name), 0.18, "c"))
        assert res["status"] == "success" and res["data"]["is_in_collection"] is True, (name, res)
        assert res["data"]["probability"] >= res["data"]["threshold"] and res["data"]["embedding_model"] == "mobilenet"
    for name in ("chelsea", "rocket", "coins"):
        res = classify(server, crop(photo(name), 0.18, "c"))
        assert res["status"] == "success" and res["data"]["is_in_collection"] is False, (name, res)


def test_unknown_collection_is_skipped_and_collections_are_listed(server, model_dir):
    res = classify(server, photo("coffee"), collection="no_such_collection")
    assert res["status"] == "skipped" and "no_such_collection" in res["error_message"]
    body = httpx.get(f"{server.url}/v1/collections", timeout=30).json()
    [entry] = body["collections"]
    assert entry["collection_id"] == "space_coffee" and entry["embedding_model"] == "mobilenet" and entry["dim"] == 1024
    assert 0 <= entry["metrics"]["precision"] <= 1 and body["classifier_dir"].endswith("classifiers")


def test_a_tampered_classifier_fails_only_its_task(server, model_dir):
    root = model_dir / "classifiers"
    best = json.loads((root / "best_models.json").read_text())
    path = root / "space_coffee" / f"{best['space_coffee']['version']}.json"
    original = path.read_text()
    doc = json.loads(original)
    doc["coef"][0] += 1.0
    path.write_text(json.dumps(doc))
    (root / "best_models.json").write_text(json.dumps(best, indent=1))  # a changed file: the store reloads
    try:
        task = [{"operation_id": "c", "type": "classify", "params": {"collection_id": "space_coffee"}},
                {"operation_id": "t", "type": "embed_mobilenet"}]
        r = httpx.post(f"{server.url}/v1/tasks", json={"image": {"base64": b64(encode(photo("coffee")))}, "tasks": task},
                       timeout=60)
        res = r.json()["results"]
        assert res["c"]["status"] == "error" and "sha256" in res["c"]["error_message"], res["c"]
        assert res["t"]["status"] == "success"
    finally:
        path.write_text(original)
        (root / "best_models.json").write_text(json.dumps(best))


def test_a_malformed_best_models_file_is_a_503_in_words(client_factory, tmp_path):
    """An entry without its dimension, or a version that is not a timestamp (a path), is refused: 503 with the
    reason for the listing, and the classify task is an error of its own."""
    root = tmp_path / "models" / "classifiers"
    root.mkdir(parents=True)
    c = client_factory(model_dir=tmp_path / "models")
    for entry in ({"version": "20261129T100000000000Z", "embedding_model": "mobilenet", "threshold": 0.5, "metrics": {}},
                  {"version": "../../etc/passwd", "embedding_model": "mobilenet", "dim": 1024, "threshold": 0.5,
                   "metrics": {}}):
        (root / "best_models.json").write_text(json.dumps({"x": entry}))
        r = c.get("/v1/collections")
        assert r.status_code == 503 and "best_models.json" in r.json()["error"]["message"], r.text
        res = c.post("/v1/tasks", json={"image": {"base64": b64(encode(photo("coffee")))},
                                        "tasks": [{"operation_id": "c", "type": "classify",
                                                   "params": {"collection_id": "x"}}]}).json()["results"]["c"]
        assert res["status"] == "error" and "cannot be used" in res["error_message"]
