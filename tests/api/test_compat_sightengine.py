"""Sightengine's image check at GET/POST /1.0/check.json (models=quality), over real HTTP, as Sightengine's
own clients call it: client-python's GET with `url` and its multipart `media` file, client-php's POST with
the credentials in the query string and a `media` part without a file name, a urlencoded `url`. The
response and failure shapes are Sightengine's documented ones (fixtures below); the score is Loupe's own
quality score (the /v1/analyze one, BRISQUE and NIQE joining it when ../shared/weights has them)."""

from __future__ import annotations

import io
import re
import shutil
import struct
import time
import uuid

import httpx
import numpy as np
import pytest
from PIL import Image

from app.main import create_app
from tests.api.conftest import make_settings
from tests.helpers import SHARED_WEIGHTS, encode, gaussian_blur, photo, upscale
from tests.servers import ImageServer, LiveServer

CHECK = "/1.0/check.json"

#: Sightengine's documented answer to `models=quality` (sightengine.com/docs, "Image quality")
SUCCESS_FIXTURE = {
    "status": "success",
    "request": {"id": "req_1OjggusalNb2S7MxwLq1h", "timestamp": 1509132120.6988, "operations": 1},
    "quality": {"score": 0.87},
    "media": {"id": "med_1OjgEqvJtOhgBNyRcSOf4", "uri": "https://sightengine.com/assets/img/examples/example-fac-1000.jpg"},
}
#: Sightengine's documented failure (sightengine.com/docs, "Errors")
FAILURE_FIXTURE = {
    "status": "failure",
    "request": {"id": "req_VjyxevVQYXQZ1HMbnwtn", "timestamp": 1471762434.0244, "operations": 0},
    "error": {"type": "credentials_error", "code": 1, "message": "Incorrect API user or API secret"},
}
MEDIA_ID = re.compile(r"^med_[A-Za-z0-9]{21}$")
#: BRISQUE and NIQE take part in the score when the real weights are there (the score exists without them)
QUALITY_WEIGHTS = {"brisque": "brisque_libsvm_live", "niqe": "niqe_live"}
CREDS = {"api_user": "1234567", "api_secret": "abcdefgh"}


def same_shape(body: dict, fixture: dict, exact_keys: bool = True) -> None:
    """`body` has the fixture's keys (exactly, at the top), each of the fixture's JSON type."""
    if exact_keys:
        assert set(body) == set(fixture), (sorted(body), sorted(fixture))
    for key, example in fixture.items():
        assert key in body, (key, body)
        if isinstance(example, dict):
            assert isinstance(body[key], dict), (key, body)
            same_shape(body[key], example, exact_keys=False)
        elif isinstance(example, float):
            assert isinstance(body[key], (int, float)) and not isinstance(body[key], bool), (key, body[key])
        else:
            assert type(body[key]) is type(example), (key, body[key])


def assert_success(r: httpx.Response, uri: str) -> float:
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    same_shape(body, SUCCESS_FIXTURE)
    assert body["status"] == "success"
    assert set(body["request"]) == {"id", "timestamp", "operations"}
    assert body["request"]["id"].startswith("req_") and len(body["request"]["id"]) > 4
    assert abs(body["request"]["timestamp"] - time.time()) < 60
    assert body["request"]["operations"] == 1
    assert set(body["quality"]) == {"score"} and 0 <= body["quality"]["score"] <= 1
    assert set(body["media"]) == {"id", "uri"}
    assert MEDIA_ID.match(body["media"]["id"]), body["media"]["id"]
    assert body["media"]["uri"] == uri
    return body["quality"]["score"]


def assert_failure(r: httpx.Response, status: int | tuple[int, ...], kind: str, code: int, *words: str) -> dict:
    statuses = status if isinstance(status, tuple) else (status,)
    assert r.status_code in statuses, (r.status_code, r.text)
    body = r.json()
    same_shape(body, FAILURE_FIXTURE)
    assert body["status"] == "failure"
    assert body["request"]["id"].startswith("req_") and body["request"]["operations"] == 0
    assert abs(body["request"]["timestamp"] - time.time()) < 60
    err = body["error"]
    assert err["type"] == kind and type(err["code"]) is int and err["code"] == code, err
    assert isinstance(err["message"], str) and err["message"]
    for word in words:
        assert word in err["message"], (word, err["message"])
    return err


def multipart_without_filename(fields: dict[str, bytes], part_type: str | None = None) -> tuple[bytes, str]:
    """A multipart body whose parts carry no `filename` (what Guzzle / client-php send for `media`)."""
    boundary = uuid.uuid4().hex
    out = b""
    for name, value in fields.items():
        out += f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n'.encode()
        if part_type:
            out += f"Content-Type: {part_type}\r\n".encode()
        out += b"\r\n" + value + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return out, f"multipart/form-data; boundary={boundary}"


