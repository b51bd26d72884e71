"""/v1/cluster (vectors) and /v1/cluster/images (photo sets) on real photos."""

from __future__ import annotations

import base64
import io

import cv2
import numpy as np
import pytest

from tests.helpers import add_noise, encode, exposure, gaussian_blur, jpeg_roundtrip, motion_blur, photo


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def crop(rgb, frac=0.025):
    """Remove `frac` of each side (5 % of the width and height in all)."""
    h, w = rgb.shape[:2]
    dy, dx = int(h * frac), int(w * frac)
    return np.ascontiguousarray(rgb[dy:h - dy, dx:w - dx])


def shift(rgb, px=6):
    return np.ascontiguousarray(np.roll(rgb, px, axis=1))


# --- vectors -------------------------------------------------------------------------
def test_cluster_vectors_groups_nearby_vectors(client):
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 64))
    vecs, ids = [], []
    for c, centre in enumerate(centres):
        for k in range(4):
            vecs.append((centre + rng.normal(scale=0.05, size=64)).tolist())
            ids.append(f"c{c}-{k}")
    vecs.append(rng.normal(size=64).tolist())
    ids.append("lonely")
    r = client.post("/v1/cluster", json={"embeddings": vecs, "image_ids": ids, "eps": 0.2})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["algorithm"] == "dbscan" and body["n_clusters"] == 3 and body["n_noise"] == 1
    assert body["assignments"]["lonely"] == -1
    for c in range(3):
        labels = {body["assignments"][f"c{c}-{k}"] for k in range(4)}
        assert len(labels) == 1 and labels != {-1}
    assert body["params"]["eps"] == 0.2 and body["params"]["metric"] == "cosine"
    assert sorted(len(c["image_ids"]) for c in body["clusters"]) == [4, 4, 4]


@pytest.mark.parametrize("payload, fragment", [
    ({"embeddings": [[1, 0], [1], [0, 1]], "image_ids": ["a", "b", "c"]}, "ragged"),
    ({"embeddings": [[1, 0], [0, 1]], "image_ids": ["a"]}, "length mismatch"),
    ({"embeddings": [[1, 0], [0, 1]], "image_ids": ["a", "a"]}, "duplicate"),
    ({"embeddings": [[0, 0], [0, 1]], "image_ids": ["a", "b"]}, "zero vector"),
    ({"embeddings": [[1, 0]], "image_ids": ["a"], "eps": 5}, "eps"),
    ({"embeddings": [[1, 0]], "image_ids": ["a"], "min_samples": 0}, "min_samples"),
    ({"embeddings": [], "image_ids": []}, "embeddings"),
    ({"embeddings": [["x", 1]], "image_ids": ["a"]}, "embeddings"),
    ({"embeddings": [[1, 0]], "image_ids": ["a"], "metric": "manhattan"}, "metric"),
])
def test_cluster_vectors_validation_is_422(client, payload, fragment):
    r = client.post("/v1/cluster", json=payload)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["type"] == "validation_error"
    assert fragment in r.json()["error"]["message"]


