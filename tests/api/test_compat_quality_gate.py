"""The image-quality-gate service's clients on Loupe: POST /quality with a multipart `file`, GET /version,
its settings as aliases (a conflict stops the service at start-up), its errors in FastAPI's `{"detail"}`.

The request is the gate's own integration test's (tests/integration/test_api_quality.py of
BrianKYildirim/image-quality-gate): `files={"file": ("sharp_small.jpg", f, "image/jpeg")}`, answered with
`blur_score, brightness, width, height, is_ok, thresholds: {blur_min, bright_min, bright_max}`.
"""

from __future__ import annotations

import os
import subprocess
import sys

import httpx
import pytest
from pydantic import ValidationError

from app.core.config import Settings
from tests.helpers import PROJECT_ROOT, encode, exposure, gaussian_blur, photo

GATE_KEYS = {"blur_score", "brightness", "width", "height", "is_ok", "thresholds"}


def upload(client, data: bytes, name: str = "sharp_small.jpg", content_type: str = "image/jpeg", **kw) -> httpx.Response:
    return client.post("/quality", files={"file": (name, data, content_type)}, **kw)


@pytest.fixture
def gate(live_factory):
    server = live_factory()
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


def test_the_gate_request_answers_the_gate_fields(gate):
    r = upload(gate, encode(photo("camera")))
    assert r.status_code == 200, r.text
    body = r.json()
    assert GATE_KEYS <= set(body)
    assert isinstance(body["blur_score"], float) and body["blur_score"] > 0
    assert isinstance(body["brightness"], float) and 0 <= body["brightness"] <= 255
    assert (body["width"], body["height"]) == (512, 512) and body["is_ok"] is True
    t = body["thresholds"]
    assert (t["blur_min"], t["bright_min"], t["bright_max"]) == (100.0, 50.0, 205.0)
    assert t["blur_min"] == t["blur_threshold"]
    # the same gate as /v1/quality: one pipeline
    v1 = gate.post("/v1/quality", files={"file": ("sharp_small.jpg", encode(photo("camera")), "image/jpeg")}).json()
    assert (v1["blur_score"], v1["brightness"], v1["is_ok"]) == (body["blur_score"], body["brightness"], body["is_ok"])


def test_is_ok_follows_the_thresholds_it_returns(gate):
    blurred = upload(gate, encode(gaussian_blur(photo("camera"), 6))).json()
    assert blurred["is_ok"] is False and blurred["blur_score"] < blurred["thresholds"]["blur_min"]
    assert any(r.startswith("blurry") for r in blurred["reasons"])
    dark = upload(gate, encode(exposure(photo("coffee"), 0.15))).json()
    assert dark["is_ok"] is False and dark["brightness"] < dark["thresholds"]["bright_min"]
    assert any(r.startswith("underexposed") for r in dark["reasons"])


def test_the_gate_settings_are_aliases(live_factory):
    """BLUR_MIN raises the bar (camera's blur_score is about 1200 at the analysis size), RESIZE_MAX_DIM sets
    the analysis size, MAX_UPLOAD_MB the upload limit."""
    server = live_factory(blur_min=5000.0, resize_max_dim=256, max_upload_mb=0.05)
    with httpx.Client(base_url=server.url, timeout=60) as client:
        small = encode(photo("camera")[::2, ::2], quality=80)
        assert len(small) < 0.05 * 1024 * 1024
        body = upload(client, small).json()
        assert body["thresholds"]["blur_min"] == 5000.0 and body["thresholds"]["analysis_max_dim"] == 256
        assert body["is_ok"] is False and body["blur_score"] < 5000
        big = encode(photo("astronaut"), "PNG")
        r = upload(client, big, "big.png", "image/png")
        assert r.status_code == 413
        assert isinstance(r.json()["detail"], str) and r.json()["error"]["type"] in ("image_too_large", "payload_too_large")


