"""Prominent-person boxes ("person"): DeepLabV3 with its real weights on real photos, the pure
mask → boxes step on synthetic class maps, torchvision SSDlite through the registry with random
weights in the release's own state_dict format, and missing files."""

from __future__ import annotations

import hashlib
import io
import itertools
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from app.core.config import Settings
from app.core.errors import ModelUnavailable
from app.imaging.decode import DecodedImage, decode_image
from app.models import person
from app.models.base import ModelNotFound
from app.models.faces import YunetAdapter
from app.models.person import (
    DEEPLAB_FILE,
    SSDLITE_FILE,
    VOC_PERSON,
    PersonAdapter,
    PersonInput,
    people_from_class_map,
    people_from_detections,
    rank_people,
)
from app.models.registry import ModelRegistry
from tests.helpers import PROJECT_ROOT, SHARED_WEIGHTS, load_adapter, photo, require_weights

VOC_CAT = 8


# --------------------------------------------------------------------------- helpers
def as_image(rgb: np.ndarray, width: int | None = None, height: int | None = None) -> DecodedImage:
    """A DecodedImage of `rgb` (width/height: the original size it stands for, default its own)."""
    rgb = np.ascontiguousarray(rgb)
    h, w = rgb.shape[:2]
    return DecodedImage(rgb, width or w, height or h, "test", "PNG", 0)


def iou(a, b) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    area = lambda r: (r[2] - r[0]) * (r[3] - r[1])  # noqa: E731
    return inter / (area(a) + area(b) - inter)


def assert_well_formed(people: list, width: int, height: int) -> None:
    """Boxes are int [xmin, ymin, xmax, ymax] inside the image; scores and shares in 0..1; ranked."""
    for p in people:
        assert set(p) == {"box", "score", "area_share"}
        x0, y0, x1, y1 = p["box"]
        assert all(isinstance(v, int) for v in p["box"])
        assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
        assert 0.0 <= p["score"] <= 1.0 and 0.0 < p["area_share"] <= 1.0
    shares = [p["area_share"] for p in people]
    assert shares == sorted(shares, reverse=True)


def settings(**kw) -> Settings:
    return Settings(_env_file=None, **kw)


# --------------------------------------------------------------------------- DeepLabV3, real weights
@pytest.fixture(scope="module")
def deeplab() -> PersonAdapter:
    return load_adapter(PersonAdapter, person_path=str(require_weights("person_deeplabv3_tflite")))


@pytest.fixture(scope="module")
def yunet() -> YunetAdapter:
    return load_adapter(YunetAdapter, yunet_path=str(require_weights("face_yunet")))


def detect(adapter: PersonAdapter, image: DecodedImage) -> list[dict]:
    (people,) = adapter.predict([adapter.prepare(image)])
    return people


def test_shared_weights_match_the_declared_sha256():
    folder = require_weights("person_deeplabv3_tflite")
    digest = hashlib.sha256((folder / DEEPLAB_FILE).read_bytes()).hexdigest()
    assert digest == PersonAdapter.sha256[DEEPLAB_FILE]
    assert PersonAdapter.files == (DEEPLAB_FILE,)


def test_astronaut_is_one_prominent_person_around_her_face(deeplab, yunet):
    image = as_image(photo("astronaut"))
    people = detect(deeplab, image)
    assert_well_formed(people, 512, 512)
    assert len(people) == 1, people
    (p,) = people
    x0, y0, x1, y1 = p["box"]
    # She fills the left two thirds of the frame from the top of her hair to the bottom edge
    # (measured: [0, 15, 355, 512], 42 % of the pixels, 99.9 % of the person label).
    assert x0 <= 10 and 0 <= y0 <= 40 and 320 <= x1 <= 390 and y1 >= 500
    assert 0.35 <= p["area_share"] <= 0.5
    assert p["score"] >= 0.95
    ((face,),) = yunet.predict([image])  # one image, one face
    f = face["box"]
    assert x0 <= f["x"] and y0 <= f["y"] and f["x"] + f["w"] <= x1 and f["y"] + f["h"] <= y1


@pytest.mark.parametrize("name", ["chelsea", "coffee", "rocket"])
def test_no_person_in_photos_without_people(deeplab, name):
    assert detect(deeplab, as_image(photo(name))) == []


