"""image_tagger's API: GET /predictions?url=…&top=…&minconf=… and its version document at GET /, over real
HTTP with the real ImageNet tagger (MobileNetV2 from ../shared/weights). Labels are image_tagger's Keras
`decode_predictions` names (underscores, never spaces); top/minconf follow its rules; errors come in its
`{"error": {"type", "detail"}}` shape with its statuses; GET / answers JSON to HTTP clients and the try-it
page to browsers."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import pytest

from app.main import create_app
from tests.api.conftest import make_settings
from tests.helpers import SHARED_WEIGHTS, encode, photo
from tests.servers import ImageServer, LiveServer

TAGS_WEIGHTS = "imagenet_mobilenet_tflite"
STATIC_PAGE = Path(__file__).resolve().parents[2] / "app" / "static" / "index.html"

#: image_tagger's README: GET /predictions?url=… answers
README_FIXTURE = {"url": "https://example.com/dog.jpg", "predictions": [{"label": "dog", "confidence": 0.78}]}
#: image_tagger's GET / (its version document)
VERSION_FIXTURE = {"version": "1.0.0", "revision": 1, "description": "Image tagger", "author": "someone"}
#: Keras' imagenet_class_index.json names (what image_tagger answered), including the two pairs it names twice
KERAS_NAMES = {0: "tench", 2: "great_white_shark", 134: "crane", 517: "crane", 638: "maillot", 639: "maillot",
               248: "Eskimo_dog", 281: "tabby", 282: "tiger_cat", 285: "Egyptian_cat", 504: "coffee_mug",
               607: "jack-o'-lantern", 739: "potter's_wheel", 837: "sunglasses", 967: "espresso", 968: "cup",
               986: "yellow_lady's_slipper", 999: "toilet_tissue"}
CAT_LABELS = {"tabby", "tiger_cat", "Egyptian_cat", "Persian_cat", "Siamese_cat", "lynx"}
COFFEE_LABELS = {"espresso", "cup", "coffee_mug", "eggnog", "cappuccino"}
BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """MODEL_DIR with the real tagger in `tags` when ../shared/weights has it (the errors, the auth and GET /
    need no model; the answers do, through `tagger`)."""
    root = tmp_path_factory.mktemp("tagger-models")
    if (SHARED_WEIGHTS / TAGS_WEIGHTS).is_dir():
        shutil.copytree(SHARED_WEIGHTS / TAGS_WEIGHTS, root / "tags")
    return root


@pytest.fixture(scope="module")
def servers(model_dir):
    opened = LiveServer(create_app(make_settings(None, model_dir=model_dir, allow_private_urls=True)))
    locked = LiveServer(create_app(make_settings(None, model_dir=model_dir, allow_private_urls=True,
                                                 api_keys="s3cret")))
    yield {"open": opened, "locked": locked}
    opened.close()
    locked.close()


@pytest.fixture(scope="module")
def live(servers):
    return servers["open"]


@pytest.fixture(scope="module")
def tagger(live):
    """The open server, for tests that need the tagger's answers: skipped without the real weights."""
    src = SHARED_WEIGHTS / TAGS_WEIGHTS
    if not src.is_dir():
        pytest.skip(f"real weights not available: {src} is missing (the ImageNet tagger lives in ../shared/weights)")
    return live


@pytest.fixture(scope="module")
def images():
    server = ImageServer()
    server.bytes("/chelsea.jpg", encode(photo("chelsea")))
    server.bytes("/coffee.jpg", encode(photo("coffee")))
    server.bytes("/notes.txt", b"not an image at all\n" * 20, "text/plain")
    server.status("/gone.jpg", 404)
    yield server
    server.close()


def predict(server: LiveServer, **params) -> httpx.Response:
    return httpx.get(server.url + "/predictions", params=params, timeout=60)


