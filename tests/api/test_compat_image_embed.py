"""The image_embed drop-in (app.api.compat.image_embed) over real HTTP: its README's examples, field by field,
on real photos served by a local image host, with the real person and face models and a tiny CLIP; per-task
outcomes (skipped, refused, errors isolated); its documented errors in FastAPI's shape; auth and rate limits.
classify and describe_image run end to end on a classifier trained on real MobileNet embeddings and a tiny BLIP."""

from __future__ import annotations

import base64
import io
import json
import shutil

import httpx
import numpy as np
import pytest
from PIL import Image

from app.api.compat.image_embed import clip_is_b32
from app.collections.train import Example, train_collection
from app.core.config import Settings
from app.main import create_app
from tests.api.conftest import make_settings
from tests.factories.models import write_tiny_clip
from tests.helpers import SHARED_WEIGHTS, encode, photo
from tests.servers import ImageServer, LiveServer

REAL = {"yunet": "face_yunet", "person": "person_deeplabv3_tflite"}
MOBILENET = SHARED_WEIGHTS / "imagenet_mobilenet_tflite"
B32, L14 = "openai/clip-vit-base-patch32", "openai/clip-vit-large-patch14"
RESULT_FIELDS = {"status", "data", "cropped_image_bbox", "cropped_image_base64", "error_message"}
FAILED_IMAGE = "Failed to download or process base image:"


def require_real_weights() -> None:
    missing = [src for src in REAL.values() if not (SHARED_WEIGHTS / src).is_dir()]
    if missing:
        pytest.skip(f"real weights not available: {', '.join(sorted(missing))} missing from {SHARED_WEIGHTS}")