def test_padding_on_the_right_does_not_move_the_box(deeplab):
    ast = photo("astronaut")
    padded = np.full((512, 768, 3), 200, np.uint8)
    padded[:, :512] = ast
    (plain,) = detect(deeplab, as_image(ast))
    people = detect(deeplab, as_image(padded))
    assert_well_formed(people, 768, 512)
    (p,) = people
    # Same place in pixels (not stretched by 768/512), only what a coarser mask moves.
    assert iou(p["box"], plain["box"]) >= 0.9, (p["box"], plain["box"])
    assert p["box"][2] <= 400
    assert p["area_share"] == pytest.approx(plain["area_share"] * 512 / 768, rel=0.1)


def test_exif_rotated_reduced_decode_gives_boxes_in_original_pixels(deeplab):
    """The displayed image: the right-padded astronaut at twice the size (1536x1024), stored
    rotated with EXIF orientation 6, decoded at a reduced size: the box is in display pixels."""
    ast = photo("astronaut")
    padded = np.full((512, 768, 3), 200, np.uint8)
    padded[:, :512] = ast
    shown = np.asarray(Image.fromarray(padded).resize((1536, 1024), Image.Resampling.BICUBIC))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 90° counter-clockwise; rotate clockwise to display
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(np.rot90(shown))).save(buf, "JPEG", quality=95, exif=exif.tobytes())
    image = decode_image(buf.getvalue(), max_pixels=10**8, min_dim=513)
    assert (image.width, image.height) == (1536, 1024)
    assert image.pixels.shape[1] < 1536  # a reduced decode: the pixels are not the original size
    (expected,) = detect(deeplab, as_image(padded))
    people = detect(deeplab, image)
    assert_well_formed(people, 1536, 1024)
    (p,) = people
    assert iou(p["box"], [2 * v for v in expected["box"]]) >= 0.9, (p["box"], expected["box"])


def test_prepare_is_cached_on_the_image(deeplab):
    image = as_image(photo("astronaut"))
    first = deeplab.prepare(image)
    assert deeplab.prepare(image) is first
    assert first.pixels.shape == (513, 513, 3) and (first.valid_w, first.valid_h) == (513, 513)
    # a wide image is letterboxed: its height is scaled like its width, the rest is padding
    wide = deeplab.prepare(as_image(np.zeros((100, 300, 3), np.uint8)))
    assert (wide.valid_w, wide.valid_h) == (513, 171)
    assert np.all(wide.pixels[171:] == person.DEEPLAB_PAD_VALUE)


def test_predict_accepts_decoded_images_and_keeps_order(deeplab):
    out = deeplab.predict([as_image(photo("coffee")), as_image(photo("astronaut")), as_image(photo("rocket"))])
    assert [len(people) for people in out] == [0, 1, 0]


# --------------------------------------------------------------------------- mask → boxes (pure)
def test_tiny_blobs_are_dropped_and_the_threshold_is_inclusive():
    cmap = np.zeros((100, 200), np.int64)  # 20 000 px; min_area 0.005 = 100 px
    cmap[10:60, 10:60] = VOC_PERSON  # 2500 px
    cmap[80:90, 150:160] = VOC_PERSON  # 100 px: exactly the minimum, kept
    cmap[5:10, 190:199] = VOC_PERSON  # 45 px: dropped
    people = people_from_class_map(cmap, 200, 100, min_area=0.005)
    assert [p["box"] for p in people] == [[10, 10, 60, 60], [150, 80, 160, 90]]
    assert [p["area_share"] for p in people] == [2500 / 20000, 100 / 20000]
    # score: the blob's share of ALL person pixels (the dropped speck included)
    assert [p["score"] for p in people] == pytest.approx([2500 / 2645, 100 / 2645])
    assert people_from_class_map(cmap, 200, 100, min_area=0.2) == []


def test_no_person_and_other_classes():
    cmap = np.zeros((50, 50), np.int64)
    assert people_from_class_map(cmap, 50, 50, 0.005) == []
    cmap[10:40, 10:40] = VOC_CAT
    assert people_from_class_map(cmap, 50, 50, 0.005) == []


