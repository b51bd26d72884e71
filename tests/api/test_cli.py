"""The command line (app/cli.py) and the blur tuner (scripts/tune_blur.py), end to end on real photos.

`score` and `cluster` run the real app in-process (and once against a live uvicorn
server); their outputs are parsed and checked against the API's own answers.
"""

from __future__ import annotations

import base64
import csv
import importlib.util
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app import cli
from app.core.config import Settings
from app.main import create_app
from tests.helpers import (
    PROJECT_ROOT,
    SHARED_WEIGHTS,
    clock_motion,
    encode,
    gaussian_blur,
    jpeg_roundtrip,
    motion_blur,
    photo,
    read_csv,
    read_jsonl,
)
from tests.servers import free_port

VOLATILE = ("timings_ms", "processing_time_ms", "image_id")


# --- fixtures ----------------------------------------------------------------------------------------------------
def settings(tmp_path: Path, **kw) -> Settings:
    return Settings(_env_file=None, log_json=False, log_level="WARNING", model_dir=tmp_path / "models", **kw)


def write_photos(root: Path) -> dict[str, bytes]:
    files = {
        "astronaut.jpg": encode(photo("astronaut")),
        "coffee.png": encode(photo("coffee"), "PNG"),
        "nested/deeper/chelsea.webp": encode(photo("chelsea"), "WEBP", quality=90),
        "rocket.BMP": encode(photo("rocket"), "BMP"),
        "blurry_motorcycle.jpg": encode(gaussian_blur(photo("motorcycle_left"), 4)),
        "broken.jpg": b"this is a text file with an image name",
    }
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    (root / "notes.txt").write_text("not an image extension: ignored")
    (root / ".hidden").mkdir()
    (root / ".hidden" / "skip.jpg").write_bytes(encode(photo("coffee")))
    return files


def api_results(tmp_path: Path, files: dict[str, bytes], **flags) -> dict[str, dict]:
    """What POST /v1/analyze/batch answers for the same bytes, keyed by name."""
    names = list(files)
    with TestClient(create_app(settings(tmp_path))) as c:
        r = c.post("/v1/analyze/batch", json={"images": [{"base64": base64.b64encode(files[n]).decode(), "image_id": n}
                                                         for n in names], **flags})
    assert r.status_code == 200, r.text
    return dict(zip(names, r.json()["results"]))


def strip(result: dict) -> dict:
    return {k: v for k, v in result.items() if k not in VOLATILE}


def run_cli(*args: str, cwd: Path, env_extra: dict[str, str] | None = None, timeout: int = 180):
    env = {k: v for k, v in os.environ.items() if k not in ("LOUPE_SERVER", "LOUPE_API_KEY", "API_KEYS", "API_KEY")}
    env.update({"PYTHONPATH": str(PROJECT_ROOT)})
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "app.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