# -- servers ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("sightengine-models")
    for sub, src in QUALITY_WEIGHTS.items():
        if (SHARED_WEIGHTS / src).is_dir():
            shutil.copytree(SHARED_WEIGHTS / src, root / sub)
    return root


@pytest.fixture(scope="module")
def serve(model_dir):
    """serve(**settings) → a LiveServer, one per distinct settings for the whole module."""
    started: dict[tuple, LiveServer] = {}

    def get(**overrides) -> LiveServer:
        key = tuple(sorted(overrides.items()))
        if key not in started:
            started[key] = LiveServer(create_app(make_settings(None, model_dir=model_dir, **overrides)))
        return started[key]

    yield get
    for s in started.values():
        s.close()


@pytest.fixture(scope="module")
def live(serve):
    return serve(allow_private_urls=True)


@pytest.fixture(scope="module")
def images():
    server = ImageServer()
    sharp = photo("astronaut")
    server.bytes("/astronaut.jpg", encode(sharp))
    server.bytes("/astronaut-blurred.jpg", encode(gaussian_blur(sharp, 6)))
    server.bytes("/coffee.jpg", encode(photo("coffee")))
    server.bytes("/coffee-blurred.jpg", encode(gaussian_blur(photo("coffee"), 6)))
    server.bytes("/notes.txt", b"these are notes, not an image\n" * 20, "text/plain")
    server.status("/gone.jpg", 404)
    yield server
    server.close()


def get(server: LiveServer, **params) -> httpx.Response:
    return httpx.get(server.url + CHECK, params=params, timeout=60)


def post(server: LiveServer, **kw) -> httpx.Response:
    return httpx.post(server.url + CHECK, timeout=60, **kw)


# -- success ---------------------------------------------------------------------------------------------------


def test_get_with_url_as_client_python_sends_it(live, images):
    """client-python: `client.check('quality').set_url(url)` → GET ?url=…&models=quality&api_user=…&api_secret=…"""
    url = images.url("/astronaut.jpg") + "?size=large&v=2"  # the uri is echoed exactly, query string included
    r = get(live, url=url, models="quality", **CREDS)
    score = assert_success(r, uri=url)
    # the same score as Loupe's own /v1/analyze for the same image: one pipeline, not a second one
    v1 = httpx.post(live.url + "/v1/analyze", json={"image": {"url": url}}, timeout=60)
    assert v1.status_code == 200, v1.text
    assert score == pytest.approx(v1.json()["result"]["quality"]["score"], abs=1e-9)
    # a new media id for every request
    again = get(live, url=url, models="quality", **CREDS).json()
    assert again["media"]["id"] != r.json()["media"]["id"] and again["quality"]["score"] == score


@pytest.mark.parametrize("name", ["astronaut", "coffee"])
def test_a_sharp_photo_scores_higher_than_its_blurred_copy(live, images, name):
    sharp = assert_success(r := get(live, url=images.url(f"/{name}.jpg"), models="quality"), r.json()["media"]["uri"])
    blurred_url = images.url(f"/{name}-blurred.jpg")
    blurred = assert_success(get(live, url=blurred_url, models="quality"), blurred_url)
    assert sharp > blurred + 0.1, (name, sharp, blurred)
    assert sharp >= 0.5 > blurred, (name, sharp, blurred)  # either side of Sightengine's suggested 0.5 threshold


def test_post_multipart_file_as_client_python_sends_it(live, images):
    """client-python: `check('quality').set_file('/path/astro.jpg')` → multipart `media` file + form fields."""
    data = encode(photo("astronaut"))
    r = post(live, files={"media": ("astro.jpg", data, "image/jpeg")}, data={"models": "quality", **CREDS})
    score = assert_success(r, uri="astro.jpg")
    assert score == get(live, url=images.url("/astronaut.jpg"), models="quality").json()["quality"]["score"]


@pytest.mark.parametrize("part_type", [None, "application/octet-stream"])
@pytest.mark.parametrize("size", ["small", "over 1 MiB"])
def test_post_as_client_php_sends_it_media_part_without_filename(live, images, size, part_type):
    """client-php (Guzzle): api_user / api_secret / models in the QUERY string of a POST, and the image as a
    multipart `media` part without a file name (raw bytes; Node's form-data adds application/octet-stream).
    Starlette treats such a part as a text field, capped at 1 MiB by default: an image above that must pass."""
    data = (encode(photo("coffee")) if size == "small"
            else encode(upscale(photo("coffee"), 1200), "PNG"))
    assert (len(data) > 1 << 20) == (size != "small")
    body, content_type = multipart_without_filename({"media": data}, part_type)
    assert b"filename" not in body.split(b"\r\n\r\n", 1)[0]
    r = post(live, params={"models": "quality", **CREDS}, content=body, headers={"Content-Type": content_type})
    score = assert_success(r, uri="media")
    # the bytes arrived intact: the same score as the same bytes fetched from a URL
    url = images.bytes(f"/php-{size.replace(' ', '-')}.img", data, "image/png" if size != "small" else "image/jpeg")
    assert score == get(live, url=url, models="quality").json()["quality"]["score"]


