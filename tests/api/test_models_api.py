"""The whole analysis with every model loaded through the real registry and real loaders.

CLIP is a tiny random-weight CLIPConfig saved with save_pretrained, NIMA is pyiqa's real
architecture with random weights in pyiqa's checkpoint format, DeepFace's emotion CNN has
random weights where DeepFace looks; BRISQUE, NIQE, YuNet and the LAION head are the real
published files from ../shared/weights (those parts skip with the reason when it is absent).
"""

from __future__ import annotations

import base64
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.core.config import Settings
from app.main import create_app
from tests.factories.faces import write_random_deepface_emotion_weights
from tests.factories.models import write_nima_checkpoint, write_tiny_clip
from tests.helpers import SHARED_WEIGHTS, encode, gaussian_blur, photo

ALL = {"run_blur": True, "run_exposure": True, "run_quality": True, "run_aesthetic": True,
       "run_emotion": True, "run_embedding": True, "run_faces": True}
REAL = {"brisque": "brisque_libsvm_live", "niqe": "niqe_live", "yunet": "face_yunet",
        "laion_aesthetic": "aesthetic_laion_v1_linear"}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("models")
    for kind in ("nima_technical", "nima_aesthetic"):
        write_nima_checkpoint(root / kind, kind)
    write_tiny_clip(root / "clip" / "openai__clip-vit-base-patch32")
    write_random_deepface_emotion_weights(root / "deepface")
    for sub, src in REAL.items():
        if (SHARED_WEIGHTS / src).is_dir():
            shutil.copytree(SHARED_WEIGHTS / src, root / sub)
    return root


def has_real(sub: str) -> bool:
    return (SHARED_WEIGHTS / REAL[sub]).is_dir()


def need_real(*subs: str) -> None:
    missing = [REAL[s] for s in subs if not has_real(s)]
    if missing:
        pytest.skip(f"real weights not available: {', '.join(missing)} missing from {SHARED_WEIGHTS}")


def settings(model_dir: Path, **kw) -> Settings:
    return Settings(_env_file=None, model_dir=model_dir, log_json=False, log_level="WARNING", **kw)


@pytest.fixture(scope="module")
def client(model_dir):
    with TestClient(create_app(settings(model_dir))) as c:
        yield c


def test_every_analysis_runs_with_every_model(client):
    need_real("brisque", "niqe", "yunet", "laion_aesthetic")
    r = client.post("/v1/analyze", json={"image": {"base64": b64(encode(photo("astronaut"))), "image_id": "a"}, **ALL})
    assert r.status_code == 200, r.text
    res = r.json()["result"]
    for key in ("blur", "exposure", "quality", "aesthetic", "emotion", "embedding", "faces"):
        assert res[key]["status"] == "ok", (key, res[key])
    q = res["quality"]
    assert {c["name"] for c in q["components"]} == {"sharpness", "noise", "blocking", "exposure", "brisque", "nima_technical"}
    assert q["missing"] == {} and 0 <= q["score"] <= 1 and q["brisque"] is not None and q["niqe"] is not None
    assert q["band"] in ("very_poor", "poor", "decent", "good", "excellent")
    a = res["aesthetic"]
    assert 1 <= a["nima_score"] <= 10 and abs(sum(a["nima_distribution"]) - 1) < 1e-3 and a["laion_score"] is not None
    e = res["embedding"]
    assert e["dim"] == 512 and abs(np.linalg.norm(e["vector"]) - 1) < 1e-4
    faces = res["faces"]["faces"]
    assert res["faces"]["count"] == 1 and 150 < faces[0]["box"]["x"] + faces[0]["box"]["w"] / 2 < 300
    assert set(faces[0]["landmarks"]) == {"right_eye", "left_eye", "nose", "mouth_right", "mouth_left"}
    emo = res["emotion"]["faces"]
    assert len(emo) == 1 and abs(sum(emo[0]["emotions"].values()) - 1) < 1e-3
    assert emo[0]["dominant_emotion"] == max(emo[0]["emotions"], key=emo[0]["emotions"].get)
    for key in ("brisque_ms", "nima_technical_ms", "clip_ms", "emotion_ms", "faces_ms"):
        assert key in res["timings_ms"]


