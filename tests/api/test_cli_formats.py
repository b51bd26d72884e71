"""`loupe score` and `loupe cluster` on a day's shoot in every format Loupe reads, end to end.

A camera writes RAW + JPEG pairs (IMG_0001.dng + IMG_0001.JPG); a phone writes HEIC; an export
may be AVIF; a RAW may come alone. The CLI reads such a folder as shots: a pair is one shot,
analysed once from its JPEG, its RAW a companion listed beside it and exported with it; the
contact sheet shows a JPEG thumbnail of every shot, whatever its format (browsers show neither
HEIC nor RAW). Real files throughout: HEIC by libheif/x265, AVIF by libavif, DNG laid out by
tests/factories/formats.py, all decoded by the real in-process service.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import re
from pathlib import Path

import numpy as np
from PIL import Image

from app import cli
from app.cli.manifest import IMAGE_EXTENSIONS, collect, iter_images, pair_shots
from app.cli.sheet import thumbnail_data_uri
from app.imaging.formats import HEIF_EXTENSIONS, RAW_EXTENSIONS
from app.imaging.formats import IMAGE_EXTENSIONS as PILLOW_EXTENSIONS
from tests.factories.formats import avif_bytes, displayed, dng_bytes, heic_bytes
from tests.helpers import encode, gaussian_blur, jpeg_roundtrip, photo, read_csv, read_jsonl

BURST = ("IMG_0001", "IMG_0002", "IMG_0003")


def burst_frames() -> dict[str, np.ndarray]:
    """Three frames of one burst: the shot, a slightly shifted framing, and a blurred one."""
    base = photo("astronaut")
    h, w = base.shape[:2]
    return {"IMG_0001": base,
            "IMG_0002": jpeg_roundtrip(np.ascontiguousarray(base[10:h - 8, 6:w - 12]), 85),
            "IMG_0003": gaussian_blur(base, 3.0)}


#: the shots of the day, as (file analysed, companions, format the service reports)
SHOTS = {
    "burst/IMG_0001.JPG": (["burst/IMG_0001.dng"], "JPEG"),
    "burst/IMG_0002.JPG": (["burst/img_0002.DNG"], "JPEG"),  # names compared case-insensitively
    "burst/IMG_0003.JPG": (["burst/IMG_0003.dng"], "JPEG"),
    "phone/coffee.heic": ([], "HEIF"),
    "export/chelsea.avif": ([], "AVIF"),
    "rocket.dng": ([], "DNG"),
    "moto.jpg": ([], "JPEG"),
}
ORIENTED = {"phone/coffee.heic": ("coffee", 6), "export/chelsea.avif": ("chelsea", 8), "rocket.dng": ("rocket", 6)}


def write_shoot(root: Path) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    for stem, rgb in burst_frames().items():
        files[f"burst/{stem}.JPG"] = encode(rgb, quality=92)
        raw_name = "img_0002.DNG" if stem == "IMG_0002" else f"{stem}.dng"
        files[f"burst/{raw_name}"] = dng_bytes(rgb)
    files["phone/coffee.heic"] = heic_bytes(photo("coffee"), orientation=6)
    files["export/chelsea.avif"] = avif_bytes(photo("chelsea"), orientation=8)
    files["rocket.dng"] = dng_bytes(photo("rocket"), orientation=6)  # no JPEG beside it, no preview: demosaiced
    files["moto.jpg"] = encode(photo("motorcycle_left"))
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    (root / "notes.txt").write_text("not an image")
    return files


def thumbs_of(page: str) -> dict[str, Image.Image]:
    """The embedded thumbnails of a contact sheet, by the key in their alt text."""
    found = re.findall(r'<img src="data:image/jpeg;base64,([A-Za-z0-9+/=]+)" alt="([^"]+)"', page)
    return {alt: Image.open(io.BytesIO(base64.b64decode(data))) for data, alt in found}


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.astype(np.float64).ravel(), b.astype(np.float64).ravel())[0, 1])


def assert_shows(thumb: Image.Image, rgb: np.ndarray, orientation: int) -> None:
    """`thumb` is `rgb` as a viewer shows it under EXIF `orientation` (not as stored, not turned the other way)."""
    assert thumb.format == "JPEG"
    want = displayed(rgb, orientation)
    assert (thumb.height > thumb.width) == (want.shape[0] > want.shape[1]), (thumb.size, want.shape)
    grey = np.asarray(thumb.convert("L"))
    size = (grey.shape[1], grey.shape[0])
    right = np.asarray(Image.fromarray(want).convert("L").resize(size, Image.Resampling.BILINEAR))
    wrong = np.asarray(Image.fromarray(np.ascontiguousarray(want[::-1, ::-1])).convert("L").resize(size, Image.Resampling.BILINEAR))
    assert correlation(grey, right) > 0.9
    assert correlation(grey, right) > correlation(grey, wrong) + 0.2


# --- reading a folder as shots ------------------------------------------------------------------------------------
def test_extensions_are_every_format_loupe_reads():
    assert set(IMAGE_EXTENSIONS) == set(PILLOW_EXTENSIONS) | set(HEIF_EXTENSIONS) | set(RAW_EXTENSIONS)
    assert cli.IMAGE_EXTENSIONS == IMAGE_EXTENSIONS
    for ext in (".heic", ".HEIF", ".avif", ".dng", ".CR3", ".nef", ".arw", ".RAF", ".orf", ".rw2", ".pef", ".srw"):
        assert f"x{ext}".lower().endswith(IMAGE_EXTENSIONS), ext


def test_pairing_rules(tmp_path):
    names = ["a.jpg", "a.CR3", "b.jpg", "b.png", "c.HEIC", "c.nef", "d.arw", "e.jpeg", "e.JPG", "e.dng", "f.dng",
             "f.cr2", "g.avif", "g.raf", "h.png", "h.orf", "sub/a.dng", "sub/i.tif", "sub/I.RW2"]
    for n in names:
        (tmp_path / n).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / n).write_bytes(b"x")
    assert sorted(p.relative_to(tmp_path).as_posix() for p in iter_images(tmp_path)) == sorted(names)
    items = {it.key: it.companion_keys for it in collect(tmp_path)}
    assert items == {
        "a.jpg": ["a.CR3"],  # RAW + JPEG: one shot, from the JPEG
        "b.jpg": [], "b.png": [],  # no RAW: two shots, as ever
        "c.HEIC": ["c.nef"],  # RAW + HEIC: from the HEIC
        "d.arw": [],  # a RAW alone: from the RAW
        "e.jpeg": ["e.dng", "e.JPG"],  # the first JPEG by name is analysed, the other JPEG goes along
        "f.cr2": [], "f.dng": [],  # two RAWs, no JPEG: two shots
        "g.avif": [], "g.raf": [],  # AVIF is no camera pair
        "h.orf": [], "h.png": [],
        "sub/a.dng": [],  # another folder: not a's RAW
        "sub/I.RW2": [], "sub/i.tif": [],
    }
    assert all(it.files == [it.path, *it.companions] for it in collect(tmp_path))
    # the pairs are found whatever the order of the paths given
    shots = pair_shots(reversed([tmp_path / n for n in names]))
    assert {p.name: [c.name for c in cs] for p, cs in shots}["a.jpg"] == ["a.CR3"]


def test_thumbnails_of_every_format_are_jpegs_shown_upright(tmp_path):
    coffee, rocket = photo("coffee"), photo("rocket")
    cases = {
        "c.heic": (heic_bytes(coffee, orientation=6), coffee, 6),
        "c.avif": (avif_bytes(coffee, orientation=8), coffee, 8),
        "r.dng": (dng_bytes(rocket, orientation=6), rocket, 6),  # demosaiced
        "p.dng": (dng_bytes(rocket, orientation=3, preview=rocket), rocket, 3),  # from its embedded preview
        "j.jpg": (encode(coffee, exif=_orientation_exif(6)), coffee, 6),
        "t.png": (encode(coffee, "PNG"), coffee, 1),
    }
    for name, (data, rgb, orientation) in cases.items():
        (tmp_path / name).write_bytes(data)
        uri = thumbnail_data_uri(tmp_path / name, 128)
        assert uri is not None and uri.startswith("data:image/jpeg;base64,"), name
        thumb = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
        assert max(thumb.size) == 128, (name, thumb.size)
        assert_shows(thumb, rgb, orientation)
    (tmp_path / "x.NEF").write_bytes(b"a text file named like a RAW")
    assert thumbnail_data_uri(tmp_path / "x.NEF") is None
    assert thumbnail_data_uri(tmp_path / "missing.dng") is None


def _orientation_exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


# --- cluster --------------------------------------------------------------------------------------------------------
def test_cluster_a_mixed_shoot_pairs_copies_and_links_every_file(tmp_path, cli_env, capsys):
    folder = tmp_path / "day"
    files = write_shoot(folder)
    keep = folder / "keepers"  # inside the scanned folder: skipped on the second run
    out = tmp_path / "sheet"
    assert cli.main(["cluster", str(folder), "--out", str(out), "--copy-best", str(keep), "--no-progress",
                     "--fast"]) == cli.EXIT_OK
    stdout = capsys.readouterr().out
    n_files = len(files)
    assert f"{len(SHOTS)} shot(s) ({n_files} files) →" in stdout

    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["failed"] == []
    # the pairs are one shot each: as many shots as names
    shots = [m["path"] for g in summary["groups"] for m in g["members"]] + summary["singletons"]
    assert sorted(shots) == sorted(SHOTS)
    assert summary["companions"] == {k: c for k, (c, _) in SHOTS.items() if c}
    # the burst is one group; its best is a sharp frame, listed with its DNG
    assert len(summary["groups"]) == 1
    g = summary["groups"][0]
    members = {m["path"]: m for m in g["members"]}
    assert set(members) == {f"burst/{s}.JPG" for s in BURST}
    assert g["best"] in ("burst/IMG_0001.JPG", "burst/IMG_0002.JPG")
    best = members[g["best"]]
    assert best["is_best"] and best["companions"] == SHOTS[g["best"]][0] and best["companions"][0].lower().endswith(".dng")
    assert best["format"] == "JPEG" and best["decoded_from"] is None
    assert not members["burst/IMG_0003.JPG"]["is_best"] and members["burst/IMG_0003.JPG"]["companions"] == ["burst/IMG_0003.dng"]
    assert sorted(summary["singletons"]) == sorted(k for k in SHOTS if not k.startswith("burst/"))
    assert sorted(summary["keep"]) == sorted([g["best"], *summary["singletons"]])
    assert sorted(summary["keep_files"]) == sorted(f for k in summary["keep"] for f in (k, *SHOTS[k][0]))

    # the export holds every file of every keeper: the JPEG and its DNG, the HEIC, the AVIF, the lone DNG
    copied = sorted(p.relative_to(keep).as_posix() for p in keep.rglob("*") if p.is_file())
    assert copied == sorted(summary["keep_files"])
    assert {g["best"], *SHOTS[g["best"]][0], "phone/coffee.heic", "export/chelsea.avif", "rocket.dng"} <= set(copied)
    for rel in copied:
        assert (keep / rel).read_bytes() == files[rel], rel
    assert f"copied {len(summary['keep'])} best shot(s) ({len(copied)} files) to {keep}" in stdout

    # the sheet: a JPEG thumbnail for every shot (HEIC, AVIF and the lone DNG too), companions under the names
    page = out.with_suffix(".html").read_text()
    thumbs = thumbs_of(page)
    assert sorted(thumbs) == sorted(SHOTS)
    assert "no preview" not in page
    for key, thumb in thumbs.items():
        assert thumb.format == "JPEG" and max(thumb.size) <= 256, key
    for key, (name, orientation) in ORIENTED.items():
        assert_shows(thumbs[key], photo(name), orientation)
    for key, (companions, fmt) in SHOTS.items():
        fig = next(f for f in re.findall(r"<figure.*?</figure>", page) if f'alt="{key}"' in f)
        assert f"({fmt})" in fig, (key, fig)
        for c in companions:
            assert f'<div class="companions">+ {Path(c).name}</div>' in fig
    assert page.count('class="companions"') == 3
    assert f"{len(SHOTS)} shots ({n_files} files)" in page

    # again with links into the same folder: it is not scanned, the same shots; both files of a pair are linked
    assert cli.main(["cluster", str(folder), "--out", str(tmp_path / "sheet2"), "--link-best", str(keep),
                     "--no-progress", "--fast"]) == cli.EXIT_OK
    summary2 = json.loads((tmp_path / "sheet2.json").read_text())
    assert summary2["keep_files"] == summary["keep_files"]
    linked = sorted(p.relative_to(keep).as_posix() for p in keep.rglob("*") if p.is_symlink())
    assert linked == copied
    assert all((keep / rel).resolve() == (folder / rel).resolve() for rel in linked)
    assert f"linked {len(summary['keep'])} best shot(s) ({len(copied)} files)" in capsys.readouterr().out


def test_cluster_with_a_fake_raw_fails_that_file_only(tmp_path, cli_env):
    folder = tmp_path / "s"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(encode(photo("astronaut")))
    (folder / "a.dng").write_bytes(dng_bytes(photo("astronaut")))
    (folder / "c.heic").write_bytes(heic_bytes(photo("coffee")))
    (folder / "X.NEF").write_bytes(b"this is a text file with a RAW name\n" * 4)
    out = tmp_path / "c"
    assert cli.main(["cluster", str(folder), "--out", str(out), "--no-progress", "--fast"]) == cli.EXIT_FAILED
    summary = json.loads(out.with_suffix(".json").read_text())
    assert [f["path"] for f in summary["failed"]] == ["X.NEF"]
    assert summary["failed"][0]["error"]["message"] and summary["failed"][0]["companions"] == []
    assert sorted(summary["singletons"]) == ["a.jpg", "c.heic"]
    page = out.with_suffix(".html").read_text()
    assert "Could not be read" in page and sorted(thumbs_of(page)) == ["a.jpg", "c.heic"]


# --- score ------------------------------------------------------------------------------------------------------------
def test_score_a_mixed_shoot_one_row_per_shot_then_resume(tmp_path, cli_env, capsys):
    folder = tmp_path / "day"
    write_shoot(folder)
    (folder / "X.NEF").write_bytes(b"this is a text file with a RAW name\n" * 4)
    out = tmp_path / "scores"
    assert cli.main(["score", str(folder), "--out", str(out), "--no-progress", "--batch-size", "3",
                     "--no-quality"]) == cli.EXIT_FAILED  # the fake NEF, and only it
    assert f"scored {len(SHOTS) + 1} image(s)" in capsys.readouterr().out

    lines = {line["path"]: line for line in read_jsonl(out.with_suffix(".jsonl"))}
    rows = {r["path"]: r for r in read_csv(out.with_suffix(".csv"))}
    with out.with_suffix(".csv").open(newline="") as fh:
        assert next(csv.reader(fh)) == list(cli.CSV_FIELDS)
    assert set(lines) == set(rows) == {*SHOTS, "X.NEF"}  # one row per shot: no row of its own for a companion RAW
    for key, (companions, fmt) in SHOTS.items():
        line, row = lines[key], rows[key]
        assert line["error"] is None and row["error"] == "", (key, line["error"])
        assert line["companions"] == companions and row["companions"] == ";".join(companions)
        assert line["result"]["format"] == row["format"] == fmt, key
        assert float(row["laplacian_variance"]) > 0
        if fmt == "DNG":
            assert line["result"]["decoded_from"] in ("raw_preview", "raw_demosaic")
            assert row["decoded_from"] == line["result"]["decoded_from"]
        else:
            assert line["result"]["decoded_from"] is None and row["decoded_from"] == ""
    # sizes are the displayed ones (after orientation; the DNG's mosaic is cropped to even sides)
    h, w = (n // 2 * 2 for n in photo("rocket").shape[:2])
    assert (int(rows["rocket.dng"]["width"]), int(rows["rocket.dng"]["height"])) == (h, w)
    h, w = photo("coffee").shape[:2]
    assert (int(rows["phone/coffee.heic"]["width"]), int(rows["phone/coffee.heic"]["height"])) == (h, w)
    fake = lines["X.NEF"]
    assert fake["error"]["type"] == "unsupported_media_type" and rows["X.NEF"]["error"].startswith("unsupported_media_type")
    assert fake["companions"] == [] and rows["X.NEF"]["companions"] == ""

    # run again: every shot is done, nothing is appended
    jsonl_before, csv_before = out.with_suffix(".jsonl").read_text(), out.with_suffix(".csv").read_text()
    assert cli.main(["score", str(folder), "--out", str(out), "--no-progress"]) == cli.EXIT_OK
    assert "nothing to do" in capsys.readouterr().out
    assert out.with_suffix(".jsonl").read_text() == jsonl_before and out.with_suffix(".csv").read_text() == csv_before

    # outputs of an older Loupe (no companions/format/decoded_from columns), one shot not yet done: resuming
    # upgrades the CSV's header, keeps its rows and appends the missing shot
    old_fields = [f for f in cli.CSV_FIELDS if f not in ("companions", "format", "decoded_from")]
    kept = [r for r in read_csv(out.with_suffix(".csv")) if r["path"] != "burst/IMG_0002.JPG"]
    with out.with_suffix(".csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=old_fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(kept)
    out.with_suffix(".jsonl").write_text("".join(json.dumps(v) + "\n" for k, v in lines.items()
                                                 if k != "burst/IMG_0002.JPG"))
    assert cli.main(["score", str(folder), "--out", str(out), "--no-progress", "--no-quality"]) == cli.EXIT_OK
    assert "new column(s) companions, format, decoded_from" in capsys.readouterr().err
    rows2 = read_csv(out.with_suffix(".csv"))
    assert [r["path"] for r in rows2] == [r["path"] for r in kept] + ["burst/IMG_0002.JPG"]
    assert rows2[-1]["companions"] == "burst/img_0002.DNG" and rows2[-1]["format"] == "JPEG"
    assert rows2[0]["companions"] == "" and rows2[0]["laplacian_variance"] == kept[0]["laplacian_variance"]
    assert read_jsonl(out.with_suffix(".jsonl"))[-1]["companions"] == ["burst/img_0002.DNG"]