def test_a_lone_person_scores_one():
    cmap = np.zeros((50, 50), np.int64)
    cmap[10:40, 20:30] = VOC_PERSON
    (p,) = people_from_class_map(cmap, 50, 50, 0.005)
    assert p["score"] == 1.0 and p["area_share"] == pytest.approx(300 / 2500)


def test_boxes_are_mapped_to_original_pixels_per_axis():
    cmap = np.zeros((50, 100), np.int64)  # the map of a 1000x250 original (x10, x5)
    cmap[10:20, 30:60] = VOC_PERSON
    (p,) = people_from_class_map(cmap, 1000, 250, 0.005)
    assert p["box"] == [300, 50, 600, 100]
    # a blob at the far corner stays inside the image
    cmap[40:50, 90:100] = VOC_PERSON
    boxes = [p["box"] for p in people_from_class_map(cmap, 1000, 250, 0.005)]
    assert [900, 200, 1000, 250] in boxes


def test_boxes_stay_inside_a_small_original():
    cmap = np.zeros((513, 513), np.int64)  # a 20x20 image upscaled into the model
    cmap[500:513, 0:513] = VOC_PERSON
    (p,) = people_from_class_map(cmap, 20, 20, 0.005)
    x0, y0, x1, y1 = p["box"]
    assert 0 <= x0 < x1 <= 20 and 0 <= y0 < y1 <= 20


def test_larger_person_first_ties_by_centre_then_top_left():
    cmap = np.zeros((100, 100), np.int64)
    cmap[0:10, 0:10] = VOC_PERSON  # 100 px, top-left corner
    cmap[45:55, 45:55] = VOC_PERSON  # 100 px, centred
    cmap[90:100, 90:100] = VOC_PERSON  # 100 px, bottom-right corner (same distance as top-left)
    cmap[0:10, 90:100] = VOC_PERSON  # 100 px, top-right corner (same distance, same top)
    cmap[60:80, 0:20] = VOC_PERSON  # 400 px: the largest
    boxes = [p["box"] for p in people_from_class_map(cmap, 100, 100, 0.005)]
    assert boxes == [[0, 60, 20, 80], [45, 45, 55, 55], [0, 0, 10, 10], [90, 0, 100, 10], [90, 90, 100, 100]]


def test_ranking_does_not_depend_on_input_order():
    people = [{"box": b, "score": 0.5, "area_share": s} for b, s in
              [([0, 0, 10, 10], 0.01), ([45, 45, 55, 55], 0.01), ([90, 0, 100, 10], 0.01), ([0, 0, 50, 50], 0.2)]]
    ranked = rank_people(people, 100, 100)
    for perm in itertools.permutations(people):
        assert rank_people(list(perm), 100, 100) == ranked
    assert [p["box"] for p in ranked] == [[0, 0, 50, 50], [45, 45, 55, 55], [0, 0, 10, 10], [90, 0, 100, 10]]


def test_a_person_split_by_an_occluder_is_one_box():
    import cv2

    cmap = np.zeros((100, 100), np.uint8)
    cmap[10:90, 30:70] = VOC_PERSON
    cmap[3:8, 3:8] = VOC_PERSON  # someone else, far away (25 px: kept with min_area 0)
    cv2.line(cmap, (72, 8), (28, 92), 0, thickness=4)  # a guitar neck across the body: two pieces
    assert cv2.connectedComponents((cmap == VOC_PERSON).astype(np.uint8))[0] == 4  # background + 3
    people = people_from_class_map(cmap, 100, 100, 0.0)
    assert [p["box"] for p in people] == [[30, 10, 70, 90], [3, 3, 8, 8]]
    total = int((cmap == VOC_PERSON).sum())
    assert people[0]["area_share"] == pytest.approx((total - 25) / 10_000)
    assert people[0]["score"] == pytest.approx((total - 25) / total)


def test_a_speck_inside_a_person_joins_it():
    cmap = np.zeros((100, 100), np.int64)
    cmap[10:90, 30:70] = VOC_PERSON
    cmap[40:60, 40:60] = 0
    cmap[48:52, 48:52] = VOC_PERSON  # a speck in the hole (a hand in front of a dark shirt)
    (p,) = people_from_class_map(cmap, 100, 100, 0.005)
    assert p["box"] == [30, 10, 70, 90] and p["score"] == 1.0