def test_no_face_is_an_empty_list(client):
    r = client.post("/v1/analyze", json={"image": {"base64": b64(encode(photo("coffee")))},
                                         "run_emotion": True, "run_faces": True})
    res = r.json()["result"]
    assert res["emotion"]["status"] == "ok" and res["emotion"]["faces"] == [] and res["emotion"]["count"] == 0
    if has_real("yunet"):
        assert res["faces"]["status"] == "ok" and res["faces"]["faces"] == []


def test_batch_equals_single_image_results(client):
    names = ["astronaut", "coffee", "chelsea"]
    imgs = [{"base64": b64(encode(photo(n))), "image_id": n} for n in names]
    batch = client.post("/v1/analyze/batch", json={"images": imgs, **ALL}).json()["results"]
    for img, got in zip(imgs, batch):
        single = client.post("/v1/analyze", json={"image": img, **ALL}).json()["result"]
        for key in ("blur", "exposure", "quality", "faces"):
            assert got[key] == single[key], key
        assert got["aesthetic"]["nima_score"] == pytest.approx(single["aesthetic"]["nima_score"], abs=1e-3)
        assert np.allclose(got["embedding"]["vector"], single["embedding"]["vector"], atol=1e-4)
        for fa, fb in zip(got["emotion"]["faces"], single["emotion"]["faces"]):
            assert fa["box"] == fb["box"] and fa["dominant_emotion"] == fb["dominant_emotion"]