def test_alias_and_loupe_name_in_conflict_stop_the_start(monkeypatch):
    monkeypatch.setenv("BLUR_MIN", "120")
    monkeypatch.setenv("BLUR_THRESHOLD", "100")
    with pytest.raises(ValidationError) as err:
        Settings(_env_file=None)
    assert "BLUR_MIN=120" in str(err.value) and "BLUR_THRESHOLD=100" in str(err.value)
    monkeypatch.setenv("BLUR_THRESHOLD", "120")  # the same value is no conflict
    assert Settings(_env_file=None).blur_threshold == 120
    monkeypatch.delenv("BLUR_THRESHOLD")
    monkeypatch.setenv("LOUPE_MAX_UPLOAD_MB", "6")  # the LOUPE_ prefix works for aliases too
    monkeypatch.setenv("MAX_UPLOAD_MB", "")  # empty = not set
    s = Settings(_env_file=None)
    assert (s.blur_threshold, s.max_image_mb) == (120, 6)


def test_the_service_refuses_to_start_with_a_conflict():
    """The real start: importing the app (what `uvicorn app.main:app` does) fails, naming both settings,
    and prints no other setting (an API key must not reach the logs)."""
    env = {**os.environ, "RESIZE_MAX_DIM": "1600", "ANALYSIS_MAX_DIM": "1024", "API_KEY": "do-not-print-me",
           "LOUPE_ENV_PREFIX_ONLY": ""}
    proc = subprocess.run([sys.executable, "-c", "import app.main"], cwd=PROJECT_ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode != 0
    assert "RESIZE_MAX_DIM=1600" in proc.stderr and "ANALYSIS_MAX_DIM=1024" in proc.stderr
    assert "do-not-print-me" not in proc.stderr


def test_version_and_health(live_factory):
    server = live_factory(app_name="photo-gate", app_version="2.3.1")
    with httpx.Client(base_url=server.url, timeout=30) as client:
        assert client.get("/version").json() == {"app": "photo-gate", "version": "2.3.1"}
        assert client.get("/health").json()["status"] in ("ok", "degraded")
        v1 = client.get("/v1/version").json()
        assert (v1["name"], v1["app_version"]) == ("photo-gate", "2.3.1") and v1["version"] != "2.3.1"
    default = live_factory()
    from app.core.config import VERSION

    assert httpx.get(f"{default.url}/version").json() == {"app": "loupe", "version": VERSION}


def test_errors_read_as_the_gate_wrote_them(gate):
    not_image = upload(gate, b"plain text, not a picture", "notes.txt", "text/plain")
    assert not_image.status_code == 415
    assert isinstance(not_image.json()["detail"], str) and not_image.json()["error"]["type"] == "unsupported_media_type"
    truncated = upload(gate, encode(photo("coffee"))[:2000])
    assert truncated.status_code == 400 and truncated.json()["error"]["type"] == "invalid_image"
    assert isinstance(truncated.json()["detail"], str)
    no_file = gate.post("/quality", files={"other": ("a.jpg", b"x", "image/jpeg")})
    assert no_file.status_code == 422
    missing = gate.post("/quality", data={"image_id": "x"}, files={"x": ("a", b"", "text/plain")})
    assert missing.status_code == 422 and missing.json()["error"]["type"] == "validation_error"


def test_auth_rate_limit_and_metrics_apply(live_factory):
    server = live_factory(api_keys="k1", rate_limit="2/minute")
    with httpx.Client(base_url=server.url, timeout=60) as client:
        denied = upload(client, encode(photo("camera")))
        assert denied.status_code == 401 and denied.json()["error"]["type"] == "unauthorized"
        assert isinstance(denied.json()["detail"], str)
        for _ in range(2):
            assert upload(client, encode(photo("camera")), headers={"X-Api-Key": "k1"}).status_code == 200
        limited = upload(client, encode(photo("camera")), headers={"X-Api-Key": "k1"})
        assert limited.status_code == 429 and "Retry-After" in limited.headers and "detail" in limited.json()
        assert client.get("/version").status_code == 200  # open, like /v1/version
        assert 'route="/quality"' in client.get("/metrics").text
