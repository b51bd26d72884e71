"""The try-it page (GET /) in a real headless Chromium against the real app under uvicorn.

Needs the Python package `playwright` and a Chromium binary (Debian: `apt-get install chromium`,
at /usr/bin/chromium; or LOUPE_CHROMIUM=/path/to/chrome). Without them every test here is
skipped with the reason. Playwright's own browser download is not used.
"""

from __future__ import annotations

import base64
import os
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest

from app.core.config import Settings
from app.main import create_app
from tests.helpers import SHARED_WEIGHTS, encode, gaussian_blur, jpeg_roundtrip, photo
from tests.servers import LiveServer

pytestmark = pytest.mark.browser

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 60_000


def chromium_path() -> str | None:
    for candidate in (os.environ.get("LOUPE_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
                      shutil.which("chromium-browser"), shutil.which("google-chrome")):
        if candidate and Path(candidate).exists():
            return candidate
    return None


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    sync_api = pytest.importorskip("playwright.sync_api", reason="the Python package playwright is not installed "
                                   "(pip install -r requirements-dev.txt)")
    exe = chromium_path()
    if exe is None:
        pytest.skip("no Chromium binary: apt-get install chromium (or set LOUPE_CHROMIUM)")
    pw = sync_api.sync_playwright().start()
    try:
        b = pw.chromium.launch(executable_path=exe, headless=True, args=CHROMIUM_ARGS)
    except Exception as exc:  # noqa: BLE001
        pw.stop()
        pytest.skip(f"Chromium at {exe} did not start: {exc}")
    yield b
    b.close()
    pw.stop()


def make_server(tmp: Path, **overrides) -> LiveServer:
    extra = {}
    yunet = SHARED_WEIGHTS / "face_yunet" / "face_detection_yunet_2023mar.onnx"
    if yunet.is_file():
        extra["yunet_path"] = str(yunet)
    s = Settings(_env_file=None, log_json=False, log_level="WARNING", model_dir=tmp / "models",
                 allow_private_urls=False, **{**extra, **overrides})
    return LiveServer(create_app(s))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = make_server(tmp_path_factory.mktemp("page"))
    yield s
    s.close()


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("page-images")
    base = photo("astronaut")
    h, w = base.shape[:2]
    files = {
        "astronaut.jpg": encode(base, quality=95),
        "IMG_002.jpg": encode(jpeg_roundtrip(np.ascontiguousarray(base[10:h - 8, 6:w - 12]), 80), quality=85),
        "IMG_003_blurred.jpg": encode(gaussian_blur(base, 3.0)),
        "coffee.png": encode(photo("coffee"), "PNG"),
        "chelsea.jpg": encode(photo("chelsea"), quality=95),
        "notes.jpg": b"Shopping list: milk, eggs. This is not a photo.",
    }
    out = {}
    for name, data in files.items():
        (root / name).write_bytes(data)
        out[name] = root / name
    return out


def watched_page(context):
    pg = context.new_page()
    pg.set_default_timeout(TIMEOUT_MS)
    pg.loupe_requests = []  # every URL the page asks for
    pg.loupe_posts = []  # (url, JSON body) of every POST
    pg.loupe_errors = []
    pg.on("request", lambda r: pg.loupe_requests.append(r.url))
    pg.on("request", lambda r: pg.loupe_posts.append((r.url, r.post_data_json)) if r.method == "POST" else None)
    pg.on("pageerror", lambda e: pg.loupe_errors.append(str(e)))
    return pg


@pytest.fixture
def page(browser, server):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    yield watched_page(context)
    context.close()


# the real offline weights the Regions view needs (as tests/api/test_tasks_api.py uses them)
REGION_WEIGHTS = {"person": "person_deeplabv3_tflite", "tags": "imagenet_mobilenet_tflite"}
YUNET = SHARED_WEIGHTS / "face_yunet" / "face_detection_yunet_2023mar.onnx"


@pytest.fixture(scope="module")
def regions_server(tmp_path_factory):
    """The app with MODEL_DIR holding the real person and tags weights (and YuNet for faces)."""
    missing = [src for src in REGION_WEIGHTS.values() if not (SHARED_WEIGHTS / src).is_dir()]
    if not YUNET.is_file():
        missing.append("face_yunet")
    if missing:
        pytest.skip(f"real weights not available: {', '.join(sorted(missing))} missing from {SHARED_WEIGHTS}")
    tmp = tmp_path_factory.mktemp("regions")
    for sub, src in REGION_WEIGHTS.items():
        shutil.copytree(SHARED_WEIGHTS / src, tmp / "models" / sub)
    s = make_server(tmp)
    yield s
    s.close()


@pytest.fixture
def regions_page(browser, regions_server):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    yield watched_page(context)
    context.close()


def api_result(server: LiveServer, path: Path, **flags) -> dict:
    body = {"images": [{"base64": base64.b64encode(path.read_bytes()).decode(), "image_id": path.name}], **flags}
    r = httpx.post(f"{server.base_url}/v1/analyze/batch", json=body, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()["results"][0]


def open_page(pg, server) -> None:
    pg.goto(server.base_url + "/")
    pg.wait_for_selector("#op-run_quality")


def assert_only_local(pg, server) -> None:
    outside = [u for u in pg.loupe_requests if not u.startswith((server.base_url, "blob:", "data:"))]
    assert outside == [], outside
    assert pg.loupe_errors == []


def test_page_lists_operations_and_loads_nothing_external(page, server):
    open_page(page, server)
    assert page.title().startswith("Loupe")
    ops = httpx.get(f"{server.base_url}/v1/operations").json()["operations"]
    for op in ops:
        if not op["flag"]:
            continue
        box = page.locator(f"#op-{op['flag']}")
        assert box.count() == 1
        assert box.is_checked() == (op["flag"] in ("run_blur", "run_exposure", "run_quality"))
        state = "ready" if op["ready"] else "available" if op["available"] else "missing"
        assert page.locator(f"label[for=op-{op['flag']}] .state").inner_text() == state
    # every label is tied to its control
    assert page.locator("label[for=urls]").count() == 1 and page.locator("label[for=apikey]").count() == 1
    assert "Loupe" in page.locator("#version").inner_text()
    assert page.request.get(server.base_url + "/static/app.css").ok
    assert_only_local(page, server)


def test_one_image_shows_its_score_band_blur_exposure_and_faces(page, server, images):
    path = images["astronaut.jpg"]
    want_faces = (SHARED_WEIGHTS / "face_yunet").is_dir()
    expected = api_result(server, path, run_faces=want_faces)
    open_page(page, server)
    if want_faces:
        page.check("#op-run_faces")
    page.set_input_files("#file", str(path))
    assert page.locator("#queue li").count() == 1
    page.click("#run")
    card = page.locator("#results .card").first
    card.locator(".band-pill").wait_for()
    q = expected["quality"]
    band_text = card.locator(".band-pill").inner_text()
    assert {"very_poor": "Very poor", "poor": "Poor", "decent": "Decent", "good": "Good",
            "excellent": "Excellent"}[q["band"]] in band_text
    assert f"{q['score']:.2f}" in band_text
    assert card.locator(f".band-pill.band-{q['band']}").count() == 1
    text = card.inner_text()
    b, e = expected["blur"], expected["exposure"]
    assert f"Laplacian variance {b['laplacian_variance']:.1f}" in text
    assert f"threshold {b['thresholds']['blur_threshold']:g}" in text and "sharp" in text
    assert f"mean brightness {e['mean_brightness']:.0f}" in text
    assert f"ok from {e['thresholds']['bright_min']:g} to {e['thresholds']['bright_max']:g}" in text
    assert "512 × 512 px" in text
    if want_faces:
        faces = expected["faces"]["faces"]
        assert len(faces) >= 1
        box = card.locator(".facebox").first
        box.wait_for()
        assert card.locator(".facebox").count() == len(faces)
        img = card.locator(".figure img").bounding_box()
        fb = box.bounding_box()
        scale = img["width"] / expected["width_px"]
        f0 = faces[0]["box"]
        # the box is drawn where the face is, scaled from original pixels to the displayed size
        assert fb["x"] - img["x"] == pytest.approx(f0["x"] * scale, abs=3)
        assert fb["y"] - img["y"] == pytest.approx(f0["y"] * scale, abs=3)
        assert fb["width"] == pytest.approx(f0["w"] * scale, abs=4)
        assert "face" in box.inner_text()
    assert "1 photo" in page.locator("#status").inner_text()
    assert_only_local(page, server)


def test_errors_are_shown_in_words(page, server, images):
    open_page(page, server)
    page.set_input_files("#file", str(images["notes.jpg"]))
    page.fill("#urls", "http://127.0.0.1:9/private.jpg")
    page.click("#run")
    page.wait_for_function("document.querySelectorAll('#results .card.failed').length === 2")
    cards = page.locator("#results .card.failed")
    first, second = cards.nth(0).inner_text(), cards.nth(1).inner_text()
    assert "Could not analyse this image" in first
    assert "The data is not an image in a supported format." in first
    assert "Use a JPEG, PNG, WebP, GIF, BMP, TIFF, HEIC, AVIF or camera RAW" in first
    assert "unsupported media type" in first
    assert "Could not analyse this image" in second and "url not allowed" in second
    for text in (first, second):
        assert "{" not in text and '"type"' not in text  # words, not raw JSON
    # nothing added: a message, not a request
    page.click("#clear")
    page.click("#run")
    alert = page.locator("#alert")
    alert.wait_for()
    assert "Add a photo or paste an image URL first." in alert.inner_text()


def test_api_key_is_asked_for_and_kept_in_session_storage(browser, tmp_path, images):
    s = make_server(tmp_path, api_keys="sekrit-key")
    try:
        ctx = browser.new_context()
        pg = ctx.new_page()
        pg.set_default_timeout(TIMEOUT_MS)
        pg.goto(s.base_url + "/")
        alert = pg.locator("#alert")
        alert.wait_for()
        words = alert.inner_text()
        assert "This Loupe instance needs an API key" in words and "An API key is required" in words
        assert "Enter a valid API key" in words
        assert pg.locator("#op-run_quality .state, label[for=op-run_quality] .state").first.inner_text() == "unknown"
        pg.fill("#apikey", "wrong")
        pg.dispatch_event("#apikey", "change")
        pg.wait_for_function("document.querySelector('#alert').innerText.includes('not valid')")
        pg.fill("#apikey", "sekrit-key")
        pg.dispatch_event("#apikey", "change")
        pg.wait_for_function("document.querySelector('label[for=op-run_quality] .state').innerText !== 'unknown'")
        assert pg.locator("#alert").is_hidden()
        assert pg.evaluate("sessionStorage.getItem('loupe.apiKey')") == "sekrit-key"
        assert pg.evaluate("Object.keys(localStorage).length") == 0
        pg.set_input_files("#file", str(images["coffee.png"]))
        pg.click("#run")
        pg.locator("#results .card .band-pill").wait_for()
        # a new tab of the same context has its own session storage: the key is not there
        other = ctx.new_page()
        other.goto(s.base_url + "/")
        assert other.evaluate("sessionStorage.getItem('loupe.apiKey')") is None
        ctx.close()
    finally:
        s.close()


def test_several_images_are_grouped_with_the_best_marked(page, server, images, tmp_path):
    open_page(page, server)
    names = ["astronaut.jpg", "IMG_002.jpg", "IMG_003_blurred.jpg", "coffee.png"]
    page.set_input_files("#file", [str(images[n]) for n in names])
    page.click("#run")
    group = page.locator("#groups .group[data-group]").first
    group.wait_for()
    assert page.locator("#groups .group[data-group]").count() == 1
    shots = group.locator(".shot")
    assert shots.count() == 3
    ids = sorted(shots.nth(i).get_attribute("data-image-id") for i in range(3))
    assert ids == sorted(["astronaut.jpg", "IMG_002.jpg", "IMG_003_blurred.jpg"])
    best = group.locator(".shot.best")
    assert best.count() == 1
    assert best.get_attribute("data-image-id") in ("astronaut.jpg", "IMG_002.jpg")  # a sharp one
    assert "Best shot" in best.inner_text()
    blurred = group.locator(".shot[data-image-id='IMG_003_blurred.jpg']")
    assert "rejected" in blurred.get_attribute("class")
    assert "Rejected:" in blurred.inner_text() and "blurry" in blurred.inner_text()
    singles = page.locator("#groups .singles .shot")
    assert singles.count() == 1 and singles.first.get_attribute("data-image-id") == "coffee.png"
    assert page.locator("#results .card").count() == 4
    assert "1 group of near-duplicates" in page.locator("#status").inner_text()
    page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
    if os.environ.get("LOUPE_SCREENSHOT"):
        page.screenshot(path=os.environ["LOUPE_SCREENSHOT"], full_page=True)
    assert_only_local(page, server)


REGION_TASKS = [
    {"operation_id": "person", "type": "detect_bounding_box", "params": {"target": "prominent_person"}},
    {"operation_id": "face", "type": "detect_bounding_box", "params": {"target": "prominent_face"}},
    {"operation_id": "tags", "type": "tag_imagenet", "params": {"target": "whole_image", "top": 5, "minconf": 0.05}},
]


def api_regions(server: LiveServer, path: Path) -> dict:
    body = {"image": {"base64": base64.b64encode(path.read_bytes()).decode(), "image_id": path.name},
            "tasks": REGION_TASKS, "return_crops": True}
    r = httpx.post(f"{server.base_url}/v1/tasks", json=body, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()


def run_regions(pg, server, path: Path):
    open_page(pg, server)
    button = pg.locator("#regions")
    pg.wait_for_function("!document.querySelector('#regions').disabled")
    pg.set_input_files("#file", str(path))
    button.click()
    card = pg.locator("#regions-out .card").first
    card.wait_for()
    pg.wait_for_function("!document.querySelector('#regions').disabled")  # the run has finished
    # one click, one photo: one POST /v1/tasks with the three tasks and crops
    posts = [(u, b) for u, b in pg.loupe_posts if u.startswith(server.base_url + "/v1/")]
    assert [u for u, _ in posts] == [server.base_url + "/v1/tasks"], posts
    body = posts[0][1]
    assert body["tasks"] == REGION_TASKS and body["return_crops"] is True
    assert body["image"]["image_id"] == path.name and body["image"]["base64"].startswith("data:image/")
    return card


def assert_box_drawn(card, kind: str, box: list[int], size: tuple[int, int]) -> None:
    drawn = card.locator(f".regionbox.{kind}")
    assert drawn.count() == 1
    img = card.locator(".figure img").bounding_box()
    b = drawn.bounding_box()
    scale = img["width"] / size[0]
    x0, y0, x1, y1 = box
    # drawn where the region is, scaled from original pixels to the displayed size
    assert b["x"] - img["x"] == pytest.approx(x0 * scale, abs=3)
    assert b["y"] - img["y"] == pytest.approx(y0 * scale, abs=3)
    assert b["width"] == pytest.approx((x1 - x0) * scale, abs=4)
    assert b["height"] == pytest.approx((y1 - y0) * scale, abs=4)
    assert drawn.inner_text().startswith(kind)  # labelled
    assert drawn.get_attribute("aria-label").startswith(kind.capitalize())


def tag_rows(card) -> list[str]:
    items = card.locator(".taglist li")
    return [items.nth(i).inner_text() for i in range(items.count())]


def test_regions_of_a_portrait_show_person_face_crop_and_tags(regions_page, regions_server, images):
    pg, server, path = regions_page, regions_server, images["astronaut.jpg"]
    expected = api_regions(server, path)
    res = expected["results"]
    assert res["person"]["status"] == "success" and res["face"]["status"] == "success", res
    card = run_regions(pg, server, path)
    size = (expected["width_px"], expected["height_px"])
    card.locator(".regionbox.face").wait_for()
    assert_box_drawn(card, "person", res["person"]["data"]["box"], size)
    assert_box_drawn(card, "face", res["face"]["data"]["box"], size)
    colour = card.locator(".regionbox.person").evaluate("e => getComputedStyle(e).borderTopColor")
    assert colour != card.locator(".regionbox.face").evaluate("e => getComputedStyle(e).borderTopColor")
    text = card.inner_text()
    assert f"[{', '.join(map(str, res['person']['data']['box']))}]" in text
    assert f"[{', '.join(map(str, res['face']['data']['box']))}]" in text
    assert "No person found" not in text and "No face found" not in text
    # the face crop from cropped_image_base64, loaded and shown
    crop = card.locator("img.crop")
    assert crop.count() == 1
    assert crop.get_attribute("src") == "data:image/png;base64," + res["face"]["cropped_image_base64"]
    pg.wait_for_function("document.querySelector('#regions-out img.crop').complete")
    natural = crop.evaluate("e => [e.naturalWidth, e.naturalHeight]")
    fx0, fy0, fx1, fy1 = res["face"]["data"]["box"]
    assert natural[0] > 0 and abs(natural[0] / natural[1] - (fx1 - fx0) / (fy1 - fy0)) < 0.1
    # the tags with their confidences, in the API's order
    labels = res["tags"]["data"]["labels"]
    assert 1 <= len(labels) <= 5
    rows = tag_rows(card)
    assert len(rows) == len(labels)
    for row, want in zip(rows, labels):
        assert want["label"] in row and f"{want['confidence'] * 100:.1f} %" in row
    assert "Looked for a person, a face and tags in 1 photo." in pg.locator("#status").inner_text()
    if os.environ.get("LOUPE_SCREENSHOT"):
        pg.screenshot(path=os.environ["LOUPE_SCREENSHOT"].replace(".png", "-regions.png"), full_page=True)
    assert_only_local(pg, server)


def test_regions_of_a_cat_say_no_person_and_show_cat_tags(regions_page, regions_server, images):
    pg, server, path = regions_page, regions_server, images["chelsea.jpg"]
    expected = api_regions(server, path)["results"]
    assert expected["person"]["status"] == "skipped" and expected["face"]["status"] == "skipped", expected
    card = run_regions(pg, server, path)
    card.locator(".taglist").wait_for()
    text = card.inner_text()
    assert "No person found" in text and expected["person"]["error_message"] in text
    assert "No face found" in text and expected["face"]["error_message"] in text
    assert card.locator(".regionbox").count() == 0 and card.locator("img.crop").count() == 0
    rows = tag_rows(card)
    assert len(rows) == len(expected["tags"]["data"]["labels"]) >= 1
    assert any("cat" in r.lower() for r in rows), rows
    assert "{" not in text  # words, not JSON
    assert_only_local(pg, server)


def test_regions_disabled_with_the_reason_when_models_are_missing(page, server):
    """The plain server has no person or tags model: the button is off and says why."""
    tasks = {t["type"]: t for t in httpx.get(f"{server.base_url}/v1/operations").json()["tasks"]}
    if tasks["detect_bounding_box"]["available"] and tasks["tag_imagenet"]["available"]:
        pytest.skip("this environment provides the person and tags models to every server")
    open_page(page, server)
    page.wait_for_function("document.querySelector('#regions').disabled")
    why = page.locator("#regions-why")
    assert why.is_visible()
    words = why.inner_text()
    assert words.startswith("Not available on this instance:") and "not installed" in words
    if not tasks["detect_bounding_box"]["available"]:
        assert "the person model" in words and "(detect_bounding_box)" in words
    if not tasks["tag_imagenet"]["available"]:
        assert "the ImageNet tags model (tag_imagenet)" in words
    assert "regions-why" in page.locator("#regions").get_attribute("aria-describedby")
    # Analyse still works
    assert page.locator("#run").is_enabled()
    assert [u for u, _ in page.loupe_posts] == []
    assert_only_local(page, server)


def test_regions_errors_are_shown_in_words(regions_page, regions_server, images):
    pg, server = regions_page, regions_server
    open_page(pg, server)
    pg.wait_for_function("!document.querySelector('#regions').disabled")
    pg.set_input_files("#file", str(images["notes.jpg"]))
    pg.click("#regions")
    card = pg.locator("#regions-out .card.failed").first
    card.wait_for()
    text = card.inner_text()
    assert "Could not find the regions of this image" in text
    assert "The data is not an image in a supported format." in text
    assert "Use a JPEG, PNG, WebP, GIF, BMP, TIFF, HEIC, AVIF or camera RAW" in text and "unsupported media type" in text
    assert "{" not in text and '"type"' not in text
    # besides the task request, at most one try for a preview of the file the browser could not show
    assert [u for u, _ in pg.loupe_posts if not u.endswith("/v1/preview")] == [server.base_url + "/v1/tasks"]
    assert len([u for u, _ in pg.loupe_posts if u.endswith("/v1/preview")]) <= 1
    assert_only_local(pg, server)


def test_heic_and_raw_are_shown_from_previews_made_by_loupe(page, server, tmp_path):
    """Chromium shows neither HEIC nor a camera RAW: the page asks POST /v1/preview for a JPEG of each, shows it
    in the queue and on the result card, and the analyses run on the files themselves."""
    from tests.factories.formats import dng_bytes, heic_bytes

    heic, dng = tmp_path / "IMG_0001.HEIC", tmp_path / "DSC_0002.DNG"
    heic.write_bytes(heic_bytes(photo("astronaut"), orientation=6))
    dng.write_bytes(dng_bytes(photo("coffee")))
    previews: list[str] = []
    page.on("response", lambda r: previews.append(r.headers.get("x-loupe-format", "")) if r.url.endswith("/v1/preview") else None)
    open_page(page, server)
    page.set_input_files("#file", [str(heic), str(dng)])
    chips = page.locator("#queue li img")
    page.wait_for_function("() => [...document.querySelectorAll('#queue li img')].every("
                           "(i) => i.complete && i.naturalWidth > 0 && i.src.startsWith('blob:'))", timeout=TIMEOUT_MS)
    assert chips.count() == 2 and sorted(previews) == ["DNG", "HEIF"]
    page.click("#run")
    page.locator("#results .card .band-pill").nth(1).wait_for(timeout=TIMEOUT_MS)
    page.wait_for_function("() => [...document.querySelectorAll('#results .card .figure img')].every("
                           "(i) => i.complete && i.naturalWidth > 0)", timeout=TIMEOUT_MS)
    sizes = page.eval_on_selector_all("#results .card .figure img", "els => els.map((i) => [i.naturalWidth, i.naturalHeight])")
    assert sorted(tuple(s) for s in sizes) == [(512, 512), (600, 400)] or all(max(s) <= 1024 for s in sizes)
    text = page.locator("#results").inner_text()
    assert "512 × 512 px" in text and "600 × 400 px" in text
    assert len(previews) == 2  # one preview per photo, reused by the result card
    assert_only_local(page, server)
