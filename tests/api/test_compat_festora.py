"""festora-vision-api's clients on Loupe's /v1: its request bodies as they are, its field names in the answers.

The fixtures are festora's README examples (app/README of Jjat00/festora-vision-api): the analyze request,
the LLM request `{"image_url", "ref_id", "model"}` and the cluster request. The models are the real loaders
with random weights (NIMA, CLIP, DeepFace's emotion CNN) and the real BRISQUE / YuNet weights where the
shared folder has them, so every alias is checked against the value it aliases, over real HTTP.
"""

from __future__ import annotations

import base64
import json
import shutil

import httpx
import numpy as np
import pytest

from app.schemas.analysis import FESTORA_AESTHETIC_LABELS, AestheticResult
from tests.factories.faces import write_random_deepface_emotion_weights
from tests.factories.models import write_nima_checkpoint, write_tiny_clip
from tests.helpers import SHARED_WEIGHTS, encode, photo
from tests.servers import FakeLLM, ImageServer, Reply

# festora-vision-api README, "Analyze" (the URL is replaced by a local image host's)
FESTORA_ANALYZE = {"image": {"url": None, "image_id": "demo_001"}, "run_blur": True, "run_quality": True,
                   "run_emotion": False, "run_embedding": True}
# festora-vision-api README, "LLM analysis"
FESTORA_LLM = {"image_url": None, "ref_id": "photo_abc123", "model": "anthropic/claude-opus-4-6"}
FESTORA_ANALYSIS_KEYS = {"overall_score", "discard_reason", "best_in_group", "composition", "pose_quality",
                         "background_quality", "highlights", "issues", "summary"}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("festora-models")
    for kind in ("nima_technical", "nima_aesthetic"):
        write_nima_checkpoint(root / kind, kind)
    write_tiny_clip(root / "clip" / "openai__clip-vit-base-patch32")
    write_random_deepface_emotion_weights(root / "deepface")
    for sub, src in (("brisque", "brisque_libsvm_live"), ("yunet", "face_yunet")):
        if (SHARED_WEIGHTS / src).is_dir():
            shutil.copytree(SHARED_WEIGHTS / src, root / sub)
    return root


@pytest.fixture(scope="module")
def images():
    server = ImageServer()
    yield server
    server.close()


@pytest.fixture(scope="module")
def llm():
    def answer(body: dict) -> Reply:
        return Reply(json.dumps({"overall_score": 8, "discard_reason": None, "composition": "rule of thirds",
                                 "subject": "natural, relaxed pose", "lighting": "soft window light",
                                 "background_quality": "soft bokeh", "highlights": ["genuine smile"], "issues": [],
                                 "summary": "A natural portrait."}))
    server = FakeLLM(answer=answer)
    yield server
    server.close()


@pytest.fixture(scope="module")
def loupe(model_dir, llm, tmp_path_factory):
    from app.main import create_app
    from tests.api.conftest import make_settings
    from tests.servers import LiveServer

    settings = make_settings(tmp_path_factory.mktemp("festora"), model_dir=model_dir, allow_private_urls=True,
                             llm_api_base=llm.base, llm_default_model="openai/test-vision",
                             llm_allowed_models="openai/*", deepface_home=str(model_dir / "deepface"))
    server = LiveServer(create_app(settings))
    yield server
    server.close()


def post(loupe, path: str, body: dict) -> httpx.Response:
    return httpx.post(f"{loupe.url}{path}", json=body, timeout=120)


def test_the_readme_analyze_request_answers_with_festoras_names(loupe, images):
    url = images.bytes("/portrait.jpg", encode(photo("astronaut")))
    r = post(loupe, "/v1/analyze", {**FESTORA_ANALYZE, "image": {**FESTORA_ANALYZE["image"], "url": url}})
    assert r.status_code == 200, r.text
    res = r.json()["result"]
    assert res["image_id"] == "demo_001" and (res["width_px"], res["height_px"]) == (512, 512)
    blur = res["blur"]
    assert isinstance(blur["laplacian_variance"], float) and isinstance(blur["is_blurry"], bool)
    assert blur["blur_threshold"] == blur["thresholds"]["blur_threshold"] == 100.0
    assert blur["is_blurry"] == (blur["laplacian_variance"] < blur["blur_threshold"])
    q = res["quality"]
    assert q["overall_quality"] in ("low", "medium", "high")
    assert q["nima_technical_score"] == pytest.approx(1 + 9 * q["nima_technical"], abs=1e-3)
    assert 1 <= q["nima_technical_score"] <= 10
    if (SHARED_WEIGHTS / "brisque_libsvm_live").is_dir():
        assert q["brisque_score"] == q["brisque"] and isinstance(q["brisque_score"], float)
    emb = res["embedding"]
    assert emb["model"] == "openai/clip-vit-base-patch32"
    assert emb["dimensions"] == emb["dim"] == len(emb["vector"]) and abs(np.linalg.norm(emb["vector"]) - 1) < 1e-3
    assert res["emotion"] is None and res["error"] is None