# --- score ---------------------------------------------------------------------------------------------------------
def test_score_folder_end_to_end_then_resume(tmp_path, cli_env):
    photos = tmp_path / "photos"
    files = write_photos(photos)
    out = tmp_path / "out" / "scores"

    # 1. a real process: exit code 1 because one image is corrupt
    proc = run_cli("score", str(photos), "--out", str(out), "--batch-size", "2", "--concurrency", "2", "--no-progress",
                   cwd=cli_env, env_extra={"MODEL_DIR": str(tmp_path / "models")})
    assert proc.returncode == 1, proc.stderr
    assert "6 image(s)" in proc.stdout and "1 failed" in proc.stdout

    lines = read_jsonl(out.with_suffix(".jsonl"))
    rows = read_csv(out.with_suffix(".csv"))
    assert sorted(line["path"] for line in lines) == sorted(files)  # recursive, by extension, hidden skipped
    assert [r["path"] for r in rows] == [line["path"] for line in lines]
    assert list(rows[0]) == list(cli.CSV_FIELDS)

    by_path = {line["path"]: line for line in lines}
    csv_by_path = {r["path"]: r for r in rows}
    broken = by_path["broken.jpg"]
    assert broken["error"]["type"] == "unsupported_media_type" and broken["error"]["message"]
    assert broken["result"]["blur"] is None and broken["result"]["error"]["type"] == "unsupported_media_type"
    assert csv_by_path["broken.jpg"]["error"].startswith("unsupported_media_type: ")
    assert csv_by_path["broken.jpg"]["laplacian_variance"] == ""

    # 2. the numbers are exactly the API's for the same bytes
    expected = api_results(tmp_path, files)
    for name in files:
        line, row = by_path[name], csv_by_path[name]
        assert line["image_id"] == name and line["source"] == str(photos / name)
        if name == "broken.jpg":
            assert expected[name]["error"]["type"] == "unsupported_media_type"
            continue
        assert line["error"] is None and row["error"] == ""
        assert strip(line["result"]) == strip(expected[name])
        res = expected[name]
        assert float(row["laplacian_variance"]) == res["blur"]["laplacian_variance"]
        assert row["is_blurry"] == str(res["blur"]["is_blurry"])
        assert float(row["mean_brightness"]) == res["exposure"]["mean_brightness"]
        assert row["verdict"] == res["exposure"]["verdict"]
        assert float(row["quality_score"]) == res["quality"]["score"]
        assert row["quality_band"] == res["quality"]["band"]
        assert (int(row["width"]), int(row["height"])) == (res["width_px"], res["height_px"])
    assert csv_by_path["blurry_motorcycle.jpg"]["is_blurry"] == "True"
    assert csv_by_path["astronaut.jpg"]["is_blurry"] == "False"
    assert float(csv_by_path["blurry_motorcycle.jpg"]["quality_score"]) < float(csv_by_path["astronaut.jpg"]["quality_score"])

    # 3. run again: everything is skipped, nothing appended, exit 0
    jsonl_before, csv_before = out.with_suffix(".jsonl").read_text(), out.with_suffix(".csv").read_text()
    assert cli.main(["score", str(photos), "--out", str(out), "--no-progress"]) == 0
    assert out.with_suffix(".jsonl").read_text() == jsonl_before
    assert out.with_suffix(".csv").read_text() == csv_before

    # 4. add a file: only it is processed and appended
    (photos / "nested" / "new.jpg").write_bytes(encode(photo("coffee"), quality=70))
    assert cli.main(["score", str(photos), "--out", str(out), "--no-progress"]) == 0
    lines2 = read_jsonl(out.with_suffix(".jsonl"))
    rows2 = read_csv(out.with_suffix(".csv"))
    assert len(lines2) == len(lines) + 1 and lines2[-1]["path"] == "nested/new.jpg"
    assert lines2[:-1] == lines
    assert len(rows2) == len(rows) + 1 and rows2[-1]["path"] == "nested/new.jpg" and rows2[-1]["error"] == ""

    # 5. --retry-failed processes the failed image again (still corrupt: exit 1, one more row)
    assert cli.main(["score", str(photos), "--out", str(out), "--no-progress", "--retry-failed"]) == 1
    lines3 = read_jsonl(out.with_suffix(".jsonl"))
    assert [line["path"] for line in lines3[len(lines2):]] == ["broken.jpg"]

    # 6. --no-resume starts over
    assert cli.main(["score", str(photos), "--out", str(out), "--no-progress", "--no-resume", "--no-quality"]) == 1
    lines4 = read_jsonl(out.with_suffix(".jsonl"))
    assert len(lines4) == len(files) + 1
    assert all(line["result"]["quality"] is None for line in lines4 if line["result"])
    assert read_csv(out.with_suffix(".csv"))[0]["quality_score"] == ""


def test_score_manifest_of_paths_and_urls(tmp_path, cli_env, monkeypatch, image_server):
    monkeypatch.setenv("ALLOW_PRIVATE_URLS", "true")
    photos = tmp_path / "m"
    photos.mkdir()
    (photos / "a.jpg").write_bytes(encode(photo("astronaut")))
    (photos / "b.png").write_bytes(encode(photo("coffee"), "PNG"))
    url = image_server.bytes("/chelsea.jpg", encode(photo("chelsea")))
    missing_url = image_server.url("/nothing-here.jpg")
    manifest = photos / "list.jsonl"
    manifest.write_text("\n".join([
        json.dumps({"path": "a.jpg", "image_id": "A"}),
        json.dumps(str(photos / "b.png")),
        json.dumps({"url": url}),
        json.dumps({"path": "gone.jpg"}),
        json.dumps({"url": missing_url, "id": "404"}),
    ]) + "\n")
    out = tmp_path / "manifest"
    assert cli.main(["score", str(manifest), "--out", str(out), "--no-progress", "--batch-size", "3"]) == 1
    lines = {line["path"]: line for line in read_jsonl(out.with_suffix(".jsonl"))}
    assert set(lines) == {"a.jpg", str(photos / "b.png"), url, "gone.jpg", missing_url}
    assert lines["a.jpg"]["image_id"] == "A" and lines["a.jpg"]["result"]["width_px"] == 512
    assert lines[url]["result"]["source_url"] == url and lines[url]["result"]["height_px"] == 300
    assert lines["gone.jpg"]["error"]["type"] == "unreadable_file"
    assert lines[missing_url]["image_id"] == "404" and lines[missing_url]["error"]["type"] in ("upstream_error", "unreachable_url")
    assert lines[missing_url]["error"]["message"]

    # the same list as CSV (header with path + image_id) gives the same keys
    csv_manifest = photos / "list.csv"
    csv_manifest.write_text("image_id,path\nA,a.jpg\nB,b.png\n")
    assert cli.main(["score", str(csv_manifest), "--out", str(tmp_path / "m2"), "--no-progress"]) == 0
    rows = read_csv(tmp_path / "m2.csv")
    assert [(r["image_id"], r["path"]) for r in rows] == [("A", "a.jpg"), ("B", "b.png")]