def test_two_people_apart_stay_two():
    cmap = np.zeros((100, 100), np.int64)
    cmap[20:90, 5:35] = VOC_PERSON
    cmap[30:90, 60:90] = VOC_PERSON
    people = people_from_class_map(cmap, 100, 100, 0.005)
    assert [p["box"] for p in people] == [[5, 20, 35, 90], [60, 30, 90, 90]]
    assert sum(p["score"] for p in people) == pytest.approx(1.0)


def test_detections_keep_confident_people_only():
    inp = PersonInput(np.zeros((320, 320, 3), np.uint8), 320, 320, 640, 960)  # x2, x3
    boxes = np.array([[10, 10, 110, 110], [0, 0, 320, 320], [10, 10, 50, 50], [100, 100, 101, 101], [0, 0, 160, 320]],
                     np.float32)
    scores = np.array([0.9, 0.99, 0.4, 0.95, 0.6], np.float32)
    labels = np.array([1, 18, 1, 1, 1])  # the 320x320 box is a dog
    people = people_from_detections(boxes, scores, labels, inp, min_area=0.005)
    assert_well_formed(people, 640, 960)
    assert [p["box"] for p in people] == [[0, 0, 320, 960], [20, 30, 220, 330]]
    assert [p["score"] for p in people] == pytest.approx([0.6, 0.9])
    assert people[0]["area_share"] == pytest.approx(0.5)


# --------------------------------------------------------------------------- SSDlite, random weights
def torchvision_ssdlite(seed: int = 0):
    """torchvision's COCO SSDlite architecture with random weights, built as torchvision builds
    it for its release weights (weights=COCO_V1 sets weights_backbone=None, num_classes=91)."""
    import torch
    from torchvision.models.detection import SSDLite320_MobileNet_V3_Large_Weights, ssdlite320_mobilenet_v3_large

    torch.manual_seed(seed)
    net = ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=91)
    meta = SSDLite320_MobileNet_V3_Large_Weights.COCO_V1.meta
    assert sum(p.numel() for p in net.parameters()) == meta["num_params"] == person.SSDLITE_NUM_PARAMS
    assert SSDLite320_MobileNet_V3_Large_Weights.COCO_V1.url.endswith("/" + SSDLITE_FILE)
    return net


def write_ssdlite_state_dict(folder, net) -> None:
    """The release file is a plain `torch.save(model.state_dict())` (torchvision loads it with
    `load_state_dict_from_url` → `model.load_state_dict`)."""
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), folder / SSDLITE_FILE)


@pytest.fixture(scope="module")
def ssdlite_net():
    return torchvision_ssdlite()


def ssdlite_registry(model_dir) -> ModelRegistry:
    return ModelRegistry(settings(model_dir=model_dir, person_model="ssdlite", analysis_threads=1), ThreadPoolExecutor(1))


async def test_ssdlite_random_weights_through_the_registry(tmp_path, ssdlite_net):
    write_ssdlite_state_dict(tmp_path / "person", ssdlite_net)
    reg = ssdlite_registry(tmp_path)
    try:
        images = [as_image(photo("astronaut")), as_image(photo("coffee"))]
        out = await reg.run("person", images)
        assert reg.info("person").state.value == "ready"
        assert isinstance(reg.loaded("person")._impl, person.SsdlitePeople)
        assert len(out) == 2
        for people, image in zip(out, images):
            assert isinstance(people, list)
            assert_well_formed(people, image.width, image.height)
            assert all(p["score"] >= person.SSDLITE_SCORE_MIN for p in people)
    finally:
        reg.shutdown()


