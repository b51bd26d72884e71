"""POST /v1/tasks and /v1/tasks/batch: regions once per request, real models, real HTTP."""

from __future__ import annotations

import base64
import io
import json
import shutil

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.factories.models import write_tiny_clip
from tests.helpers import SHARED_WEIGHTS, encode, photo

REAL = {"yunet": "face_yunet", "person": "person_deeplabv3_tflite", "tags": "imagenet_mobilenet_tflite",
        "mobilenet": "imagenet_mobilenet_tflite"}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    missing = [src for src in REAL.values() if not (SHARED_WEIGHTS / src).is_dir()]
    if missing:
        pytest.skip(f"real weights not available: {', '.join(sorted(set(missing)))} missing from {SHARED_WEIGHTS}")
    root = tmp_path_factory.mktemp("task-models")
    for sub, src in REAL.items():
        shutil.copytree(SHARED_WEIGHTS / src, root / sub)
    write_tiny_clip(root / "clip" / "openai__clip-vit-base-patch32")
    return root


@pytest.fixture
def server(live_factory, models):
    return live_factory(model_dir=models)


def post(server, path, payload, **kw):
    return httpx.post(f"{server.url}{path}", json=payload, timeout=120, **kw)


def inside(inner, outer, slack=0):
    return (inner[0] >= outer[0] - slack and inner[1] >= outer[1] - slack
            and inner[2] <= outer[2] + slack and inner[3] <= outer[3] + slack)


def test_person_face_embedding_and_tags_of_a_portrait(server):
    """astronaut: the person box holds her face box; the face's CLIP vector and crop; top-5 tags of the whole image;
    a whole-image analysis beside them, all from one request."""
    tasks = [
        {"operation_id": "person", "type": "detect_bounding_box"},
        {"operation_id": "face", "type": "detect_bounding_box", "params": {"target": "prominent_face"}},
        {"operation_id": "face_vec", "type": "embed_clip", "params": {"target": "prominent_face"}},
        {"operation_id": "tags", "type": "tag_imagenet", "params": {"top": 5, "minconf": 0.01}},
        {"operation_id": "sharp", "type": "blur"},
    ]
    r = post(server, "/v1/tasks", {"image": {"base64": b64(encode(photo("astronaut"))), "image_id": "a"},
                                   "tasks": tasks})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["image_id"] == "a" and (body["width_px"], body["height_px"]) == (512, 512)
    res = body["results"]
    assert set(res) == {t["operation_id"] for t in tasks}
    assert all(v["status"] == "success" for v in res.values()), res
    person, face = res["person"]["data"]["box"], res["face"]["data"]["box"]
    assert inside(face, person, slack=4), (face, person)
    assert (face[2] - face[0]) * (face[3] - face[1]) < 0.5 * (person[2] - person[0]) * (person[3] - person[1])
    vec = np.array(res["face_vec"]["data"]["vector"])
    assert abs(np.linalg.norm(vec) - 1) < 1e-3 and res["face_vec"]["cropped_image_bbox"] == face
    png = Image.open(io.BytesIO(base64.b64decode(res["face_vec"]["cropped_image_base64"])))
    assert png.format == "PNG" and abs(png.width / png.height - (face[2] - face[0]) / (face[3] - face[1])) < 0.1
    labels = res["tags"]["data"]["labels"]
    assert 1 <= len(labels) <= 5 and all(x["confidence"] >= 0.01 for x in labels)
    assert [x["confidence"] for x in labels] == sorted((x["confidence"] for x in labels), reverse=True)
    assert res["tags"]["cropped_image_base64"] is None  # whole image: no crop
    assert res["sharp"]["data"]["status"] == "ok" and res["sharp"]["data"]["laplacian_variance"] > 0


def test_no_person_falls_back_and_no_face_is_skipped(server):
    tasks = [{"operation_id": "person", "type": "detect_bounding_box"},
             {"operation_id": "vec", "type": "embed_mobilenet", "params": {"target": "prominent_person"}},
             {"operation_id": "face", "type": "embed_mobilenet", "params": {"target": "prominent_face"}}]
    for name in ("chelsea", "coffee", "rocket"):
        rgb = photo(name)
        body = post(server, "/v1/tasks", {"image": {"base64": b64(encode(rgb))}, "tasks": tasks}).json()
        res = body["results"]
        assert res["person"]["status"] == "skipped" and "No person" in res["person"]["error_message"], (name, res)
        assert res["vec"]["status"] == "success" and res["vec"]["fallback"] is True
        assert res["vec"]["cropped_image_bbox"] == [0, 0, rgb.shape[1], rgb.shape[0]]
        assert res["face"]["status"] == "skipped" and "No face" in res["face"]["error_message"]


