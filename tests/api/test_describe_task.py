"""The describe task over the real app: a tiny random BLIP in the real save_pretrained layout (caption quality is
the published model's; here the path is what is tested: loading, batching across images, max_length, isolation)."""

from __future__ import annotations

import base64

import pytest
from fastapi.testclient import TestClient

from app.core.config import Settings
from app.main import create_app
from tests.factories.models import write_tiny_blip
from tests.helpers import encode, photo


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    root = tmp_path_factory.mktemp("caption-models")
    write_tiny_blip(root / "caption")
    with TestClient(create_app(Settings(_env_file=None, model_dir=root, log_json=False, log_level="WARNING"))) as c:
        yield c


def test_captions_per_image_and_length(client):
    tasks = [{"operation_id": "short", "type": "describe", "params": {"max_length": 5}},
             {"operation_id": "long", "type": "describe", "params": {"max_length": 20}}]
    images = [{"base64": b64(encode(photo(n))), "image_id": n} for n in ("astronaut", "coffee")]
    r = client.post("/v1/tasks/batch", json={"images": images, "tasks": tasks})
    assert r.status_code == 200, r.text
    for item in r.json()["results"]:
        res = item["results"]
        assert res["short"]["status"] == "success" and isinstance(res["short"]["data"], str)
        assert res["long"]["status"] == "success" and isinstance(res["long"]["data"], str)
        assert len(res["short"]["data"].split()) <= 5 and len(res["long"]["data"].split()) <= 20
    one = client.post("/v1/tasks", json={"image": images[1], "tasks": tasks[1:]}).json()["results"]["long"]["data"]
    assert one == r.json()["results"][1]["results"]["long"]["data"]  # batched equals alone


def test_bad_max_length_is_422_and_a_missing_model_fails_only_its_task(client, tmp_path):
    bad = client.post("/v1/tasks", json={"image": {"base64": b64(encode(photo("coffee")))},
                                         "tasks": [{"operation_id": "d", "type": "describe", "params": {"max_length": 1}}]})
    assert bad.status_code == 422 and "max_length" in bad.text
    with TestClient(create_app(Settings(_env_file=None, model_dir=tmp_path / "none", log_json=False,
                                        log_level="WARNING"))) as c:
        res = c.post("/v1/tasks", json={"image": {"base64": b64(encode(photo("coffee")))},
                                        "tasks": [{"operation_id": "d", "type": "describe"},
                                                  {"operation_id": "b", "type": "blur"}]}).json()["results"]
    assert res["d"]["status"] == "error" and "caption" in res["d"]["error_message"]
    assert res["b"]["status"] == "success"