def test_post_urlencoded_url(live, images):
    url = images.url("/coffee.jpg")
    r = post(live, data={"url": url, "models": "quality", **CREDS})
    assert r.request.headers["content-type"] == "application/x-www-form-urlencoded"
    assert assert_success(r, uri=url) == get(live, url=url, models="quality").json()["quality"]["score"]


# -- failures --------------------------------------------------------------------------------------------------


def test_argument_errors(live, images):
    url = images.url("/astronaut.jpg")
    data = encode(photo("chelsea"))
    assert_failure(get(live, url=url, **CREDS), 400, "argument_error", 51, "models")
    assert_failure(post(live, files={"media": ("c.jpg", data, "image/jpeg")}, data=CREDS), 400, "argument_error", 51)
    assert_failure(get(live, models="quality", **CREDS), 400, "argument_error", 4)
    assert_failure(post(live, data={"models": "quality"}), 400, "argument_error", 4)
    assert_failure(post(live, files={"media": ("c.jpg", data, "image/jpeg")}, data={"models": "quality", "url": url}),
                   400, "argument_error", 5)
    err = assert_failure(get(live, url=url, models="nudity-2.1"), 400, "argument_error", 21, "nudity-2.1",
                         "does not offer")
    assert "unknown" not in err["message"]
    err = assert_failure(get(live, url=url, models="quality,foo"), 400, "argument_error", 21, "unknown model(s): foo")
    assert "does not offer" not in err["message"]
    err = assert_failure(get(live, url=url, models="quality,nudity-2.1,foo"), 400, "argument_error", 21,
                         "does not offer: nudity-2.1", "unknown model(s): foo")
    # Loupe's envelope fields ride along
    assert err["request_id"] and err["loupe_type"] == "validation_error"


def test_media_errors(live, images):
    assert_failure(get(live, url=images.url("/gone.jpg"), models="quality"), 502, "media_error", 3)
    assert_failure(get(live, url=images.url("/notes.txt"), models="quality"), (400, 415), "media_error", 6)
    data = b"plain text, not an image\n" * 10
    assert_failure(post(live, files={"media": ("notes.txt", data, "text/plain")}, data={"models": "quality"}),
                   (400, 415), "media_error", 6)


def test_private_address_is_refused_without_allow_private_urls(serve, images):
    guarded = serve()  # ALLOW_PRIVATE_URLS off: the SSRF guard refuses 127.0.0.1
    err = assert_failure(get(guarded, url=images.url("/astronaut.jpg"), models="quality"), 400, "media_error", 3)
    assert err["loupe_type"] == "url_not_allowed"


def test_too_large_is_413_media_error_2(serve):
    small = serve(max_image_mb=0.05)  # 52,428 bytes per image; the body cap is about 1.1 MB
    big = encode(photo("astronaut"), "PNG")  # about 420 KB
    assert 60_000 < len(big) < 1 << 20
    # a file upload over MAX_IMAGE_MB
    assert_failure(post(small, files={"media": ("a.png", big, "image/png")}, data={"models": "quality"}),
                   413, "media_error", 2)
    # a part without a file name, just over MAX_IMAGE_MB
    body, ctype = multipart_without_filename({"media": big[:60_000], "models": b"quality"})
    assert_failure(post(small, content=body, headers={"Content-Type": ctype}), 413, "media_error", 2)
    # a body over the route's cap, refused before it is read
    huge = encode(upscale(photo("coffee"), 1200), "PNG")
    assert_failure(post(small, files={"media": ("c.png", huge, "image/png")}, data={"models": "quality"}),
                   413, "media_error", 2)


def test_part_without_filename_well_over_the_limit_is_413(serve):
    small = serve(max_image_mb=0.05)
    big = encode(photo("astronaut"), "PNG")  # about 420 KB: far over 52 KB, under the 1.1 MB body cap
    body, ctype = multipart_without_filename({"media": big, "models": b"quality"})
    assert_failure(post(small, content=body, headers={"Content-Type": ctype}), 413, "media_error", 2)