def predictions_of(r: httpx.Response, url: str) -> list[dict]:
    """The README's shape: `url` as sent, `predictions` of {label: str, confidence: float in [0, 1]}, best first."""
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(README_FIXTURE) <= set(body)
    assert body["url"] == url
    preds = body["predictions"]
    assert isinstance(preds, list)
    for p in preds:
        assert set(README_FIXTURE["predictions"][0]) <= set(p)
        assert isinstance(p["label"], str) and p["label"] and " " not in p["label"], p
        assert isinstance(p["confidence"], float) and 0 <= p["confidence"] <= 1, p
    conf = [p["confidence"] for p in preds]
    assert conf == sorted(conf, reverse=True)
    return preds


# -- real behaviour -------------------------------------------------------------------------------------------


def test_a_cat_photo_is_a_cat(tagger, images):
    url = images.url("/chelsea.jpg") + "?size=large&tag=a%2Fb"  # echoed exactly, query string and escapes included
    preds = predictions_of(predict(tagger, url=url), url)
    assert len(preds) == 1 and preds[0]["label"] in CAT_LABELS, preds
    five = predictions_of(predict(tagger, url=url, top=5), url)
    assert len(five) == 5 and five[0] == preds[0]
    assert sum(p["label"] in CAT_LABELS for p in five[:3]) >= 2, five  # the runners-up are cats too
    assert sum(p["confidence"] for p in five if p["label"] in CAT_LABELS) > 0.8, five


def test_a_cup_of_coffee_is_coffee(tagger, images):
    url = images.url("/coffee.jpg")
    [best] = predictions_of(predict(tagger, url=url), url)
    assert best["label"] in COFFEE_LABELS and best["confidence"] > 0.5, best


def test_labels_are_keras_names(tagger, images):
    """All 1000 classes, each once, named as Keras' decode_predictions named them (underscores, the duplicated
    `crane` and `maillot`)."""
    url = images.url("/coffee.jpg")
    preds = predictions_of(predict(tagger, url=url, top=1000), url)
    assert len(preds) == 1000
    by_id = {p["class_id"]: p["label"] for p in preds}
    assert sorted(by_id) == list(range(1000))
    assert {i: by_id[i] for i in KERAS_NAMES} == KERAS_NAMES
    assert abs(sum(p["confidence"] for p in preds) - 1) < 0.05


# -- top / minconf ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("params, top, minconf", [
    ({}, 1, 0.0),
    ({"top": 5}, 5, 0.0),
    ({"minconf": 0}, 1, 0.0),  # minconf=0 counts as not given
    ({"minconf": 0, "top": 3}, 3, 0.0),
    ({"minconf": 0.05}, 1000, 0.05),  # every label at least that confident
    ({"top": 3, "minconf": 0.99}, 3, 0.99),  # at most 3, each at least 0.99: possibly none
    ({"top": 2, "minconf": 0.01}, 2, 0.01),
])
def test_top_and_minconf_rules(tagger, images, params, top, minconf):
    url = images.url("/chelsea.jpg")
    r = predict(tagger, url=url, **params)
    preds = predictions_of(r, url)
    assert (r.json()["top"], r.json()["minconf"]) == (top, minconf)  # what was applied
    assert isinstance(r.json()["top"], int) and isinstance(r.json()["minconf"], float)
    assert all(p["confidence"] >= minconf for p in preds), preds
    if minconf == 0.0:
        assert len(preds) == top
    else:
        assert len(preds) <= top
    if params == {"minconf": 0.05}:
        # chelsea: Egyptian_cat, tiger_cat and tabby all pass 0.05 (more than image_tagger's default of one)
        assert 1 < len(preds) < 1000 and {p["label"] for p in preds} <= CAT_LABELS, preds
    if params == {"top": 2, "minconf": 0.01}:
        assert len(preds) == 2


# -- errors ----------------------------------------------------------------------------------------------------


def tagger_error(r: httpx.Response, status: int, kind: str) -> dict:
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert set(body) == {"error"}
    err = body["error"]
    assert err["type"] == kind and "detail" in err
    assert isinstance(err["request_id"], str) and err["request_id"]
    assert isinstance(err["loupe_type"], str) and err["loupe_type"]
    assert r.headers.get("x-request-id") == err["request_id"]
    return err