def test_aesthetic_label_and_its_thresholds(loupe):
    """festora's aesthetic_label is computed from nima_score with festora's bounds, and the bounds are returned."""
    r = post(loupe, "/v1/analyze", {"image": {"data": b64(encode(photo("coffee")))}, "run_aesthetic": True})
    assert r.status_code == 200, r.text
    a = r.json()["result"]["aesthetic"]
    assert a["nima_aesthetic_score"] == a["nima_score"] and 1 <= a["nima_score"] <= 10
    assert a["thresholds"]["aesthetic_label_high_min"] == 6.5 and a["thresholds"]["aesthetic_label_medium_min"] == 5.0
    expected = "high" if a["nima_score"] >= 6.5 else "medium" if a["nima_score"] >= 5.0 else "low"
    assert a["aesthetic_label"] == expected
    # each side of each bound (the random-weight NIMA gives one score; the rule is checked at its edges)
    for score, label in ((6.5, "high"), (6.4999, "medium"), (5.0, "medium"), (4.999, "low"), (9.7, "high"), (1.0, "low")):
        assert AestheticResult(status="ok", nima_score=score).aesthetic_label == label
    assert [lo for _, lo in FESTORA_AESTHETIC_LABELS] == [6.5, 5.0]


def test_festoras_base64_field_data_is_accepted_and_exactly_one_source_is_required(loupe):
    jpeg = encode(photo("chelsea"))
    by_data = post(loupe, "/v1/analyze", {"image": {"data": b64(jpeg)}, "run_quality": False})
    by_b64 = post(loupe, "/v1/analyze", {"image": {"base64": b64(jpeg)}, "run_quality": False})
    assert by_data.status_code == by_b64.status_code == 200
    assert by_data.json()["result"]["blur"]["laplacian_variance"] == by_b64.json()["result"]["blur"]["laplacian_variance"]
    both = post(loupe, "/v1/analyze", {"image": {"data": b64(jpeg), "base64": b64(jpeg)}})
    assert both.status_code == 422 and both.json()["error"]["type"] == "validation_error"


def test_emotion_in_festoras_shape(loupe):
    if not (SHARED_WEIGHTS / "face_yunet").is_dir():
        pytest.skip(f"real weights not available: face_yunet missing from {SHARED_WEIGHTS}")
    r = post(loupe, "/v1/analyze", {"image": {"data": b64(encode(photo("astronaut")))}, "run_emotion": True,
                                    "run_quality": False})
    assert r.status_code == 200, r.text
    emo = r.json()["result"]["emotion"]
    assert emo["faces_detected"] == emo["count"] == len(emo["faces"]) >= 1
    face = emo["faces"][0]
    assert face["region"] == face["box"] and face["face_confidence"] == face["confidence"]
    assert set(face["scores"]) == set(face["emotions"]) and abs(sum(face["scores"].values()) - 100) < 0.1
    assert all(face["scores"][k] == pytest.approx(100 * v, abs=1e-3) for k, v in face["emotions"].items())