def utf8_valid_bmp() -> bytes:
    """A real 256x256 24-bit BMP whose bytes are also valid UTF-8 with multi-byte characters (every pixel is a
    two-byte character `\\xc3\\x80-\\xbf` and an ASCII byte; the header's fields are all below 0x80)."""
    rng = np.random.default_rng(0)
    second, third = rng.integers(0x80, 0xC0, 256 * 256), rng.integers(0, 0x80, 256 * 256)
    pixels = np.stack([np.full(256 * 256, 0xC3), second, third], axis=1).astype(np.uint8).tobytes()
    header = b"BM" + struct.pack("<IHHI", 0, 0, 0, 54) + struct.pack("<IiiHHIIiiII", 40, 256, 256, 1, 24, 0, 0, 0, 0, 0, 0)
    return header + pixels


def test_part_without_filename_keeps_bytes_that_are_valid_utf8(live):
    bmp = utf8_valid_bmp()
    bmp.decode("utf-8")  # valid UTF-8 …
    assert Image.open(io.BytesIO(bmp)).size == (256, 256)  # … and a valid image
    with_name = post(live, files={"media": ("x.bmp", bmp, "image/bmp")}, data={"models": "quality"})
    score = assert_success(with_name, uri="x.bmp")
    body, ctype = multipart_without_filename({"media": bmp, "models": b"quality"})
    assert assert_success(post(live, content=body, headers={"Content-Type": ctype}), uri="media") == score


# -- auth, rate limit, metrics, OpenAPI ------------------------------------------------------------------------


def test_auth_as_on_v1_with_api_secret_as_the_key(serve, images):
    locked = serve(api_keys="s3cret", allow_private_urls=True)
    url = images.url("/coffee.jpg")
    assert_failure(get(locked, url=url, models="quality", api_user="u", api_secret="wrong"), 401, "credentials_error", 1)
    assert_failure(get(locked, url=url, models="quality"), 401, "credentials_error", 1)
    assert_failure(post(locked, data={"url": url, "models": "quality", "api_secret": "wrong"}), 401,
                   "credentials_error", 1)
    assert_success(get(locked, url=url, models="quality", api_user="u", api_secret="s3cret"), url)
    assert_success(post(locked, data={"url": url, "models": "quality", "api_user": "u", "api_secret": "s3cret"}), url)
    data = encode(photo("chelsea"))
    assert_success(post(locked, files={"media": ("c.jpg", data, "image/jpeg")},
                        data={"models": "quality", "api_secret": "s3cret"}), "c.jpg")
    # client-php: the secret in the query string of a POST
    body, ctype = multipart_without_filename({"media": data})
    assert_success(post(locked, params={"models": "quality", "api_user": "u", "api_secret": "s3cret"}, content=body,
                        headers={"Content-Type": ctype}), "media")
    # Loupe's own header works too, without api_secret
    assert_success(httpx.get(locked.url + CHECK, params={"url": url, "models": "quality"},
                             headers={"X-Api-Key": "s3cret"}, timeout=60), url)
    assert_success(httpx.get(locked.url + CHECK, params={"url": url, "models": "quality"},
                             headers={"Authorization": "Bearer s3cret"}, timeout=60), url)


def test_rate_limit_is_usage_limit_with_retry_after(serve, images):
    limited = serve(rate_limit="2/minute", allow_private_urls=True)
    url = images.url("/coffee.jpg")
    for _ in range(2):
        assert_success(get(limited, url=url, models="quality"), url)
    r = get(limited, url=url, models="quality")
    err = assert_failure(r, 429, "usage_limit", 32)
    assert int(r.headers["Retry-After"]) >= 1 and err["loupe_type"] == "rate_limited"


def test_metrics_count_the_route(live, images):
    assert get(live, url=images.url("/coffee.jpg"), models="quality").status_code == 200
    metrics = httpx.get(live.url + "/metrics", timeout=30)
    assert metrics.status_code == 200
    assert 'route="/1.0/check.json"' in metrics.text
    assert re.search(r'loupe_http_requests_total\{method="GET",route="/1\.0/check\.json",status="200"\} [1-9]',
                     metrics.text), metrics.text[:2000]


def test_openapi_lists_both_operations_under_their_tag(live):
    doc = httpx.get(live.url + "/openapi.json", timeout=30).json()
    ops = doc["paths"][CHECK]
    assert set(ops) >= {"get", "post"}
    for method in ("get", "post"):
        assert ops[method]["tags"] == ["compat: Sightengine"], ops[method]["tags"]
    assert "multipart/form-data" in ops["post"]["requestBody"]["content"]
    assert {p["name"] for p in ops["get"]["parameters"]} >= {"models", "url", "api_user", "api_secret"}