def copy_real(root) -> None:
    for sub, src in REAL.items():
        shutil.copytree(SHARED_WEIGHTS / src, root / sub)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Real person + face models; a tiny CLIP under both the ViT-B/32 and the ViT-L/14 names."""
    require_real_weights()
    root = tmp_path_factory.mktemp("image-embed-models")
    copy_real(root)
    for name in (B32, L14):
        write_tiny_clip(root / "clip" / name.replace("/", "__"))
    return root


@pytest.fixture(scope="module")
def images():
    server = ImageServer()
    server.bytes("/astronaut.jpg", encode(photo("astronaut")), "image/jpeg")
    server.bytes("/chelsea.jpg", encode(photo("chelsea")), "image/jpeg")
    server.bytes("/coffee.png", encode(photo("coffee"), "PNG"), "image/png")
    server.bytes("/notes.txt", b"these are not the pixels you are looking for\n" * 20, "text/plain")
    server.status("/gone.jpg", 404)
    yield server
    server.close()


def live(**overrides) -> LiveServer:
    return LiveServer(create_app(make_settings(**overrides)))


@pytest.fixture(scope="module")
def server(models):
    """The app over real HTTP, allowed to fetch from the local image host."""
    s = live(model_dir=models, allow_private_urls=True)
    yield s
    s.close()


def post(server, payload, path="/analyze_image/", **kw) -> httpx.Response:
    return httpx.post(f"{server.url}{path}", json=payload, timeout=120, **kw)


def upload(server, data: bytes | None, tasks_json: str | None, filename="portrait.jpg", **kw) -> httpx.Response:
    files = {"image_file": (filename, data, "image/jpeg")} if data is not None else None
    form = {"tasks_json": tasks_json} if tasks_json is not None else None
    if files is None:  # a multipart body all the same (httpx sends urlencoded without files)
        files = {"other": ("x.bin", b"x", "application/octet-stream")}
    return httpx.post(f"{server.url}/analyze_image_upload/", files=files, data=form, timeout=120, **kw)


def task(op_id: str, kind: str, **params) -> dict:
    return {"operation_id": op_id, "type": kind, "params": params}


def assert_box(box, width: int, height: int) -> None:
    assert isinstance(box, list) and len(box) == 4 and all(type(v) is int for v in box), box
    x0, y0, x1, y1 = box
    assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height, box


def inside(inner, outer, slack: int = 0) -> bool:
    return (inner[0] >= outer[0] - slack and inner[1] >= outer[1] - slack
            and inner[2] <= outer[2] + slack and inner[3] <= outer[3] + slack)


def assert_unit_vector(data, dim: int | None = None) -> None:
    assert isinstance(data, list) and data and all(type(v) is float for v in data), type(data)
    assert dim is None or len(data) == dim
    assert abs(float(np.linalg.norm(np.array(data))) - 1.0) < 1e-3


def assert_fastapi_error(r: httpx.Response, status: int, error_type: str):
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"detail", "error"}, body
    assert body["error"]["type"] == error_type and isinstance(body["error"]["message"], str), body
    return body["detail"]


# --- 1. the README example ----------------------------------------------------------------------------------------
README_TASKS = [
    task("whole_image_embedding", "embed_clip_vit_b_32", target="whole_image"),
    task("person_bbox", "detect_bounding_box", target="prominent_person"),
    task("face_bbox_from_person", "detect_bounding_box", target="prominent_face", face_context="prominent_person"),
    task("face_embedding", "embed_clip_vit_b_32", target="prominent_face", face_context="prominent_person"),
]


def test_readme_example_field_by_field(server, images):
    url = images.url("/astronaut.jpg")
    r = post(server, {"image_url": url, "tasks": README_TASKS})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"image_url", "results"}
    assert body["image_url"] == url
    res = body["results"]
    assert list(res) == [t["operation_id"] for t in README_TASKS]
    for op_id, result in res.items():
        assert RESULT_FIELDS <= set(result), (op_id, result)
        assert result["status"] == "success" and result["error_message"] is None, (op_id, result)

    whole = res["whole_image_embedding"]
    assert_unit_vector(whole["data"], dim=512)  # the tiny CLIP projects to 512, as ViT-B/32 does
    assert whole["cropped_image_bbox"] is None and whole["cropped_image_base64"] is None

    person = res["person_bbox"]["data"]
    assert_box(person, 512, 512)
    assert (person[2] - person[0]) * (person[3] - person[1]) > 0.2 * 512 * 512  # the astronaut fills much of it
    face = res["face_bbox_from_person"]["data"]
    assert_box(face, 512, 512)
    assert inside(face, person, slack=4), (face, person)
    assert (face[2] - face[0]) * (face[3] - face[1]) < 0.5 * (person[2] - person[0]) * (person[3] - person[1])

    face_vec = res["face_embedding"]
    assert_unit_vector(face_vec["data"], dim=512)
    assert face_vec["data"] != whole["data"]  # the face crop, not the whole image
    assert face_vec["cropped_image_bbox"] == face
    png = Image.open(io.BytesIO(base64.b64decode(face_vec["cropped_image_base64"], validate=True)))
    assert png.format == "PNG"
    fw, fh = face[2] - face[0], face[3] - face[1]
    assert abs(png.width / png.height - fw / fh) < 0.1 and png.width <= fw + 1


# --- 2. the upload example ------------------------------------------------------------------------------------------
def test_upload_readme_example(server, images):
    tasks = [task("face_bbox_from_upload", "detect_bounding_box", target="prominent_face")]
    r = upload(server, encode(photo("astronaut")), json.dumps(tasks))
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"image_url", "results"} and body["image_url"] == "uploaded:portrait.jpg"
    [(op_id, res)] = body["results"].items()
    assert op_id == "face_bbox_from_upload" and RESULT_FIELDS <= set(res)
    assert res["status"] == "success" and res["error_message"] is None, res
    assert_box(res["data"], 512, 512)
    # the same bytes by URL give the same box
    by_url = post(server, {"image_url": images.url("/astronaut.jpg"), "tasks": tasks}).json()
    assert by_url["results"]["face_bbox_from_upload"]["data"] == res["data"]


# --- 3. GET /available_operations/ ---------------------------------------------------------------------------------
def test_available_operations(server):
    r = httpx.get(f"{server.url}/available_operations/", timeout=30)
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"operations"}
    ops = body["operations"]
    for name, info in ops.items():
        assert set(info) == {"description", "allowed_targets", "default_target"}, (name, info)
        assert isinstance(info["description"], str) and info["description"]
        assert info["default_target"] in info["allowed_targets"], (name, info)
    assert ops["detect_bounding_box"]["allowed_targets"] == ["prominent_person", "prominent_face"]
    assert ops["detect_bounding_box"]["default_target"] == "prominent_person"
    for name in ("embed_clip_vit_b_32", "embed_dino_v2", "classify", "describe_image"):
        assert ops[name]["allowed_targets"] == ["whole_image", "prominent_person", "prominent_face"], name
        assert ops[name]["default_target"] == "whole_image", name
    for absent in ("embed_auraface", "embed_dino_v3", "embed_dino_v3_patch"):
        assert absent not in ops
    for own in ("embed_clip", "describe", "blur"):  # Loupe's own types too, marked as such
        assert ops[own]["description"].startswith("Loupe: "), (own, ops[own])
    assert not ops["describe_image"]["description"].startswith("Loupe: ")


# --- 4. per-task behaviour ------------------------------------------------------------------------------------------
def test_each_task_has_its_own_outcome(server, images):
    tasks = [
        task("person", "detect_bounding_box"),
        task("unknown", "nope"),
        task("aura", "embed_auraface", target="prominent_face"),
        task("dino3", "embed_dino_v3"),
        task("bad_target", "detect_bounding_box", target="whole_image"),
        task("no_collection", "classify", target="whole_image"),
        task("dup", "nope"),
        task("dino2", "embed_dino_v2"),  # no DINOv2 in this MODEL_DIR: its own error
        task("vec", "embed_clip_vit_b_32"),  # target defaults to whole_image
        task("bad_context", "detect_bounding_box", target="prominent_face", face_context="prominent_face"),
        task("a free-form id / ü", "blur"),  # image_embed's ids are any string; Loupe's own types answer too
        task("dup", "detect_bounding_box", target="prominent_face"),  # a repeated id: the last task wins
    ]
    r = post(server, {"image_url": images.url("/astronaut.jpg"), "tasks": tasks})
    assert r.status_code == 200, r.text
    res = r.json()["results"]
    assert list(res) == ["person", "unknown", "aura", "dino3", "bad_target", "no_collection", "dup", "dino2", "vec",
                         "bad_context", "a free-form id / ü"]
    assert all(RESULT_FIELDS <= set(v) for v in res.values())

    def skipped(op_id: str) -> str:
        assert res[op_id]["status"] == "skipped" and res[op_id]["data"] is None, (op_id, res[op_id])
        return res[op_id]["error_message"]

    assert skipped("unknown") == "Unsupported operation type: 'nope'"
    aura, dino3 = skipped("aura"), skipped("dino3")
    assert aura.startswith("Unsupported operation type: 'embed_auraface'") and "AuraFace" in aura
    assert dino3.startswith("Unsupported operation type: 'embed_dino_v3'") and "DINOv3" in dino3
    assert "Loupe does not have" in aura and "Loupe does not have" in dino3
    assert skipped("bad_target") == ("Unsupported target 'whole_image' for 'detect_bounding_box'. "
                                     "Allowed: ['prominent_person', 'prominent_face']")
    assert skipped("no_collection") == "'collection_id' param is required for 'classify' operation."
    assert skipped("bad_context").startswith("Invalid params for 'detect_bounding_box': face_context")
    blur = res["a free-form id / ü"]
    assert blur["status"] == "success" and blur["data"]["laplacian_variance"] > 0, blur

    assert res["dino2"]["status"] == "error" and "dinov2" in res["dino2"]["error_message"].lower(), res["dino2"]
    assert res["dino2"]["data"] is None

    assert res["person"]["status"] == "success" and res["vec"]["status"] == "success"
    assert_box(res["person"]["data"], 512, 512)
    assert_unit_vector(res["vec"]["data"], dim=512)
    assert res["vec"]["cropped_image_bbox"] is None
    dup = res["dup"]  # the face box, not the unknown type's skip
    assert dup["status"] == "success" and dup["error_message"] is None
    assert_box(dup["data"], 512, 512)
    assert inside(dup["data"], res["person"]["data"], slack=4)


def test_no_person_is_a_null_box_and_no_face_is_skipped(server, images):
    tasks = [task("person", "detect_bounding_box", target="prominent_person"),
             task("face", "detect_bounding_box", target="prominent_face"),
             task("face_vec", "embed_clip_vit_b_32", target="prominent_face"),
             task("whole", "embed_clip_vit_b_32", target="whole_image")]
    r = post(server, {"image_url": images.url("/chelsea.jpg"), "tasks": tasks})
    assert r.status_code == 200, r.text
    res = r.json()["results"]
    assert list(res) == ["person", "face", "face_vec", "whole"]
    person = res["person"]
    assert person["status"] == "success" and person["data"] is None and person["error_message"] is None, person
    assert person["cropped_image_bbox"] is None and person["cropped_image_base64"] is None
    for op_id in ("face", "face_vec"):
        assert res[op_id]["status"] == "skipped" and res[op_id]["data"] is None, res[op_id]
        assert "face" in res[op_id]["error_message"].lower()
    assert res["whole"]["status"] == "success"
    assert_unit_vector(res["whole"]["data"], dim=512)


def test_ssrf_guard_applies_without_allow_private_urls(live_factory, models, images):
    s = live_factory(model_dir=models)  # ALLOW_PRIVATE_URLS off (the default)
    path = "/guarded-astronaut.jpg"
    url = images.bytes(path, encode(photo("astronaut")))
    r = post(s, {"image_url": url, "tasks": README_TASKS[:2]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["image_url"] == url and list(body["results"]) == ["whole_image_embedding", "person_bbox"]
    for res in body["results"].values():
        assert res["status"] == "error" and res["data"] is None, res
        assert res["error_message"].startswith(FAILED_IMAGE) and "not allowed" in res["error_message"], res
    assert path not in images.hits  # refused before any connection


# --- 5. embed_clip_vit_b_32 only for a ViT-B/32 --------------------------------------------------------------------
def test_clip_b32_is_refused_for_another_clip_model(live_factory, models, images):
    s = live_factory(model_dir=models, clip_model_name=L14, allow_private_urls=True)
    tasks = [task("b32", "embed_clip_vit_b_32"), task("own", "embed_clip", target="prominent_face"),
             task("box", "detect_bounding_box")]
    r = post(s, {"image_url": images.url("/astronaut.jpg"), "tasks": tasks})
    assert r.status_code == 200, r.text
    res = r.json()["results"]
    b32 = res["b32"]
    assert b32["status"] == "error" and b32["data"] is None, b32
    assert "CLIP_MODEL_NAME" in b32["error_message"] and L14 in b32["error_message"]
    assert "embed_clip" in b32["error_message"]
    own = res["own"]  # Loupe's own type answers with Loupe's data
    assert own["status"] == "success", own
    assert set(own["data"]) == {"model", "dim", "vector"} and own["data"]["model"] == L14
    assert own["data"]["dim"] == len(own["data"]["vector"])
    assert_unit_vector(own["data"]["vector"])
    assert own["cropped_image_bbox"] is not None and own["cropped_image_bbox"] != [0, 0, 512, 512]
    assert res["box"]["status"] == "success"


def test_clip_b32_refusal_comes_before_any_model_loads(client_factory, tmp_path):
    """No CLIP files at all for the configured L/14: the refusal, not a missing-model error, and nothing loaded."""
    c = client_factory(model_dir=tmp_path / "empty", clip_model_name=L14)
    registry = c.app.state.registry
    calls: list[str] = []
    real_run, real_call = registry.run, registry.call

    async def counting_run(name, *a, **kw):
        calls.append(name)
        return await real_run(name, *a, **kw)

    async def counting_call(name, *a, **kw):
        calls.append(name)
        return await real_call(name, *a, **kw)

    registry.run, registry.call = counting_run, counting_call
    files = {"image_file": ("coffee.png", encode(photo("coffee"), "PNG"), "image/png")}
    r = c.post("/analyze_image_upload/", files=files,
               data={"tasks_json": json.dumps([task("b32", "embed_clip_vit_b_32")])})
    assert r.status_code == 200, r.text
    b32 = r.json()["results"]["b32"]
    assert b32["status"] == "error" and "CLIP_MODEL_NAME" in b32["error_message"], b32
    assert "not found" not in b32["error_message"]
    assert calls == []


@pytest.mark.parametrize("name, ok", [
    (B32, True), ("laion/CLIP-ViT-B-32-laion2B-s34B-b79K", True), ("/models/ViT-B/32", True),
    (L14, False), ("openai/clip-vit-base-patch16", False), ("laion/CLIP-ViT-H-14-laion2B-s32B-b79K", False),
])
def test_which_clip_names_are_b32(name, ok):
    why = clip_is_b32(Settings(_env_file=None, clip_model_name=name))
    assert (why is None) is ok, why
    if not ok:
        assert name in why and "CLIP_MODEL_NAME" in why


# --- 6. classify and describe_image end to end ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def extras(tmp_path_factory):
    """Person/face models, a `space_coffee` classifier trained on real MobileNet embeddings (astronaut and coffee
    in; four other photos out; ten copies of each) and a tiny BLIP caption model."""
    require_real_weights()
    if not MOBILENET.is_dir():
        pytest.skip(f"real MobileNet weights not available: {MOBILENET} is missing")
    from tests.factories.models import write_tiny_blip
    from tests.unit.test_collections import mobilenet_embed, training_copies

    root = tmp_path_factory.mktemp("image-embed-extras")
    copy_real(root)
    shutil.copytree(MOBILENET, root / "mobilenet")
    examples = []
    for name, label in (("astronaut", 1), ("coffee", 1), ("chelsea", 0), ("rocket", 0), ("camera", 0), ("coins", 0)):
        for i, v in enumerate(mobilenet_embed(training_copies(photo(name)))):
            examples.append(Example("space_coffee", f"{name}/{i}", v, label))
    train_collection(root / "classifiers", "space_coffee", examples, "mobilenet")
    write_tiny_blip(root / "caption")
    s = live(model_dir=root, allow_private_urls=True)
    yield s
    s.close()


def test_classify_end_to_end(extras, images):
    tasks = [task("in", "classify", collection_id="space_coffee"),
             task("person_in", "classify", collection_id="space_coffee", target="prominent_person"),
             task("unknown_collection", "classify", collection_id="no_such_collection")]
    for image, expected in (("/coffee.png", True), ("/chelsea.jpg", False)):
        r = post(extras, {"image_url": images.url(image), "tasks": tasks})
        assert r.status_code == 200, r.text
        res = r.json()["results"]
        data = res["in"]["data"]
        assert res["in"]["status"] == "success", res["in"]
        assert list(data)[:2] == ["is_in_collection", "probability"]
        assert type(data["is_in_collection"]) is bool and isinstance(data["probability"], float)
        assert 0.0 <= data["probability"] <= 1.0
        assert data["is_in_collection"] is expected, (image, data)
        assert data["is_in_collection"] is (data["probability"] >= data["threshold"])
        assert res["in"]["cropped_image_bbox"] is None
        assert res["person_in"]["status"] == "success"  # no person: Loupe's fallback to the whole image
        assert res["unknown_collection"]["status"] == "skipped"
        assert "no_such_collection" in res["unknown_collection"]["error_message"]
    astro = post(extras, {"image_url": images.url("/astronaut.jpg"), "tasks": tasks[1:2]}).json()["results"]["person_in"]
    assert astro["status"] == "success" and type(astro["data"]["is_in_collection"]) is bool
    assert_box(astro["cropped_image_bbox"], 512, 512)
    assert astro["cropped_image_bbox"] != [0, 0, 512, 512] and astro["cropped_image_base64"]


def test_describe_image_end_to_end(extras, images):
    tasks = [task("caption", "describe_image", max_length=12),
             task("face_caption", "describe_image", target="prominent_face", max_length=12),
             task("loupe_describe", "describe", max_length=12),
             task("too_short", "describe_image", max_length=1),
             task("default_length", "describe_image")]  # image_embed's default 300: capped at the decoder's positions
    r = post(extras, {"image_url": images.url("/astronaut.jpg"), "tasks": tasks})
    assert r.status_code == 200, r.text
    res = r.json()["results"]
    assert res["default_length"]["status"] == "success" and isinstance(res["default_length"]["data"], str)
    for op_id in ("caption", "face_caption", "loupe_describe"):
        assert res[op_id]["status"] == "success", res[op_id]
        assert isinstance(res[op_id]["data"], str) and len(res[op_id]["data"].split()) <= 12
    assert res["caption"]["data"] == res["loupe_describe"]["data"]  # the same model, the same region
    assert res["caption"]["cropped_image_bbox"] is None
    assert_box(res["face_caption"]["cropped_image_bbox"], 512, 512)
    bad = res["too_short"]  # invalid params are that task's skip, not the request's 422
    assert bad["status"] == "skipped" and bad["error_message"].startswith("Invalid params for 'describe_image': max_length")


# --- 7. errors -------------------------------------------------------------------------------------------------------
def test_invalid_bodies_are_fastapi_422s(server):
    detail = assert_fastapi_error(post(server, {"image_url": "foo", "tasks": []}), 422, "validation_error")
    assert isinstance(detail, list) and detail and detail[0]["loc"] == ["body", "image_url"], detail
    assert {"loc", "msg", "type"} <= set(detail[0])
    detail = assert_fastapi_error(post(server, {"image_url": "https://example.com/a.jpg"}), 422, "validation_error")
    assert isinstance(detail, list) and detail[0]["loc"] == ["body", "tasks"], detail
    detail = assert_fastapi_error(post(server, {"image_url": "https://example.com/a.jpg", "tasks": [{"type": "x"}]}),
                                  422, "validation_error")
    assert detail[0]["loc"][:2] == ["body", "tasks"] and "operation_id" in detail[0]["loc"], detail


@pytest.mark.parametrize("path, words", [("/gone.jpg", "404"), ("/notes.txt", "not an image")])
def test_an_unreadable_image_is_200_with_every_task_error(server, images, path, words):
    tasks = [*README_TASKS, task("unknown", "nope")]
    url = images.url(path)
    r = post(server, {"image_url": url, "tasks": tasks})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["image_url"] == url and list(body["results"]) == [t["operation_id"] for t in tasks]
    for res in body["results"].values():
        assert RESULT_FIELDS <= set(res)
        assert res["status"] == "error" and res["data"] is None and res["cropped_image_bbox"] is None, res
        assert res["error_message"].startswith(FAILED_IMAGE) and words in res["error_message"], res


def test_upload_errors(server):
    jpeg = encode(photo("coffee"))
    detail = assert_fastapi_error(upload(server, jpeg, "nope"), 400, "bad_request")
    assert isinstance(detail, str) and detail.startswith("Invalid tasks JSON format or structure: "), detail
    detail = assert_fastapi_error(upload(server, jpeg, json.dumps([{"type": "detect_bounding_box"}])), 400, "bad_request")
    assert detail.startswith("Invalid tasks JSON format or structure: ") and "operation_id" in detail
    detail = assert_fastapi_error(upload(server, None, json.dumps([task("a", "detect_bounding_box")])),
                                  422, "validation_error")
    assert isinstance(detail, list) and [d["loc"] for d in detail] == [["body", "image_file"]], detail
    detail = assert_fastapi_error(upload(server, jpeg, None), 422, "validation_error")
    assert [d["loc"] for d in detail] == [["body", "tasks_json"]], detail
    as_text = httpx.post(f"{server.url}/analyze_image_upload/", timeout=30,
                         data={"image_file": "not a file", "tasks_json": json.dumps([task("a", "detect_bounding_box")])})
    detail = assert_fastapi_error(as_text, 422, "validation_error")
    assert [d["loc"] for d in detail] == [["body", "image_file"]], detail
    bad = upload(server, b"\xff\xd8\xff not a jpeg", json.dumps([task("a", "detect_bounding_box")]), filename="x.jpg")
    assert bad.status_code == 200, bad.text
    res = bad.json()["results"]["a"]
    assert bad.json()["image_url"] == "uploaded:x.jpg"
    assert res["status"] == "error" and res["error_message"].startswith(FAILED_IMAGE), res


def test_more_runnable_tasks_than_max_tasks_is_422(live_factory, models, images):
    s = live_factory(model_dir=models, max_tasks=2, allow_private_urls=True)
    url = images.url("/astronaut.jpg")
    three = [task(f"b{i}", "detect_bounding_box") for i in range(3)]
    detail = assert_fastapi_error(post(s, {"image_url": url, "tasks": three}), 422, "validation_error")
    assert isinstance(detail, list) and detail[0]["loc"] == ["body", "tasks"], detail
    assert "MAX_TASKS" in detail[0]["msg"]
    r = upload(s, encode(photo("astronaut")), json.dumps(three))
    assert_fastapi_error(r, 422, "validation_error")
    # tasks skipped before they run (unknown types) do not count against the limit
    ok = post(s, {"image_url": url, "tasks": [*three[:2], task("x", "nope")]})
    assert ok.status_code == 200 and [v["status"] for v in ok.json()["results"].values()] == ["success", "success",
                                                                                                "skipped"], ok.text


# --- 8. auth and rate limits -----------------------------------------------------------------------------------------
def test_api_keys_apply(live_factory, models, images):
    s = live_factory(model_dir=models, api_keys="k1", allow_private_urls=True)
    payload = {"image_url": images.url("/astronaut.jpg"), "tasks": [task("p", "detect_bounding_box")]}
    detail = assert_fastapi_error(post(s, payload), 401, "unauthorized")
    assert isinstance(detail, str) and "X-Api-Key" in detail
    assert_fastapi_error(post(s, payload, headers={"X-Api-Key": "wrong"}), 401, "unauthorized")
    assert_fastapi_error(upload(s, encode(photo("astronaut")), json.dumps(payload["tasks"])), 401, "unauthorized")
    assert_fastapi_error(httpx.get(f"{s.url}/available_operations/", timeout=30), 401, "unauthorized")
    r = post(s, payload, headers={"X-Api-Key": "k1"})
    assert r.status_code == 200 and r.json()["results"]["p"]["status"] == "success", r.text
    assert httpx.get(f"{s.url}/available_operations/", headers={"X-Api-Key": "k1"}, timeout=30).status_code == 200


def test_rate_limit_applies(live_factory, models, images):
    s = live_factory(model_dir=models, rate_limit="2/minute", allow_private_urls=True)
    payload = {"image_url": images.url("/astronaut.jpg"), "tasks": [task("p", "detect_bounding_box")]}
    with httpx.Client(base_url=s.url, timeout=60) as h:
        assert h.post("/analyze_image/", json=payload).status_code == 200
        assert h.get("/available_operations/").status_code == 200
        r = h.post("/analyze_image/", json=payload)
        detail = assert_fastapi_error(r, 429, "rate_limited")
        assert isinstance(detail, str) and "2 per 1 minute" in detail
        assert 0 < int(r.headers["retry-after"]) <= 60