def test_batch_carries_festoras_totals(loupe):
    body = {"images": [{"data": b64(encode(photo("coffee")))}, {"data": b64(b"not an image")}], "run_quality": False}
    r = post(loupe, "/v1/analyze/batch", body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert (out["total"], out["succeeded"], out["failed"]) == (2, 1, 1)
    assert out["total_processing_time_ms"] == out["summary"]["processing_time_ms"] > 0
    assert out["results"][1]["error"]["type"] == "unsupported_media_type"


def test_the_readme_llm_request_echoes_ref_id_and_answers_festoras_analysis(loupe, images, llm):
    url = images.bytes("/photo.jpg", encode(photo("astronaut")))
    # the README names Anthropic's model; here the provider is the local OpenAI-compatible server
    r = post(loupe, "/v1/analyze/llm", {**FESTORA_LLM, "image_url": url, "model": "openai/test-vision"})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["ref_id"] == "photo_abc123" and out["error"] is None
    assert out["model_used"] == "openai/test-vision" and isinstance(out["tokens_used"], int)
    assert isinstance(out["processing_ms"], float) and out["processing_ms"] > 0
    analysis = out["analysis"]
    assert set(analysis) == FESTORA_ANALYSIS_KEYS
    assert analysis["overall_score"] == out["overall_score"] == 8 and analysis["best_in_group"] is False
    assert analysis["pose_quality"] == out["subject"] and analysis["summary"] == out["summary"]
    # the provider got the image itself (a data URI), never the caller's URL
    sent = json.dumps(llm.requests[-1]["json"])
    assert url not in sent and "data:image/jpeg;base64," in sent
    # without ref_id: null; image and image_url together, or neither: 422
    assert post(loupe, "/v1/analyze/llm", {"image_url": url, "model": "openai/test-vision"}).json()["ref_id"] is None
    both = post(loupe, "/v1/analyze/llm", {"image_url": url, "image": {"url": url}})
    assert both.status_code == 422 and "exactly one" in both.json()["error"]["message"]
    assert post(loupe, "/v1/analyze/llm", {"ref_id": "x"}).status_code == 422


def test_the_llm_model_a_festora_client_names_must_pass_the_allowlist(loupe, images):
    """festora's default model is refused unless LLM_ALLOWED_MODELS allows it: a client cannot pick a provider."""
    url = images.bytes("/p2.jpg", encode(photo("coffee")))
    r = post(loupe, "/v1/analyze/llm", {**FESTORA_LLM, "image_url": url})
    assert r.status_code == 422 and r.json()["error"]["type"] == "validation_error"


def test_the_festora_cluster_request_as_it_is(loupe):
    rng = np.random.default_rng(3)
    base = rng.normal(size=512)
    near = base + 0.05 * rng.normal(size=512)
    far = rng.normal(size=512)
    body = {"embeddings": [base.tolist(), near.tolist(), far.tolist()], "image_ids": ["p1", "p2", "p3"],
            "eps": 0.35, "min_samples": 2}
    r = post(loupe, "/v1/cluster", body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert (out["eps_used"], out["min_samples_used"]) == (0.35, 2)
    assert out["total_images"] == 3 and out["num_clusters"] == out["n_clusters"] == 1
    assert out["num_noise"] == out["n_noise"] == 1
    assert out["assignments"]["p1"] == out["assignments"]["p2"] != out["assignments"]["p3"] == -1
    assert out["clusters"] == [{"cluster_id": 0, "size": 2, "image_ids": ["p1", "p2"]}]


def test_the_aliases_are_documented_as_aliases_with_their_range(loupe):
    spec = httpx.get(f"{loupe.url}/openapi.json").json()
    schemas = spec["components"]["schemas"]

    def prop(model: str, name: str) -> dict:
        for key in (model, f"{model}-Output"):
            if key in schemas and name in schemas[key]["properties"]:
                return schemas[key]["properties"][name]
        raise AssertionError(f"{model}.{name} missing from the schema")

    for model, name, of in (("QualityResult", "brisque_score", "brisque"), ("QualityResult", "nima_technical_score", "nima_technical"),
                            ("AestheticResult", "nima_aesthetic_score", "nima_score"), ("AestheticResult", "aesthetic_label", "nima_score"),
                            ("EmbeddingResult", "dimensions", "dim"), ("BlurResult", "blur_threshold", "thresholds.blur_threshold")):
        p = prop(model, name)
        assert p["x-alias-of"] == of and p["x-compat"] == "festora-vision-api" and p.get("readOnly") is True
        assert "festora" in p["description"]
    assert prop("QualityResult", "nima_technical_score")["x-range"] == [1, 10]
    assert prop("QualityResult", "brisque_score")["x-higher-is-better"] is False