def test_score_against_a_live_server_with_api_key(tmp_path, cli_env, live_factory):
    photos = tmp_path / "p"
    files = {"astronaut.jpg": encode(photo("astronaut")), "coffee.jpg": encode(photo("coffee")),
             "chelsea.png": encode(photo("chelsea"), "PNG")}
    for n, d in files.items():
        (photos / n).parent.mkdir(parents=True, exist_ok=True)
        (photos / n).write_bytes(d)
    server = live_factory(api_keys="k-123", max_batch_size=2)
    out = tmp_path / "remote"

    # wrong key: exit 3 before anything is written
    assert cli.main(["score", str(photos), "--out", str(out), "--server", server.base_url, "--api-key", "nope",
                     "--no-progress"]) == cli.EXIT_SERVER
    assert not out.with_suffix(".jsonl").exists()
    # right key; --batch-size 3 > the server's MAX_BATCH_SIZE 2: the CLI splits the request
    assert cli.main(["score", str(photos), "--out", str(out), "--server", server.base_url + "/", "--api-key", "k-123",
                     "--batch-size", "3", "--no-progress"]) == 0
    lines = {line["path"]: line for line in read_jsonl(out.with_suffix(".jsonl"))}
    expected = api_results(tmp_path, files)
    assert set(lines) == set(files)
    for n in files:
        assert strip(lines[n]["result"]) == strip(expected[n])
    # nobody listening: exit 3
    assert cli.main(["score", str(photos), "--out", str(tmp_path / "x"), "--server", f"http://127.0.0.1:{free_port()}",
                     "--no-progress"]) == cli.EXIT_SERVER


def test_score_flags_select_analyses(tmp_path, cli_env):
    photos = tmp_path / "f"
    photos.mkdir()
    (photos / "a.jpg").write_bytes(encode(photo("astronaut")))
    out = tmp_path / "flags"
    assert cli.main(["score", str(photos), "--out", str(out), "--no-progress", "--no-exposure", "--faces",
                     "--aesthetic"]) == 0
    res = read_jsonl(out.with_suffix(".jsonl"))[0]["result"]
    assert res["exposure"] is None and res["blur"]["status"] == "ok"
    assert res["faces"]["status"] == "unavailable" and res["aesthetic"]["status"] == "unavailable"  # empty MODEL_DIR
    row = read_csv(out.with_suffix(".csv"))[0]
    assert row["mean_brightness"] == "" and row["faces"] == "" and row["aesthetic"] == ""


def test_usage_errors_and_help(tmp_path, cli_env, capsys):
    assert cli.main(["score", str(tmp_path / "nope")]) == cli.EXIT_USAGE
    assert "no such folder" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli.main(["score", str(empty)]) == cli.EXIT_USAGE
    assert cli.main(["score", str(empty), "--bogus"]) == cli.EXIT_USAGE
    assert cli.main(["score", str(empty), "--batch-size", "0"]) == cli.EXIT_USAGE
    assert cli.main(["score", str(empty), "--no-blur", "--no-exposure", "--no-quality"]) == cli.EXIT_USAGE
    assert cli.main(["cluster", str(tmp_path / "nope")]) == cli.EXIT_USAGE
    assert cli.main([]) == cli.EXIT_USAGE
    bad = tmp_path / "list.xlsx"
    bad.write_text("x")
    assert cli.main(["score", str(bad)]) == cli.EXIT_USAGE
    # two runs never write the same outputs at once
    one = tmp_path / "one"
    one.mkdir()
    (one / "a.jpg").write_bytes(encode(photo("coffee")))
    with cli.OutputLock(tmp_path / "busy"):
        assert cli.main(["score", str(one), "--out", str(tmp_path / "busy"), "--no-progress"]) == cli.EXIT_USAGE
    assert "another run is writing" in capsys.readouterr().err
    assert not (tmp_path / "busy.jsonl").exists() and not (tmp_path / "busy.lock").exists()

    proc = run_cli("--help", cwd=cli_env)
    assert proc.returncode == 0
    assert "exit codes:" in proc.stdout and "score" in proc.stdout and "cluster" in proc.stdout
    proc = run_cli("score", "--help", cwd=cli_env, env_extra={"LOUPE_API_KEY": "hunter2-secret"})
    assert proc.returncode == 0
    text = proc.stdout
    assert "hunter2-secret" not in text  # the key from the environment is never echoed
    for option in ("--out", "--batch-size", "--concurrency", "--resume", "--retry-failed", "--server", "--api-key",
                   "--timeout", "--progress", "--aesthetic", "--faces", "--emotion", "--embedding", "--no-quality"):
        assert option in text, option
    for code in ("0 ", "1 ", "2 ", "3 "):
        assert re.search(rf"^\s+{code}", text, re.M), code
    proc = run_cli("cluster", "--help", cwd=cli_env)
    assert proc.returncode == 0
    for option in ("--copy-best", "--link-best", "--eps", "--hash-max-distance", "--fast", "--out"):
        assert option in proc.stdout, option
    proc = run_cli("score", str(tmp_path / "nope"), cwd=cli_env)
    assert proc.returncode == 2 and "no such folder" in proc.stderr