async def test_ssdlite_person_logits_give_boxes_in_original_pixels(tmp_path, ssdlite_net):
    """Random weights score every class about 1/91; push the person logit of every anchor up so
    the real forward, NMS and the mapping back to original pixels all have boxes to handle."""
    import copy

    import torch

    net = copy.deepcopy(ssdlite_net)
    with torch.no_grad():
        for block in net.head.classification_head.module_list:
            conv = block[-1]
            conv.weight.zero_()
            conv.bias.fill_(-10.0)
            conv.bias[1::91] = 10.0  # channel a * 91 + k: anchor a, class k; person = 1
    write_ssdlite_state_dict(tmp_path / "person", net)
    reg = ssdlite_registry(tmp_path)
    try:
        image = as_image(photo("astronaut")[:, :400], 1200, 1536)  # a reduced decode of a 1200x1536 original
        (people,) = await reg.run("person", [image])
    finally:
        reg.shutdown()
    assert people, "every anchor says person: some boxes must survive NMS"
    assert_well_formed(people, 1200, 1536)
    assert max(p["box"][2] for p in people) > 400 and max(p["box"][3] for p in people) > 512
    assert all(p["score"] >= 0.99 for p in people)


def test_ssdlite_file_that_is_not_its_state_dict_is_unavailable(tmp_path):
    (tmp_path / "person").mkdir()
    (tmp_path / "person" / SSDLITE_FILE).write_bytes(b"not a checkpoint")
    reg = ssdlite_registry(tmp_path)
    with pytest.raises(ModelUnavailable, match="not a readable PyTorch state_dict"):
        reg.load("person")
    reg.shutdown()


# --------------------------------------------------------------------------- missing files, download
@pytest.mark.parametrize("backend, wanted", [("deeplabv3", DEEPLAB_FILE), ("ssdlite", SSDLITE_FILE)])
def test_missing_files_are_model_unavailable_with_where_and_how(tmp_path, backend, wanted):
    reg = ModelRegistry(settings(model_dir=tmp_path, person_model=backend), ThreadPoolExecutor(1))
    with pytest.raises(ModelUnavailable) as err:
        reg.load("person")
    message = err.value.message
    assert str(tmp_path / "person" / wanted) in message
    assert "PERSON_PATH" in message and "download_models.py" in message
    assert reg.info("person").state.value == "failed"
    reg.shutdown()
    with pytest.raises(ModelNotFound):
        PersonAdapter(settings(person_path=str(tmp_path / "nowhere"), person_model=backend)).load(tmp_path / "nowhere", "cpu")


def test_person_path_may_name_the_file(tmp_path):
    folder = require_weights("person_deeplabv3_tflite")
    adapter = load_adapter(PersonAdapter, person_path=str(folder / DEEPLAB_FILE))
    assert detect(adapter, as_image(photo("rocket"))) == []


def test_download_fetches_and_checks_the_backends_file(tmp_path):
    src = require_weights("person_deeplabv3_tflite") / DEEPLAB_FILE
    from unittest import mock

    with mock.patch.object(person, "DEEPLAB_URLS", (src.as_uri(),)):
        (got,) = PersonAdapter.download(tmp_path / "person")
    assert got == tmp_path / "person" / DEEPLAB_FILE
    assert hashlib.sha256(got.read_bytes()).hexdigest() == PersonAdapter.sha256[DEEPLAB_FILE]
    bogus = tmp_path / "bogus.pth"
    bogus.write_bytes(b"x")
    with mock.patch.object(person, "SSDLITE_URLS", (bogus.as_uri(),)), pytest.raises(RuntimeError, match="sha256"):
        PersonAdapter.download(tmp_path / "person", "ssdlite")


def test_download_script_copies_from_the_shared_weights_and_lists_person(tmp_path):
    if not (SHARED_WEIGHTS / "person_deeplabv3_tflite").is_dir():
        pytest.skip(f"real weights not available: {SHARED_WEIGHTS / 'person_deeplabv3_tflite'} is missing")
    script = str(PROJECT_ROOT / "scripts" / "download_models.py")
    run = lambda *args: subprocess.run([sys.executable, script, *args, "--model-dir", str(tmp_path)],  # noqa: E731
                                       capture_output=True, text=True, cwd=tmp_path, timeout=120)
    copied = run("person", "--from", str(SHARED_WEIGHTS))
    assert copied.returncode == 0, copied.stdout + copied.stderr
    assert (tmp_path / "person" / DEEPLAB_FILE).is_file()
    listed = run("person", "--list")
    assert listed.returncode == 0 and "present" in listed.stdout and "person" in listed.stdout
