"""HEIC, AVIF and camera RAW through the real app over real HTTP: analyses, previews, byte limits, bad files."""

from __future__ import annotations

import base64

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.factories.formats import avif_bytes, claim_size_dng, claim_size_heic, displayed, dng_bytes, heic_bytes
from tests.helpers import encode, photo


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def files():
    rgb = photo("astronaut")
    preview = np.asarray(Image.fromarray(rgb).resize((384, 384)))
    return {"heic": heic_bytes(rgb, orientation=6), "avif": avif_bytes(photo("coffee")), "dng": dng_bytes(rgb),
            "dng_preview": dng_bytes(rgb, preview=preview), "rgb": rgb}


@pytest.fixture
def loupe(live_factory):
    server = live_factory(allow_private_urls=True)
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


def test_every_format_is_analysed(loupe, files, image_server):
    heic = loupe.post("/v1/analyze", files={"file": ("IMG_0001.HEIC", files["heic"], "image/heic")}).json()["result"]
    assert heic["format"] == "HEIF" and (heic["width_px"], heic["height_px"]) == (512, 512)
    assert heic["blur"]["status"] == "ok" and heic["quality"]["score"] is not None and heic["decoded_from"] is None
    avif = loupe.post("/v1/analyze", json={"image": {"base64": b64(files["avif"])}}).json()["result"]
    assert avif["format"] == "AVIF" and (avif["width_px"], avif["height_px"]) == (600, 400)
    url = image_server.bytes("/DSC_0001.dng", files["dng"], "image/x-adobe-dng")
    dng = loupe.post("/v1/analyze", json={"image": {"url": url}}).json()["result"]
    assert dng["format"] == "DNG" and dng["decoded_from"] == "raw_demosaic" and dng["jpeg_quality"] is None
    assert dng["exposure"]["status"] == "ok" and (dng["width_px"], dng["height_px"]) == (512, 512)
    prev = loupe.post("/v1/analyze", json={"image": {"base64": b64(files["dng_preview"])}}).json()["result"]
    assert prev["decoded_from"] == "raw_demosaic"  # a 384 px preview is smaller than ANALYSIS_MAX_DIM (1024) …
    gate = loupe.post("/v1/quality", files={"file": ("x.dng", files["dng_preview"], "application/octet-stream")})
    assert gate.status_code == 200 and gate.json()["width"] == 512


def test_the_preview_endpoint_makes_a_jpeg_of_any_format(loupe, files):
    r = loupe.post("/v1/preview", files={"file": ("IMG_0001.HEIC", files["heic"], "image/heic")}, data={"max_dim": "256"})
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    assert r.headers["x-loupe-format"] == "HEIF" and (r.headers["x-loupe-width"], r.headers["x-loupe-height"]) == ("512", "512")
    img = Image.open(__import__("io").BytesIO(r.content))
    assert img.format == "JPEG" and max(img.size) == 256
    want = displayed(files["rgb"], 6)  # upright, as the phone showed it
    small = np.asarray(Image.fromarray(want).resize(img.size))
    assert np.abs(np.asarray(img.convert("RGB")).astype(int) - small).mean() < 12
    r = loupe.post("/v1/preview", json={"image": {"base64": b64(files["dng_preview"])}, "max_dim": 300})
    assert r.status_code == 200 and r.headers["x-loupe-decoded-from"] == "raw_preview"
    assert max(Image.open(__import__("io").BytesIO(r.content)).size) == 300
    bad = loupe.post("/v1/preview", json={"image": {"base64": b64(b"no picture here")}})
    assert bad.status_code == 415 and bad.json()["error"]["type"] == "unsupported_media_type"
    assert loupe.post("/v1/preview", json={"image": {"base64": b64(files["heic"])}, "max_dim": 4096}).status_code == 422


def test_raw_files_have_their_own_byte_limit(live_factory, files, image_server):
    """MAX_IMAGE_MB 0.2 and MAX_RAW_MB 1: the 0.5 MB DNG passes, a 0.3 MB PNG does not, nor a 1.2 MB DNG —
    by upload, by URL and as base64, each refusal naming its setting."""
    server = live_factory(allow_private_urls=True, max_image_mb=0.2, max_raw_mb=1.0)
    dng = files["dng"]
    assert 0.2 * 2**20 < len(dng) < 2**20
    png = encode(photo("chelsea"), "PNG")
    assert 0.2 * 2**20 < len(png) < 2**20
    big_rgb = np.asarray(Image.fromarray(photo("astronaut")).resize((800, 800)))
    big_dng = dng_bytes(big_rgb)
    assert len(big_dng) > 2**20
    with httpx.Client(base_url=server.url, timeout=60) as client:
        for how in ("upload", "url", "base64"):
            def send(data: bytes, name: str) -> httpx.Response:
                if how == "upload":
                    return client.post("/v1/analyze", files={"file": (name, data, "application/octet-stream")})
                if how == "url":
                    return client.post("/v1/analyze", json={"image": {"url": image_server.bytes(f"/{how}-{name}", data)}})
                return client.post("/v1/analyze", json={"image": {"base64": b64(data)}})

            ok = send(dng, "a.dng")
            assert ok.status_code == 200 and ok.json()["result"]["decoded_from"] == "raw_demosaic", (how, ok.text)
            refused = send(png, "b.png")
            assert refused.status_code == 413 and "MAX_IMAGE_MB" in refused.json()["error"]["message"], (how, refused.text)
            too_big = send(big_dng, "c.dng")
            assert too_big.status_code == 413, (how, too_big.text)
            assert "MAX_RAW_MB" in too_big.json()["error"]["message"] or how == "base64", (how, too_big.text)


def test_bad_files_are_4xx_in_the_envelope_and_never_fail_the_batch(loupe, files):
    heic, dng = files["heic"], files["dng"]
    cases = {
        "truncated.heic": (heic[: len(heic) // 2], 400, "invalid_image"),
        "truncated.avif": (files["avif"][: len(files["avif"]) // 2], 400, "invalid_image"),
        "truncated.dng": (dng[: len(dng) // 3], 400, "invalid_image"),
        "bomb.heic": (claim_size_heic(heic, 20000, 20000), 413, "image_too_large"),
        "huge.dng": (claim_size_dng(dng, 30000, 30000), 413, "image_too_large"),
        "fake.NEF": (b"not a raw file at all " * 40, 415, "unsupported_media_type"),
    }
    for name, (data, status, kind) in cases.items():
        r = loupe.post("/v1/analyze", files={"file": (name, data, "application/octet-stream")})
        assert r.status_code == status and r.json()["error"]["type"] == kind, (name, r.text)
    batch = loupe.post("/v1/analyze/batch", json={"images": [{"base64": b64(d), "image_id": n} for n, (d, _, _) in cases.items()]
                                                  + [{"base64": b64(heic), "image_id": "good.heic"}]})
    assert batch.status_code == 200
    results = {r["image_id"]: r for r in batch.json()["results"]}
    assert results["good.heic"]["error"] is None and results["good.heic"]["format"] == "HEIF"
    assert all(results[n]["error"]["status_code"] == cases[n][1] for n in cases)