# --- cluster --------------------------------------------------------------------------------------------------------
def write_burst(root: Path) -> None:
    base = photo("astronaut")
    h, w = base.shape[:2]
    crop = np.ascontiguousarray(base[10:h - 8, 6:w - 12])  # a slightly different framing of the same shot
    files = {
        "burst/IMG_001.jpg": encode(base, quality=95),
        "burst/IMG_002.jpg": encode(jpeg_roundtrip(crop, 80), quality=85),
        "burst/IMG_003.jpg": encode(gaussian_blur(base, 3.0), quality=92),
        "coffee.jpg": encode(photo("coffee")),
        "chelsea.png": encode(photo("chelsea"), "PNG"),
        "rocket.jpg": encode(photo("rocket")),
    }
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)


def test_cluster_contact_sheet_groups_and_copy_best(tmp_path, cli_env):
    folder = tmp_path / "shoot"
    write_burst(folder)
    keep = folder / "keepers"  # inside the scanned folder: must be skipped on later runs
    out = tmp_path / "sheet"
    assert cli.main(["cluster", str(folder), "--out", str(out), "--copy-best", str(keep), "--no-progress"]) == 0

    summary = json.loads(out.with_suffix(".json").read_text())
    assert len(summary["groups"]) == 1
    g = summary["groups"][0]
    members = {m["path"]: m for m in g["members"]}
    assert set(members) == {"burst/IMG_001.jpg", "burst/IMG_002.jpg", "burst/IMG_003.jpg"}
    assert g["best"] in ("burst/IMG_001.jpg", "burst/IMG_002.jpg")  # a sharp one, never the blurred copy
    assert members[g["best"]]["is_best"] and members[g["best"]]["rank"] == 1
    blurred = members["burst/IMG_003.jpg"]
    assert not blurred["is_best"] and blurred["rejected_reason"] and blurred["rank"] == 3
    assert sorted(summary["singletons"]) == ["chelsea.png", "coffee.jpg", "rocket.jpg"]
    assert summary["failed"] == []
    assert sorted(summary["keep"]) == sorted([g["best"], "chelsea.png", "coffee.jpg", "rocket.jpg"])

    page = out.with_suffix(".html").read_text()
    uris = re.findall(r'src="data:image/jpeg;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(uris) == 6
    for u in uris:
        thumb = Image.open(io.BytesIO(base64.b64decode(u)))
        assert thumb.format == "JPEG" and max(thumb.size) <= 256
    assert "http://" not in page and "https://" not in page  # self-contained
    assert page.count("★ Best shot") == 1
    best_fig = re.search(r'<figure class="best">.*?</figure>', page).group(0)
    assert g["best"] in best_fig
    rejected = re.findall(r'<figure class="rejected">.*?</figure>', page)
    assert len(rejected) == 2 and any("IMG_003.jpg" in f and "Rejected:" in f for f in rejected)
    assert "Unique shots" in page

    copied = sorted(p.relative_to(keep).as_posix() for p in keep.rglob("*") if p.is_file())
    assert copied == sorted(summary["keep"])
    assert (keep / g["best"]).read_bytes() == (folder / g["best"]).read_bytes()

    # again into the same folder with links: the keepers folder is not scanned (same groups), copies become links
    assert cli.main(["cluster", str(folder), "--out", str(tmp_path / "sheet2"), "--link-best", str(keep),
                     "--no-progress"]) == 0
    summary2 = json.loads((tmp_path / "sheet2.json").read_text())
    assert [g2["members"] for g2 in summary2["groups"]] == [g["members"]]
    assert summary2["singletons"] == summary["singletons"]
    linked = sorted(p.relative_to(keep).as_posix() for p in keep.rglob("*") if p.is_symlink())
    assert linked == copied
    assert all((keep / p).resolve() == (folder / p).resolve() for p in linked)


def test_cluster_with_an_unreadable_image_exits_1(tmp_path, cli_env):
    folder = tmp_path / "s"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(encode(photo("astronaut")))
    (folder / "b.jpg").write_bytes(encode(photo("coffee")))
    (folder / "broken.jpg").write_bytes(b"not really a jpeg")
    out = tmp_path / "c"
    assert cli.main(["cluster", str(folder), "--out", str(out), "--no-progress", "--fast"]) == cli.EXIT_FAILED
    summary = json.loads(out.with_suffix(".json").read_text())
    assert [f["path"] for f in summary["failed"]] == ["broken.jpg"]
    assert summary["failed"][0]["error"]["message"]
    assert sorted(summary["singletons"]) == ["a.jpg", "b.jpg"]
    assert "Could not be read" in out.with_suffix(".html").read_text()


# --- the blur tuner ------------------------------------------------------------------------------------------------
def load_tuner():
    spec = importlib.util.spec_from_file_location("tune_blur", PROJECT_ROOT / "scripts" / "tune_blur.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["tune_blur"] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def write_labelled(root: Path) -> None:
    from tests.helpers import PHOTO_NAMES

    for name in PHOTO_NAMES:
        rgb = photo(name)
        h, w = rgb.shape[:2]
        crop = np.ascontiguousarray(rgb[h // 8: h - h // 8, w // 8: w - w // 8])
        for sub, variants in {
            "sharp": {"": rgb, "_crop": crop},
            "blur_defocus": {"_s2": gaussian_blur(rgb, 2.0), "_s3": gaussian_blur(crop, 3.0)},
            "blur_motion": {"_m21": motion_blur(rgb, 21), "_m31": motion_blur(crop, 31)},
        }.items():
            (root / sub).mkdir(parents=True, exist_ok=True)
            for suffix, arr in variants.items():
                (root / sub / f"{name}{suffix}.jpg").write_bytes(encode(arr))
    (root / "blur_motion" / "clock_motion.png").write_bytes(encode(clock_motion(), "PNG"))


def test_tuner_separates_a_labelled_set(tmp_path, cli_env, capsys):
    root = tmp_path / "labelled"
    write_labelled(root)
    tuner = load_tuner()
    csv_path, png = tmp_path / "t" / "blur.csv", tmp_path / "t" / "blur.png"
    assert tuner.main([str(root), "--save-csv", str(csv_path), "--save-hist", str(png)]) == 0
    text = capsys.readouterr().out
    thr = float(re.search(r"^BLUR_THRESHOLD=([\d.]+)$", text, re.M).group(1))
    lo = float(re.search(r"^BRIGHT_MIN=([\d.]+)$", text, re.M).group(1))
    hi = float(re.search(r"^BRIGHT_MAX=([\d.]+)$", text, re.M).group(1))
    assert 0 <= lo < hi <= 255
    assert "Otsu's method on log10(Laplacian variance)" in text
    assert "the 2nd and 98th percentiles of the mean brightness" in text

    rows = read_csv(csv_path)
    assert len(rows) == 5 * 6 + 1
    labels = {r["label"] for r in rows}
    assert labels == {"sharp", "blur_defocus", "blur_motion"}
    correct = {lab: 0 for lab in labels}
    counts = {lab: 0 for lab in labels}
    for r in rows:
        v = float(r["laplacian_variance"])
        counts[r["label"]] += 1
        correct[r["label"]] += (v >= thr) if r["label"] == "sharp" else (v < thr)
        if abs(v - thr) > 0.1:  # thr is printed rounded to 0.1
            assert int(r["blurry_at_suggested"]) == int(v < thr)
    accuracy = sum(correct.values()) / len(rows)
    assert accuracy >= 0.95, (thr, correct, counts)
    assert all(correct[k] / counts[k] >= 0.9 for k in labels), (thr, correct, counts)
    # the printed accuracy agrees with ours
    m = re.search(r"accuracy: suggested [\d.]+ → ([\d.]+)%", text)
    assert float(m.group(1)) == pytest.approx(accuracy * 100, abs=0.06)
    for lab in labels:
        assert re.search(rf"^\s+{lab}\s+[\d.]+%", text, re.M), lab

    # the histogram is a real PNG
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size[0] > 400

    # measured exactly like the service's quality gate (/v1/quality)
    sample = root / "sharp" / "astronaut.jpg"
    with TestClient(create_app(settings(tmp_path))) as c:
        gate = c.post("/v1/quality", files={"file": ("a.jpg", sample.read_bytes(), "image/jpeg")}).json()
    row = next(r for r in rows if r["path"].endswith("sharp/astronaut.jpg"))
    assert float(row["laplacian_variance"]) == pytest.approx(gate["blur_score"], abs=1e-4)
    assert float(row["mean_brightness"]) == pytest.approx(gate["brightness"], abs=1e-3)


def test_tuner_unlabelled_folder_and_usage_errors(tmp_path, cli_env, capsys):
    tuner = load_tuner()
    root = tmp_path / "mixed"
    root.mkdir()
    for n in ("astronaut", "coffee", "chelsea"):
        (root / f"{n}.jpg").write_bytes(encode(photo(n)))
        (root / f"{n}_blur.jpg").write_bytes(encode(gaussian_blur(photo(n), 3)))
    (root / "broken.jpg").write_bytes(b"nope")
    assert tuner.main([str(root), "-q"]) == 1  # one unreadable file: reported, still a suggestion
    captured = capsys.readouterr()
    assert "broken.jpg" in captured.err
    thr = float(re.search(r"BLUR_THRESHOLD=([\d.]+)", captured.out).group(1))
    assert captured.out.count("\n") == 3  # -q: only the three settings
    assert 10 < thr < 400
    assert tuner.main([str(tmp_path / "none")]) == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    assert tuner.main([str(empty)]) == 2
    one = tmp_path / "one"
    one.mkdir()
    (one / "a.jpg").write_bytes(encode(photo("coffee")))
    assert tuner.main([str(one)]) == 2
    assert tuner.main([str(root), "--bright-percentiles", "90", "10"]) == 2


def test_progress_bar_counts_each_image_once_with_concurrency(tmp_path, cli_env, capsys):
    """--concurrency 3 with batches of 1: the bar ends at N/N (it used to count other batches' rows too)."""
    photos = tmp_path / "photos"
    n = len(write_photos(photos))
    assert cli.main(["score", str(photos), "--out", str(tmp_path / "p"), "--batch-size", "1", "--concurrency", "3",
                     "--progress", "--no-quality"]) == cli.EXIT_FAILED  # write_photos has one broken file
    err = capsys.readouterr().err
    counts = [tuple(map(int, m)) for m in re.findall(r"(\d+)/(\d+) \[", err)]
    assert counts and counts[-1] == (n, n), err[-500:]
    assert all(done <= total for done, total in counts), counts


# --- score --tasks -----------------------------------------------------------------------------------------------
TASK_WEIGHTS = {"yunet": "face_yunet", "person": "person_deeplabv3_tflite", "tags": "imagenet_mobilenet_tflite",
                "mobilenet": "imagenet_mobilenet_tflite"}
TASKS = [{"operation_id": "person", "type": "detect_bounding_box"},
         {"operation_id": "tags", "type": "tag_imagenet", "params": {"top": 3}},
         {"operation_id": "face", "type": "embed_mobilenet", "params": {"target": "prominent_face"}}]
TASK_COLUMNS = ["path", "image_id", "width", "height", "person", "tags", "face", "error"]


@pytest.fixture(scope="module")
def task_models(tmp_path_factory):
    """A MODEL_DIR with the real offline weights of the person model, YuNet, the ImageNet tagger and MobileNet."""
    missing = sorted({src for src in TASK_WEIGHTS.values() if not (SHARED_WEIGHTS / src).is_dir()})
    if missing:
        pytest.skip(f"real weights not available: {', '.join(missing)} missing from {SHARED_WEIGHTS}")
    root = tmp_path_factory.mktemp("cli-task-models")
    for sub, src in TASK_WEIGHTS.items():
        shutil.copytree(SHARED_WEIGHTS / src, root / sub)
    return root


@pytest.fixture
def task_env(cli_env, monkeypatch, task_models):
    monkeypatch.setenv("MODEL_DIR", str(task_models))
    return cli_env


def write_task_photos(root: Path, names=("astronaut.jpg", "chelsea.png", "nested/coffee.jpg")) -> dict[str, bytes]:
    files = {}
    for rel in names:
        stem, ext = Path(rel).stem, Path(rel).suffix
        data = encode(photo(stem), "PNG") if ext == ".png" else encode(photo(stem))
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
        files[rel] = data
    return files


def write_tasks(path: Path, tasks) -> Path:
    path.write_text(json.dumps(tasks) if not isinstance(tasks, str) else tasks)
    return path


def test_score_with_a_tasks_file_boxes_tags_embeddings_and_crops(tmp_path, task_env, task_models, capsys):
    photos = tmp_path / "photos"
    files = write_task_photos(photos)
    tasks = write_tasks(tmp_path / "tasks.json", TASKS)
    crops = photos / "crops"  # inside the scanned folder: never scanned as photos
    out = tmp_path / "out" / "regions"
    assert cli.main(["score", str(photos), "--tasks", str(tasks), "--crops", str(crops), "--out", str(out),
                     "--batch-size", "2", "--no-progress"]) == cli.EXIT_OK
    assert "scored 3 image(s)" in capsys.readouterr().out

    lines = {line["path"]: line for line in read_jsonl(out.with_suffix(".jsonl"))}
    with out.with_suffix(".csv").open(newline="") as fh:
        assert next(csv.reader(fh)) == TASK_COLUMNS
    rows = {r["path"]: r for r in read_csv(out.with_suffix(".csv"))}
    assert set(lines) == set(rows) == set(files)  # one row per image, the crops folder not scanned
    for name in files:
        line, row = lines[name], rows[name]
        assert line["error"] is None and row["error"] == "" and line["source"] == str(photos / name)
        res = line["result"]["results"]
        assert set(res) == {"person", "tags", "face"}
        assert all("cropped_image_base64" not in r for r in res.values())  # crops are files, not base64 in the JSONL
        h, w = photo(Path(name).stem).shape[:2]
        assert (int(row["width"]), int(row["height"])) == (line["result"]["width_px"], line["result"]["height_px"]) == (w, h)
        labels = res["tags"]["data"]["labels"]
        assert res["tags"]["status"] == "success" and 1 <= len(labels) <= 3
        assert [x["confidence"] for x in labels] == sorted((x["confidence"] for x in labels), reverse=True)
        assert row["tags"] == f"{labels[0]['label']} ({labels[0]['confidence']:.3f})"
        assert res["tags"]["cropped_image_path"] is None  # whole image: no crop

    # the astronaut: her box, her face's 1024-d MobileNet vector, both crops written where the JSONL says
    astro, row = lines["astronaut.jpg"]["result"]["results"], rows["astronaut.jpg"]
    box = astro["person"]["data"]["box"]
    assert astro["person"]["status"] == "success" and len(box) == 4
    assert 0 <= box[0] < box[2] <= 512 and 0 <= box[1] < box[3] <= 512
    assert (box[2] - box[0]) * (box[3] - box[1]) > 0.2 * 512 * 512
    assert row["person"] == " ".join(str(v) for v in box)
    face = astro["face"]
    assert face["status"] == "success" and face["data"]["dim"] == len(face["data"]["vector"]) == 1024
    assert row["face"] == "1024"
    fb = face["cropped_image_bbox"]
    assert box[0] - 4 <= fb[0] < fb[2] <= box[2] + 4 and box[1] - 4 <= fb[1] < fb[3] <= box[3] + 4
    for op, bbox in (("person", box), ("face", fb)):
        path = crops / "astronaut.jpg" / f"{op}.png"
        assert astro[op]["cropped_image_path"] == str(path)
        with Image.open(path) as png:
            assert png.format == "PNG"
            assert abs(png.width / png.height - (bbox[2] - bbox[0]) / (bbox[3] - bbox[1])) < 0.1
    assert sorted(p.name for p in (crops / "astronaut.jpg").iterdir()) == ["face.png", "person.png"]

    # no person in the cat or the coffee: the person task is skipped, and so is the face; no crops
    for name in ("chelsea.png", "nested/coffee.jpg"):
        res, row = lines[name]["result"]["results"], rows[name]
        assert res["person"]["status"] == "skipped" and "No person" in res["person"]["error_message"]
        assert res["face"]["status"] == "skipped" and row["person"] == row["face"] == "skipped"
        assert res["person"]["cropped_image_path"] is None and not (crops / name).exists()
    assert any("cat" in x["label"].lower() for x in lines["chelsea.png"]["result"]["results"]["tags"]["data"]["labels"])

    # run again: the crops inside the folder are not taken for new photos, nothing is left to do
    assert cli.main(["score", str(photos), "--tasks", str(tasks), "--crops", str(crops), "--out", str(out),
                     "--no-progress"]) == cli.EXIT_OK
    assert "nothing to do: all 3 images" in capsys.readouterr().out

    # the box is the API's own answer for the same bytes
    with TestClient(create_app(Settings(_env_file=None, log_json=False, log_level="WARNING",
                                        model_dir=task_models))) as c:
        r = c.post("/v1/tasks", json={"image": {"base64": base64.b64encode(files["astronaut.jpg"]).decode()},
                                      "tasks": TASKS[:1], "return_crops": False})
    assert r.status_code == 200, r.text
    assert r.json()["results"]["person"]["data"]["box"] == box


def test_score_tasks_resume_skips_done_images(tmp_path, task_env, monkeypatch, capsys):
    """Run, run again (nothing sent), add a photo (only it is sent and appended); another task list
    cannot append to these outputs, --no-resume starts over with its columns."""
    from app.cli.client import Api

    sent: list[tuple[str, list[str]]] = []
    real_call = Api.call

    async def spy(self, method, path, **kw):
        if method == "POST":
            body = kw.get("json") or {}
            sent.append((path, [i["image_id"] for i in body.get("images", [])]))
            assert body.get("return_crops") is False  # no --crops: no crops asked for
        return await real_call(self, method, path, **kw)

    monkeypatch.setattr(Api, "call", spy)
    photos = tmp_path / "photos"
    write_task_photos(photos, ("astronaut.jpg", "nested/coffee.jpg"))
    tasks = write_tasks(tmp_path / "tasks.json", TASKS)
    out = tmp_path / "resume"
    args = ["score", str(photos), "--tasks", str(tasks), "--out", str(out), "--no-progress", "--batch-size", "1"]
    assert cli.main(args) == cli.EXIT_OK
    assert sorted(ids for _, [ids] in sent) == ["astronaut.jpg", "nested/coffee.jpg"]
    assert {path for path, _ in sent} == {"/v1/tasks/batch"}
    lines = read_jsonl(out.with_suffix(".jsonl"))
    assert all(r["cropped_image_base64"] is None and "cropped_image_path" not in r
               for line in lines for r in line["result"]["results"].values())
    jsonl_before, csv_before = out.with_suffix(".jsonl").read_text(), out.with_suffix(".csv").read_text()

    sent.clear()
    capsys.readouterr()
    assert cli.main(args) == cli.EXIT_OK
    assert sent == [] and "nothing to do" in capsys.readouterr().out
    assert out.with_suffix(".jsonl").read_text() == jsonl_before
    assert out.with_suffix(".csv").read_text() == csv_before

    write_task_photos(photos, ("chelsea.png",))
    assert cli.main(args) == cli.EXIT_OK
    assert sent == [("/v1/tasks/batch", ["chelsea.png"])]
    lines2 = read_jsonl(out.with_suffix(".jsonl"))
    assert lines2[:-1] == lines and lines2[-1]["path"] == "chelsea.png"
    rows = read_csv(out.with_suffix(".csv"))
    assert [r["path"] for r in rows] == [line["path"] for line in lines2]
    assert rows[-1]["person"] == "skipped" and rows[-1]["tags"] and rows[-1]["error"] == ""
    assert out.with_suffix(".csv").read_text().count("path,image_id,") == 1  # one header

    # another task list: its columns are not these, so it does not append to them
    other = write_tasks(tmp_path / "other.json", [{"operation_id": "sharp", "type": "blur"}])
    sent.clear()
    other_args = ["score", str(photos), "--tasks", str(other), "--out", str(out), "--no-progress"]
    assert cli.main(other_args) == cli.EXIT_USAGE
    assert "other columns" in capsys.readouterr().err and sent == []
    assert len(read_jsonl(out.with_suffix(".jsonl"))) == 3
    assert cli.main([*other_args, "--no-resume"]) == cli.EXIT_OK
    rows = read_csv(out.with_suffix(".csv"))
    assert len(rows) == 3 and list(rows[0]) == ["path", "image_id", "width", "height", "sharp", "error"]
    assert all(float(r["sharp"]) > 0 for r in rows)


def test_score_tasks_file_errors(tmp_path, cli_env, capsys):
    """A tasks file that cannot be used is a usage error (2) before anything runs; a task list the
    server refuses is exit 4 with the server's reason, and leaves no outputs."""
    photos = tmp_path / "photos"
    write_task_photos(photos, ("coffee.jpg",))
    out = tmp_path / "o"

    def score(*extra: str) -> tuple[int, str]:
        code = cli.main(["score", str(photos), "--out", str(out), "--no-progress", *extra])
        return code, capsys.readouterr().err

    code, err = score("--tasks", str(tmp_path / "missing.json"))
    assert code == cli.EXIT_USAGE and "cannot read the tasks file" in err
    code, err = score("--tasks", str(write_tasks(tmp_path / "bad.json", '[{"operation_id": "x",')))
    assert code == cli.EXIT_USAGE and "not valid JSON" in err
    code, err = score("--tasks", str(write_tasks(tmp_path / "obj.json", {"tasks": TASKS})))
    assert code == cli.EXIT_USAGE and "JSON array" in err and "not an object" in err
    code, err = score("--tasks", str(write_tasks(tmp_path / "clash.json", [{"operation_id": "error", "type": "blur"}])))
    assert code == cli.EXIT_USAGE and "clash" in err
    code, err = score("--crops", str(tmp_path / "crops"))
    assert code == cli.EXIT_USAGE and "--crops needs --tasks" in err
    code, err = score("--tasks", str(write_tasks(tmp_path / "ok.json", TASKS)), "--faces")
    assert code == cli.EXIT_USAGE and "--faces" in err
    assert not out.with_suffix(".jsonl").exists() and not out.with_suffix(".csv").exists()

    # the server's 422: the whole run is refused, with its words, and nothing is written
    code, err = score("--tasks", str(write_tasks(tmp_path / "unknown.json", [{"operation_id": "x", "type": "make_coffee"}])))
    assert code == cli.EXIT_REFUSED and "refused the task list" in err and "make_coffee" in err and "detect_bounding_box" in err
    code, err = score("--tasks", str(write_tasks(tmp_path / "dupe.json", [{"operation_id": "x", "type": "blur"},
                                                                           {"operation_id": "x", "type": "exposure"}])))
    assert code == cli.EXIT_REFUSED and "more than once" in err
    assert not out.with_suffix(".jsonl").exists() and not out.with_suffix(".csv").exists()

    # a real process: exit 2 and the reason on stderr; the help documents the option and the CSV columns
    proc = run_cli("score", str(photos), "--tasks", str(tmp_path / "bad.json"), cwd=cli_env)
    assert proc.returncode == 2 and "not valid JSON" in proc.stderr
    proc = run_cli("score", "--help", cwd=cli_env)
    assert proc.returncode == 0
    text = " ".join(proc.stdout.split())  # the help is wrapped to the terminal's width
    for words in ("--tasks FILE", "--crops DIR", "CSV columns with --tasks", "one column per operation_id",
                  "detect_bounding_box", "tag_imagenet", "x0 y0 x1 y1"):
        assert words in text, words