def test_each_region_is_detected_once_per_request(models, client_factory):
    """Eight tasks on the person and its face: the person model and the face detector run once each."""
    c = client_factory(model_dir=models)
    registry = c.app.state.registry
    calls: list[str] = []
    real_run = registry.run

    async def counting_run(name, images):
        calls.append(name)
        return await real_run(name, images)

    registry.run = counting_run
    tasks = [{"operation_id": f"{kind}-{t}", "type": kind, "params": {"target": t}}
             for kind in ("embed_clip", "embed_mobilenet", "tag_imagenet") for t in ("prominent_person", "prominent_face")]
    tasks += [{"operation_id": "box", "type": "detect_bounding_box"},
              {"operation_id": "fbox", "type": "detect_bounding_box", "params": {"target": "prominent_face"}}]
    r = c.post("/v1/tasks", json={"image": {"base64": b64(encode(photo("astronaut")))}, "tasks": tasks,
                                  "return_crops": False})
    assert r.status_code == 200 and all(v["status"] == "success" for v in r.json()["results"].values()), r.text
    assert sorted(calls) == ["clip", "faces", "mobilenet", "person", "tags"]
    assert all(v["cropped_image_base64"] is None for v in r.json()["results"].values())


def test_batch_isolates_images_and_models(server):
    """One unreadable image and one missing model (DINOv2) fail only their own parts."""
    tasks = [{"operation_id": "tags", "type": "tag_imagenet", "params": {"top": 3}},
             {"operation_id": "dino", "type": "embed_dinov2"}]
    images = [{"base64": b64(encode(photo("coffee"))), "image_id": "coffee"},
              {"base64": b64(b"\xff\xd8\xff not a jpeg"), "image_id": "broken"},
              {"base64": b64(encode(photo("chelsea"))), "image_id": "cat"}]
    r = post(server, "/v1/tasks/batch", {"images": images, "tasks": tasks})
    assert r.status_code == 200, r.text
    out = r.json()["results"]
    assert [x["image_id"] for x in out] == ["coffee", "broken", "cat"]
    assert out[1]["error"]["type"] in ("invalid_image", "unsupported_media_type") and out[1]["results"] == {}
    for x in (out[0], out[2]):
        assert x["error"] is None and x["results"]["tags"]["status"] == "success"
        assert x["results"]["dino"]["status"] == "error" and "dinov2" in x["results"]["dino"]["error_message"]
    cat = [t["label"].lower() for t in out[2]["results"]["tags"]["data"]["labels"]]
    assert any("cat" in t for t in cat), cat


def test_multipart_with_tasks_json(server):
    files = {"file": ("astro.jpg", encode(photo("astronaut")), "image/jpeg")}
    tasks = [{"operation_id": "p", "type": "detect_bounding_box"}]
    r = httpx.post(f"{server.url}/v1/tasks", files=files,
                   data={"tasks_json": json.dumps(tasks), "return_crops": "false"}, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["image_id"] == "astro.jpg" and r.json()["results"]["p"]["status"] == "success"
    bad = httpx.post(f"{server.url}/v1/tasks", files=files, data={"tasks_json": "[{\"type\": \"nope\"}]"}, timeout=60)
    assert bad.status_code == 422 and "tasks_json" in bad.json()["error"]["message"]


@pytest.mark.parametrize("tasks, words", [
    ([{"operation_id": "x", "type": "make_coffee"}], "detect_bounding_box"),  # unknown type: the allowed ones listed
    ([{"operation_id": "x", "type": "blur", "params": {"target": "prominent_face"}}], "whole_image"),
    ([{"operation_id": "x", "type": "tag_imagenet", "params": {"top": 0}}], "top"),
    ([{"operation_id": "x", "type": "tag_imagenet", "params": {"minconf": 1.5}}], "minconf"),
    ([{"operation_id": "x", "type": "embed_clip", "params": {"colour": "red"}}], "colour"),
    ([{"operation_id": "x", "type": "blur"}, {"operation_id": "x", "type": "exposure"}], "more than once"),
    ([{"operation_id": f"t{i}", "type": "blur"} for i in range(3)], "MAX_TASKS"),
    ([], "tasks"),
])
def test_bad_task_lists_are_422(client_factory, tasks, words):
    c = client_factory(max_tasks=2)
    r = c.post("/v1/tasks", json={"image": {"base64": b64(encode(photo("coffee")))}, "tasks": tasks})
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["type"] == "validation_error" and words in json.dumps(err), err


def test_operations_list_the_task_types(server):
    body = httpx.get(f"{server.url}/v1/operations", timeout=30).json()
    kinds = {t["type"]: t for t in body["tasks"]}
    assert {"detect_bounding_box", "embed_clip", "embed_dinov2", "embed_mobilenet", "tag_imagenet", "blur",
            "quality", "faces", "emotion"} <= set(kinds)
    tag = kinds["tag_imagenet"]
    assert tag["model"] == "tags" and tag["default_target"] == "whole_image" and tag["available"]
    assert tag["params"]["top"]["default"] == 1 and tag["params"]["top"]["maximum"] == 1000
    assert tag["params"]["minconf"]["default"] == 0.0 and tag["params"]["minconf"]["maximum"] == 1.0
    assert kinds["detect_bounding_box"]["targets"] == ["prominent_person", "prominent_face"]
    assert kinds["blur"]["targets"] == ["whole_image"] and kinds["blur"]["ready"]
    assert not kinds["embed_dinov2"]["available"]  # no DINOv2 in this MODEL_DIR