def assert_validation(r: httpx.Response, name: str) -> None:
    err = tagger_error(r, 422, "ValidationError")
    assert err["loupe_type"] == "validation_error"
    assert isinstance(err["detail"], list) and err["detail"], err
    assert all({"loc", "msg", "type"} <= set(item) for item in err["detail"]), err["detail"]
    assert ["query", name] in [item["loc"] for item in err["detail"]], err["detail"]


def test_missing_or_bad_url_is_422(live):
    assert_validation(httpx.get(live.url + "/predictions", timeout=30), "url")
    for bad in ("foo", "ftp://x/y", "http://", "file:///etc/passwd"):
        assert_validation(predict(live, url=bad), "url")


@pytest.mark.parametrize("name, value", [("top", 0), ("top", 1001), ("top", "abc"), ("minconf", 2),
                                         ("minconf", "lots")])
def test_bad_top_or_minconf_is_422(live, images, name, value):
    assert_validation(predict(live, url=images.url("/chelsea.jpg"), **{name: value}), name)


def test_not_an_image_is_400_invalid_image(live, images):
    err = tagger_error(predict(live, url=images.url("/notes.txt")), 400, "InvalidImage")
    assert isinstance(err["detail"], str) and err["detail"]


def test_unreachable_image_is_404_unreachable_url(live, images):
    err = tagger_error(predict(live, url=images.url("/gone.jpg")), 404, "UnreachableURL")
    assert err["loupe_type"] == "unreachable_url" and "404" in err["detail"]


# -- GET / -----------------------------------------------------------------------------------------------------


def assert_version_document(r: httpx.Response) -> None:
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    assert "accept" in r.headers.get("vary", "").lower()
    doc = r.json()
    assert set(VERSION_FIXTURE) <= set(doc)
    for key, example in VERSION_FIXTURE.items():
        assert type(doc[key]) is type(example), (key, doc[key])
    assert doc["version"] and doc["description"] and doc["author"]


@pytest.mark.parametrize("accept", ["application/json", "*/*", None])
def test_root_answers_json_to_http_clients(live, accept):
    """`Accept: application/json`, `*/*` (what requests and httpx send) and no Accept → the version document."""
    with httpx.Client(timeout=30) as client:
        del client.headers["Accept"]  # httpx sends `*/*` unless told otherwise
        r = client.get(live.url + "/", headers={"Accept": accept} if accept else {})
        assert r.request.headers.get("accept") == accept
        assert_version_document(r)


def test_root_answers_the_page_to_a_browser(live):
    r = httpx.get(live.url + "/", headers={"Accept": BROWSER_ACCEPT}, timeout=30)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert "accept" in r.headers.get("vary", "").lower()
    assert r.text == STATIC_PAGE.read_text(encoding="utf-8")
    assert "<html" in r.text.lower()


def test_root_is_public_while_predictions_need_the_key(servers, images):
    locked = servers["locked"]
    assert_version_document(httpx.get(locked.url + "/", headers={"Accept": "application/json"}, timeout=30))
    page = httpx.get(locked.url + "/", headers={"Accept": BROWSER_ACCEPT}, timeout=30)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    url = images.url("/coffee.jpg")
    tagger_error(predict(locked, url=url), 401, "unauthorized")
    bad = httpx.get(locked.url + "/predictions", params={"url": url}, headers={"X-Api-Key": "wrong"}, timeout=30)
    tagger_error(bad, 401, "unauthorized")


def test_predictions_with_the_key(servers, tagger, images):
    locked, url = servers["locked"], images.url("/coffee.jpg")
    ok = httpx.get(locked.url + "/predictions", params={"url": url}, headers={"X-Api-Key": "s3cret"}, timeout=60)
    assert predictions_of(ok, url)[0]["label"] in COFFEE_LABELS