def test_cluster_vectors_non_finite_is_422(client):
    raw = b'{"embeddings": [[1e999, 0], [0, 1]], "image_ids": ["a", "b"]}'
    r = client.post("/v1/cluster", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 422 and "finite" in r.json()["error"]["message"], r.text


def test_cluster_vectors_limit(client_factory):
    c = client_factory(max_cluster_items=5)
    vecs = np.eye(6).tolist()
    r = c.post("/v1/cluster", json={"embeddings": vecs, "image_ids": [str(i) for i in range(6)]})
    assert r.status_code == 422 and "MAX_CLUSTER_ITEMS" in r.json()["error"]["message"]


# --- photo sets ----------------------------------------------------------------------------
def burst_set():
    """Two synthetic bursts from real photos, each with a blurred copy, mixed with distinct photos."""
    a, m = photo("astronaut"), photo("motorcycle_left")
    images = {
        "astro-orig": a,
        "astro-crop": crop(a),
        "astro-resave": jpeg_roundtrip(a, 60),
        "astro-bright": exposure(a, 1.15),
        "astro-blur": gaussian_blur(a, 3),
        "moto-orig": m,
        "moto-shift": shift(m),
        "moto-motion": motion_blur(m, 25),
        "coffee": photo("coffee"),
        "chelsea": photo("chelsea"),
        "rocket": photo("rocket"),
    }
    return images


def test_photo_set_groups_bursts_and_picks_the_sharp_shot(client):
    images = burst_set()
    payload = {"images": [{"base64": b64(encode(v)), "image_id": k} for k, v in images.items()]}
    r = client.post("/v1/cluster/images", json=payload)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["features_used"] == ["phash"]  # no CLIP model in this instance
    groups = {frozenset(m["image_id"] for m in g["members"]): g for g in body["groups"]}
    astro = frozenset(k for k in images if k.startswith("astro"))
    moto = frozenset(k for k in images if k.startswith("moto"))
    assert set(groups) == {astro, moto}, list(groups)
    assert sorted(body["singletons"]) == ["chelsea", "coffee", "rocket"]
    for key, blurred in ((astro, "astro-blur"), (moto, "moto-motion")):
        g = groups[key]
        # the blurred copy never wins; any undamaged-sharpness shot may (gain 1.15 raises contrast a little)
        assert g["best_image_id"] != blurred and g["best_image_id"] in key
        last = g["members"][-1]
        assert last["image_id"] == blurred and "blurry" in last["rejected_reason"]
        assert g["members"][0]["is_best"] and g["members"][0]["rank"] == 1 and g["linked_by"] == ["phash"]
        assert g["best_image_id"] in g["reason"]
    assert len(body["results"]) == len(images)


def test_photo_set_reports_bad_images_without_breaking(client):
    a = photo("chelsea")
    files = [("file", ("c1.jpg", encode(a), "image/jpeg")),
             ("file", ("broken.jpg", b"not an image at all", "image/jpeg")),
             ("file", ("c2.jpg", encode(crop(a)), "image/jpeg")),
             ("file", ("c3.jpg", encode(add_noise(a, 3)), "image/jpeg"))]
    r = client.post("/v1/cluster/images", files=files, data={"hash_max_distance": "10"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert [f["image_id"] for f in body["failed"]] == ["broken.jpg"]
    assert body["failed"][0]["error"]["type"] == "unsupported_media_type"
    assert len(body["groups"]) == 1 and body["groups"][0]["size"] == 3


def test_photo_set_ids_must_be_unique_and_limit(client_factory):
    c = client_factory(max_cluster_images=2)
    img = {"base64": b64(encode(photo("coffee")))}
    r = c.post("/v1/cluster/images", json={"images": [dict(img, image_id="x"), dict(img, image_id="x")]})
    assert r.status_code == 422 and "more than once" in r.json()["error"]["message"]
    r = c.post("/v1/cluster/images", json={"images": [img, img, img]})
    assert r.status_code == 413 and r.json()["error"]["detail"]["max_cluster_images"] == 2


BURST_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "motorcycle_left", "camera", "immunohistochemistry", "moon")


def burst(rgb):
    """The original and three worse copies of one shot: a 70 % downscaled JPEG q70 re-save, a 6 % crop
    (3 % off each side) and a darker, slightly soft copy."""
    import cv2

    h, w = rgb.shape[:2]
    dy, dx = int(h * 0.03), int(w * 0.03)
    return {
        "orig": encode(rgb, quality=92),
        "small": encode(cv2.resize(rgb, (int(w * 0.7), int(h * 0.7)), interpolation=cv2.INTER_AREA), quality=70),
        "crop": encode(np.ascontiguousarray(rgb[dy:h - dy, dx:w - dx]), quality=92),
        "darksoft": encode(gaussian_blur(exposure(rgb, 0.6), 1.0), quality=92),
    }


BEST_SHOT_PHOTOS = BURST_PHOTOS + ("retina", "hubble_deep_field", "coins", "page", "colorwheel", "brick", "gravel",
                                   "grass")


def test_the_original_is_the_best_shot_of_its_burst(client_factory, tmp_path):
    """Members are compared on their common field of view at a common size (sharpness, noise, exposure and
    BRISQUE measured again there), and resolution and JPEG quality count.

    A copy that holds less (no more pixels, no better JPEG quality, the same exposure, no more detail) never
    ranks above its source. Over 16 real photos the original wins all 16 groups, gate-only and with the real
    BRISQUE and NIQE (asserted: >= 15, the 90 % the "scores that stay honest" issue asks for); by score alone
    it won 15 and 13: moon's crop hides a mild grid its original shows, hubble_deep_field's crop reads 0.5
    grey levels less noise, grass's q70 re-save smooths blades that read as noise. The darker soft copy never
    wins."""
    import shutil

    from tests.helpers import SHARED_WEIGHTS

    configs = [({"model_dir": tmp_path / "no-models"}, 15)]  # 16 measured
    if (SHARED_WEIGHTS / "brisque_libsvm_live").is_dir() and (SHARED_WEIGHTS / "niqe_live").is_dir():
        md = tmp_path / "models"
        shutil.copytree(SHARED_WEIGHTS / "brisque_libsvm_live", md / "brisque")
        shutil.copytree(SHARED_WEIGHTS / "niqe_live", md / "niqe")
        configs.append(({"model_dir": md}, 15))  # 16 measured
    for cfg, wins in configs:
        c = client_factory(**cfg)
        winners = {}
        for name in BEST_SHOT_PHOTOS:
            shots = burst(photo(name))
            body = c.post("/v1/cluster/images",
                          json={"images": [{"base64": b64(v), "image_id": k} for k, v in shots.items()]}).json()
            [group] = [g for g in body["groups"] if "orig" in {m["image_id"] for m in g["members"]}]
            winners[name] = group["best_image_id"]
            why = {m["image_id"]: m["rejected_reason"] for m in group["members"]}
            if name == "astronaut":
                assert group["best_image_id"] == "orig"
                assert "JPEG quality 70 vs 92" in why["small"] and "70% of the resolution" in why["small"]
        assert sum(w == "orig" for w in winners.values()) >= wins, (cfg, winners)
        assert "darksoft" not in winners.values(), (cfg, winners)


def test_a_sharper_smaller_copy_still_wins(client):
    """The copy rule is not "the largest wins": when the full-size file is the soft one and a smaller copy was
    made from the sharp master, the smaller copy is sharper at the common size, so it is no lesser copy and
    wins on its score; the soft original is rejected as blurry or less sharp."""
    for name in ("astronaut", "coffee", "motorcycle_left"):
        rgb = photo(name)
        h, w = rgb.shape[:2]
        shots = {"soft_full": encode(gaussian_blur(rgb, 2.5), quality=92),
                 "sharp_small": encode(cv2.resize(rgb, (int(w * 0.8), int(h * 0.8)), interpolation=cv2.INTER_AREA),
                                       quality=90)}
        body = client.post("/v1/cluster/images",
                           json={"images": [{"base64": b64(v), "image_id": k} for k, v in shots.items()]}).json()
        [group] = body["groups"]
        assert group["best_image_id"] == "sharp_small", (name, group)
        [loser] = [m for m in group["members"] if not m["is_best"]]
        why = loser["rejected_reason"]
        assert "copy" not in why and ("blurry" in why or "less sharp" in why), loser


def test_jpeg_quality_is_read_from_the_quantisation_tables(client):
    from PIL import Image

    from app.imaging.jpeg import estimate_quality

    for q in (98, 92, 85, 70, 50, 30, 10):
        data = encode(photo("coffee"), quality=q)
        assert estimate_quality(Image.open(io.BytesIO(data)).quantization) == q
        assert client.post("/v1/analyze", json={"image": {"base64": b64(data)}}).json()["result"]["jpeg_quality"] == q
    png = client.post("/v1/analyze", json={"image": {"base64": b64(encode(photo("coffee"), "PNG"))}}).json()
    assert png["result"]["jpeg_quality"] is None


def test_bursts_are_grouped_without_clip_by_phash_and_mobilenet(client_factory, tmp_path):
    """Bursts of 8 real photos (original, 70 % JPEG q70 re-save, 6 % crop, darker soft copy) and 6 other
    photos: with the real MobileNetV1 embedding the linked pairs have precision and recall >= 0.95."""
    import itertools
    import shutil

    from tests.helpers import SHARED_WEIGHTS

    src = SHARED_WEIGHTS / "imagenet_mobilenet_tflite"
    if not src.is_dir():
        pytest.skip(f"real weights not available: {src} is missing")
    md = tmp_path / "models"
    shutil.copytree(src, md / "mobilenet")
    images = {}
    for name in BURST_PHOTOS:
        for kind, data in burst(photo(name)).items():
            images[f"{name}/{kind}"] = data
    for name in ("hubble_deep_field", "retina", "brick", "gravel", "colorwheel", "clock"):
        images[f"{name}/orig"] = encode(photo(name), quality=92)
    payload = {"images": [{"base64": b64(v), "image_id": k} for k, v in images.items()]}
    truth = {(a, b) for a, b in itertools.combinations(sorted(images), 2) if a.split("/")[0] == b.split("/")[0]}

    def linked(body):
        pairs = set()
        for g in body["groups"]:
            pairs |= set(itertools.combinations(sorted(m["image_id"] for m in g["members"]), 2))
        return pairs

    bare = client_factory(max_cluster_images=64, model_dir=tmp_path / "no-models")
    phash_only = linked(bare.post("/v1/cluster/images", json=payload).json())
    body = client_factory(model_dir=md, max_cluster_images=64).post("/v1/cluster/images", json=payload).json()
    assert body["features_used"] == ["phash", "mobilenet"]
    found = linked(body)
    precision = len(found & truth) / max(1, len(found))
    recall = len(found & truth) / len(truth)
    assert precision >= 0.95 and recall >= 0.95, (precision, recall, sorted(truth - found)[:6])
    assert len(phash_only - truth) == 0  # the hash alone links nothing wrong either ...
    # ... and the embedding links the copies on its own: every burst group has MobileNet links
    assert sum("mobilenet" in g["linked_by"] for g in body["groups"]) == len(BURST_PHOTOS)