def test_text_embeddings_share_the_image_space(client):
    r = client.post("/v1/embed/text", json={"texts": ["a cat", "an astronaut in a white suit"]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["dim"] == 512 and len(body["embeddings"]) == 2
    assert all(abs(np.linalg.norm(e["vector"]) - 1) < 1e-4 for e in body["embeddings"])
    assert client.post("/v1/embed/text", json={"texts": [""]}).status_code == 422
    assert client.post("/v1/embed/text", json={"texts": []}).status_code == 422


def test_health_lists_ready_models(client):
    client.post("/v1/analyze", json={"image": {"base64": b64(encode(photo("chelsea")))}, **ALL})
    body = client.get("/health").json()
    for name in ("nima_technical", "nima_aesthetic", "clip", "emotion"):
        m = body["models"][name]
        assert m["state"] == "ready" and m["device"] == "cpu" and m["load_time_s"] > 0, m
    ops = {o["name"]: o for o in client.get("/v1/operations").json()["operations"]}
    assert ops["embedding"]["ready"] is True


def test_one_broken_model_never_fails_the_others(model_dir, tmp_path):
    broken = tmp_path / "models"
    shutil.copytree(model_dir, broken)
    ckpt = next((broken / "nima_technical").glob("*.pth"))
    ckpt.write_bytes(b"this is not a torch checkpoint")
    shutil.rmtree(broken / "clip")
    with TestClient(create_app(settings(broken))) as c:
        r = c.post("/v1/analyze", json={"image": {"base64": b64(encode(photo("astronaut")))}, **ALL})
        assert r.status_code == 200, r.text
        res = r.json()["result"]
        assert res["embedding"]["status"] == "unavailable" and "not found" in res["embedding"]["error"]["message"].lower()
        q = res["quality"]
        assert q["status"] == "ok" and "nima_technical" in q["missing"]
        assert "nima_technical" not in {c["name"] for c in q["components"]}
        assert res["aesthetic"]["status"] == "ok" and res["aesthetic"]["laion_score"] is None
        assert res["emotion"]["status"] == "ok"
        health = c.get("/health").json()
        assert health["status"] == "degraded" and health["models"]["nima_technical"]["state"] == "failed"


def test_preload_all_and_503_when_a_preloaded_model_is_missing(model_dir, tmp_path):
    with TestClient(create_app(settings(model_dir, preload_models="nima_aesthetic,clip"))) as c:
        body = c.get("/health").json()
        assert body["models"]["clip"]["state"] == "ready" and body["models"]["nima_aesthetic"]["state"] == "ready"
        assert body["models"]["emotion"]["state"] == "not_loaded"
    with TestClient(create_app(settings(tmp_path, preload_models="all"))) as c:
        r = c.get("/health")
        assert r.status_code == 503 and r.json()["status"] == "unavailable"


def test_registry_loads_once_under_concurrency_and_unloads_after_ttl(model_dir):
    from concurrent.futures import ThreadPoolExecutor

    from app.models.registry import ModelRegistry

    reg = ModelRegistry(settings(model_dir, model_ttl_s=5), ThreadPoolExecutor(2))
    barrier = threading.Barrier(6)

    def load(_):
        barrier.wait()
        return reg.load("clip")

    with ThreadPoolExecutor(6) as ex:
        adapters = list(ex.map(load, range(6)))
    assert len({id(a) for a in adapters}) == 1 and reg.info("clip").loads == 1
    assert reg.unload_idle() == []  # just used
    e = reg.info("clip")
    assert reg.unload_idle(now=e.last_used + 6) == ["clip"] and reg.info("clip").state == "not_loaded" \
        and reg.loaded("clip") is None
    reg.load("clip")
    assert reg.info("clip").loads == 2


def test_quality_score_falls_with_real_degradations(tmp_path):
    """With the real BRISQUE (and the gate), blur, noise and JPEG damage never raise the score."""
    need_real("brisque")
    from tests.helpers import add_noise, jpeg_roundtrip

    md = tmp_path / "models"
    shutil.copytree(SHARED_WEIGHTS / REAL["brisque"], md / "brisque")
    with TestClient(create_app(settings(md))) as c:
        def score(rgb):
            r = c.post("/v1/analyze", json={"image": {"base64": b64(encode(rgb, "PNG"))}})
            q = r.json()["result"]["quality"]
            assert "brisque" in {x["name"] for x in q["components"]}
            return q["score"]

        for name in ("astronaut", "coffee", "chelsea", "motorcycle_left"):
            rgb = photo(name)
            for degrade, levels in ((gaussian_blur, (1, 2, 4)), (lambda x, s: add_noise(x, s), (5, 15, 30)),
                                    (jpeg_roundtrip, (50, 20, 5))):
                scores = [score(rgb)] + [score(degrade(rgb, lv)) for lv in levels]
                assert all(a >= b - 1e-6 for a, b in zip(scores, scores[1:])), (name, levels, scores)
                assert scores[-1] < scores[0] - 0.05, (name, levels, scores)


def test_ttl_never_unloads_a_model_in_use_and_every_call_refreshes_it(model_dir):
    """MODEL_TTL_S with a model used only through /v1/embed/text: each call counts as use, and an idle
    sweep that runs while a call is in flight leaves the model alone (it used to set its fields to None
    mid-call)."""
    import asyncio
    import time as _time
    from concurrent.futures import ThreadPoolExecutor

    from app.models.registry import ModelRegistry

    reg = ModelRegistry(settings(model_dir, model_ttl_s=0.2), ThreadPoolExecutor(2))
    started, finish = threading.Event(), threading.Event()

    def slow_embed(adapter, texts):
        started.set()
        finish.wait(10)
        return adapter.embed_text(texts)  # the adapter's weights must still be there

    async def scenario():
        call = asyncio.create_task(reg.call("clip", slow_embed, ["a cat"]))
        while not started.is_set():
            await asyncio.sleep(0.01)
        def e():
            return reg.info("clip")
        assert e().in_flight == 1
        assert reg.unload_idle(now=_time.monotonic() + 60) == []  # long idle by the clock, but in use
        assert e().state == "ready" and reg.loaded("clip") is not None
        finish.set()
        vectors = await call
        assert vectors.shape[0] == 1 and np.isfinite(vectors).all()
        assert e().in_flight == 0
        used = e().last_used
        await asyncio.sleep(0.05)
        await reg.call("clip", lambda adapter, t: adapter.embed_text(t), ["a dog"])
        assert e().last_used > used  # the call itself refreshed last use (no explicit load involved)
        assert reg.unload_idle(now=e().last_used + 0.1) == []
        assert reg.unload_idle(now=e().last_used + 0.3) == ["clip"] and reg.loaded("clip") is None
        # a call after the unload loads it again
        await reg.call("clip", lambda adapter, t: adapter.embed_text(t), ["again"])
        assert e().loads == 2

    asyncio.run(scenario())


def test_embed_text_survives_concurrent_idle_sweeps(model_dir):
    """Over the real app: a sweep thread unloading idle models as fast as it can while requests run."""
    import time as _time

    with TestClient(create_app(settings(model_dir, model_ttl_s=0.05))) as c:
        reg = c.app.state.registry
        stop = threading.Event()

        def sweep():
            while not stop.is_set():
                reg.unload_idle(now=_time.monotonic() + 1)

        t = threading.Thread(target=sweep, daemon=True)
        t.start()
        try:
            codes = [c.post("/v1/embed/text", json={"texts": [f"photo {i}"]}).status_code for i in range(15)]
        finally:
            stop.set()
            t.join(5)
    assert codes == [200] * 15


def ladder_pairs(c) -> tuple[int, int, list]:
    """(strictly falling ordered pairs, all pairs, the ladders that rose) over the degradation ladders."""
    import itertools

    from tests.helpers import add_noise, exposure, jpeg_roundtrip, upscale

    ladders = {"blur": (lambda x, v: gaussian_blur(x, v) if v else x, (0, 1, 2, 4)),
               "noise": (lambda x, v: add_noise(x, v) if v else x, (0, 10, 25, 50)),
               "jpeg": (jpeg_roundtrip, (90, 40, 15, 5)),
               "dark": (exposure, (1, 0.5, 0.25, 0.1))}
    bases = {}
    for name in ("astronaut", "coffee", "chelsea", "rocket", "motorcycle_left"):
        bases[name] = (photo(name), "PNG", ladders)
        bases[name + "~soft"] = (gaussian_blur(photo(name), 1.5), "PNG", ladders)
    for name in ("astronaut", "coffee", "chelsea"):  # noise added at full size, then JPEG'd and resized
        bases[name + "~big_soft"] = (gaussian_blur(upscale(photo(name), 3000), 2), "JPEG", {"noise": ladders["noise"]})

    def score(rgb, fmt):
        data = encode(rgb, fmt, **({"quality": 95} if fmt == "JPEG" else {}))
        return c.post("/v1/analyze", json={"image": {"base64": b64(data)}}).json()["result"]["quality"]["score"]

    ok = total = 0
    rose = []
    for name, (rgb, fmt, lads) in bases.items():
        for lname, (degrade, levels) in lads.items():
            scores = [score(degrade(rgb, v), fmt) for v in levels]
            for i, j in itertools.combinations(range(len(scores)), 2):
                total += 1
                ok += scores[i] > scores[j]
            if any(b > a for a, b in zip(scores, scores[1:])):
                rose.append((name, lname, scores))
    return ok, total, rose


def test_degradation_ladders_lower_the_score(tmp_path):
    """Blur, noise 0/10/25/50, JPEG 90/40/15/5 and darkening ×1/0.5/0.25/0.1 on crisp and soft real photos (and
    noise on large soft ones, added at full size): with the real BRISQUE and NIQE the score strictly falls
    for >= 99 % of ordered pairs (all 258 measured) and no ladder ever rises, noise included. Gate only: >= 84 %
    (85 % measured: soft photos tie at the sharpness floor along the blur ladder), and no noise, JPEG or
    darkening ladder rises."""
    need_real("brisque", "niqe")
    md = tmp_path / "models"
    for sub in ("brisque", "niqe"):
        shutil.copytree(SHARED_WEIGHTS / REAL[sub], md / sub)
    for model_dir, bar, never in ((md, 0.99, ("blur", "noise", "jpeg", "dark")),
                                  (tmp_path / "no-models", 0.84, ("noise", "jpeg", "dark"))):
        with TestClient(create_app(settings(model_dir))) as c:
            ok, total, rose = ladder_pairs(c)
        assert ok / total >= bar, (model_dir.name, ok, total, rose)
        assert not [r for r in rose if r[1] in never], rose
