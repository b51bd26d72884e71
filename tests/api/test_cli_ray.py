"""`loupe score|cluster --engine ray` on a local Ray (2 CPUs): the same rows and groups as the in-process engine.

One Ray for the module (`ray.init(num_cpus=2)`), real photos, the real quality models when ../shared/weights
has them (BRISQUE, NIQE; MobileNet for the grouping). Each Ray run is compared with an in-process run of the
same bytes: same JSONL lines and Parquet columns (the in-process CSV's), numbers equal to float precision. An
object-store prefix is served by moto's S3 server on 127.0.0.1; a resumed run skips rows by (path, sha256).
"""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from app import cli
from app.cli.ray_cluster import hamming_links
from app.cli.ray_engine import plan_pool
from tests.helpers import SHARED_WEIGHTS, encode, gaussian_blur, jpeg_roundtrip, photo, read_jsonl

ray = pytest.importorskip("ray", reason="ray[data] is not installed (requirements.txt pins it)")
pq = pytest.importorskip("pyarrow.parquet", reason="pyarrow is not installed")

VOLATILE = ("timings_ms", "processing_time_ms", "scored_at")
WEIGHTS = {"brisque": "brisque_libsvm_live", "niqe": "niqe_live", "mobilenet": "imagenet_mobilenet_tflite"}


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """BRISQUE, NIQE and MobileNet from ../shared/weights when there (else an empty MODEL_DIR: blur/exposure only)."""
    root = tmp_path_factory.mktemp("ray-models")
    for sub, src in WEIGHTS.items():
        if (SHARED_WEIGHTS / src).is_dir():
            shutil.copytree(SHARED_WEIGHTS / src, root / sub)
    return root


@pytest.fixture
def ray_env(cli_env, monkeypatch, model_dir, local_ray):
    monkeypatch.setenv("MODEL_DIR", str(model_dir))  # the driver's settings travel to the actors
    return cli_env


def photos() -> dict[str, bytes]:
    return {
        "astronaut.jpg": encode(photo("astronaut")),
        "nested/coffee.png": encode(photo("coffee"), "PNG"),
        "chelsea.webp": encode(photo("chelsea"), "WEBP", quality=90),
        "blurry_rocket.jpg": encode(gaussian_blur(photo("rocket"), 4)),
        "IMG_0001.JPG": encode(photo("motorcycle_left")),
        "IMG_0001.dng": b"a camera RAW: the JPEG's companion, never read",
        "broken.jpg": b"this is a text file with an image name",
    }


def write_files(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def close(a, b, path="") -> None:
    """Equal, with floats equal to float precision (rel 1e-6), recursively."""
    if isinstance(a, dict) and isinstance(b, dict):
        keys = set(a) - set(VOLATILE)
        assert keys == set(b) - set(VOLATILE), f"{path}: {sorted(keys ^ (set(b) - set(VOLATILE)))}"
        for k in keys:
            close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list) and isinstance(b, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            close(x, y, f"{path}[{i}]")
    elif isinstance(a, float) or isinstance(b, float):
        assert isinstance(a, int | float) and isinstance(b, int | float), f"{path}: {a!r} vs {b!r}"
        assert math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9), f"{path}: {a!r} vs {b!r}"
    else:
        assert a == b, f"{path}: {a!r} vs {b!r}"


def csv_value(text: str):
    if text == "":
        return None
    if text in ("True", "False"):
        return text == "True"
    try:
        return float(text)
    except ValueError:
        return text


def assert_same_rows(inproc_prefix: Path, ray_prefix: Path, source_of=None) -> None:
    """The Ray outputs hold the in-process ones: JSONL lines (plus each line's sha256) and Parquet = the CSV."""
    ip = {line["path"]: line for line in read_jsonl(inproc_prefix.with_suffix(".jsonl"))}
    rl = {line["path"]: line for line in read_jsonl(ray_prefix.with_suffix(".jsonl"))}
    assert set(ip) == set(rl)
    for path, line in rl.items():
        sha = line.pop("sha256")
        assert sha is None or len(sha) == 64
        if line["error"] is None:
            assert sha == line["result"]["sha256"]
        expected = dict(ip[path])
        if source_of is not None:
            expected["source"] = source_of(path)
        close(line, expected, path)
    table = pq.read_table(ray_prefix.with_suffix(".parquet"))
    assert table.column_names == list(cli.CSV_FIELDS)
    with inproc_prefix.with_suffix(".csv").open(newline="") as fh:
        csv_rows = {r["path"]: r for r in csv.DictReader(fh)}
    parquet_rows = {r["path"]: r for r in table.to_pylist()}
    assert set(parquet_rows) == set(csv_rows)
    for path, row in parquet_rows.items():
        for field in cli.CSV_FIELDS:
            want, got = csv_value(csv_rows[path][field]), row[field]
            if isinstance(want, float):
                assert got is not None and math.isclose(float(got), want, rel_tol=1e-6), (path, field, got, want)
            elif field in ("path", "image_id", "companions", "error", "format", "quality_band", "verdict", "emotions"):
                assert (got or None) == (csv_rows[path][field] or None), (path, field, got, want)
            else:
                assert got == want, (path, field, got, want)


# --- pure parts ----------------------------------------------------------------------------------------------------
def test_pool_sizing_leaves_a_cpu_for_the_read_tasks():
    assert plan_pool(2) == plan_pool(2, 1, None)
    p = plan_pool(2)
    assert (p.workers, p.actor_cpus) == (1, 1.0) and p.read_cpus <= 0.5
    assert (plan_pool(2, workers=2).workers, plan_pool(2, workers=2).actor_cpus) == (2, 0.5)
    assert (plan_pool(2, workers=3).actor_cpus) == pytest.approx(1 / 3, abs=1e-3)
    assert (plan_pool(1).workers, plan_pool(1).actor_cpus) == (1, 0.5)
    big = plan_pool(64, nodes=4)  # one CPU per node stays free
    assert (big.workers, big.actor_cpus) == (60, 1.0)
    for cpus, nodes, workers in ((2, 1, None), (2, 1, 4), (8, 1, 3), (64, 4, 100)):
        p = plan_pool(cpus, nodes, workers)
        assert p.workers * p.actor_cpus <= cpus - min(nodes, cpus / 2) + 1e-9


def test_hamming_links_are_exactly_the_pairs_within_the_distance():
    rng = np.random.default_rng(0)
    base = [int(x) for x in rng.integers(0, 2**63, 30, dtype=np.int64)]
    hashes = base + [h ^ (1 << int(b)) ^ (1 << int(c)) for h, b, c in zip(base[:10], rng.integers(0, 64, 10),
                                                                           rng.integers(0, 64, 10))]
    for d in (0, 2, 10, 20):
        from app.neighbors import UnionFind

        def components(pairs):
            uf = UnionFind(len(hashes))
            for a, b in pairs:
                uf.union(a, b)
            return sorted(sorted(c) for c in uf.components())

        dense = [(i, j) for i in range(len(hashes)) for j in range(i + 1, len(hashes))
                 if bin(hashes[i] ^ hashes[j]).count("1") <= d]
        assert components(hamming_links(hashes, d)) == components(dense)


def test_usage_errors(tmp_path, cli_env, capsys):
    folder = write_files(tmp_path / "p", {"a.jpg": encode(photo("coffee"))})
    assert cli.main(["score", "s3://bucket/prefix", "--out", str(tmp_path / "o"), "--no-progress"]) == cli.EXIT_USAGE
    assert "needs --engine ray" in capsys.readouterr().err
    assert cli.main(["score", str(folder), "--engine", "ray", "--server", "http://x", "--no-progress"]) == cli.EXIT_USAGE
    assert cli.main(["score", str(folder), "--engine", "ray", "--workers", "0", "--no-progress"]) == cli.EXIT_USAGE
    tasks = tmp_path / "t.json"
    tasks.write_text('[{"operation_id": "b", "type": "blur"}]')
    assert cli.main(["score", str(folder), "--engine", "ray", "--tasks", str(tasks), "--crops", str(tmp_path / "c"),
                     "--no-progress", "--out", str(tmp_path / "o")]) == cli.EXIT_USAGE
    assert "--crops is not available with --engine ray" in capsys.readouterr().err


# --- score ---------------------------------------------------------------------------------------------------------
def test_ray_score_matches_in_process_then_resumes_by_path_and_sha256(tmp_path, ray_env, capsys):
    folder = write_files(tmp_path / "photos", photos())
    inproc, on_ray = tmp_path / "out" / "inproc", tmp_path / "out" / "ray"
    assert cli.main(["score", str(folder), "--out", str(inproc), "--no-progress"]) == cli.EXIT_FAILED
    capsys.readouterr()
    assert cli.main(["score", str(folder), "--out", str(on_ray), "--engine", "ray", "--batch-size", "2",
                     "--no-progress"]) == cli.EXIT_FAILED  # broken.jpg
    summary = capsys.readouterr().out
    assert "scored 6 image(s)" in summary and "on Ray, 1 failed" in summary
    assert_same_rows(inproc, on_ray)
    lines = read_jsonl(on_ray.with_suffix(".jsonl"))
    by_path = {line["path"]: line for line in lines}
    assert by_path["broken.jpg"]["error"]["type"] == "unsupported_media_type"  # a failed image is a row
    assert by_path["IMG_0001.JPG"]["companions"] == ["IMG_0001.dng"]
    if (SHARED_WEIGHTS / WEIGHTS["brisque"]).is_dir():  # the models ran in the actor
        assert isinstance(by_path["astronaut.jpg"]["result"]["quality"]["brisque"], float)

    # run again: every row is skipped by (path, sha256), nothing appended
    before = on_ray.with_suffix(".jsonl").read_text()
    assert cli.main(["score", str(folder), "--out", str(on_ray), "--engine", "ray", "--no-progress"]) == cli.EXIT_OK
    out = capsys.readouterr().out
    assert "scored 0 image(s)" in out and "6 already done" in out
    assert on_ray.with_suffix(".jsonl").read_text() == before

    # same path, other bytes: only that image is scored again; the Parquet keeps its last row
    (folder / "astronaut.jpg").write_bytes(encode(photo("astronaut"), quality=60))
    (folder / "new.jpg").write_bytes(encode(photo("coffee"), quality=70))
    assert cli.main(["score", str(folder), "--out", str(on_ray), "--engine", "ray", "--no-progress"]) == cli.EXIT_OK
    out = capsys.readouterr().out
    assert "scored 2 image(s)" in out and "5 already done" in out
    added = read_jsonl(on_ray.with_suffix(".jsonl"))[len(lines):]
    assert sorted(line["path"] for line in added) == ["astronaut.jpg", "new.jpg"]
    new_astronaut = next(line for line in added if line["path"] == "astronaut.jpg")
    assert new_astronaut["sha256"] != by_path["astronaut.jpg"]["sha256"]
    rows = {r["path"]: r for r in pq.read_table(on_ray.with_suffix(".parquet")).to_pylist()}
    assert len(rows) == 8 - 1  # one row per shot (the RAW is a companion)
    assert rows["astronaut.jpg"]["laplacian_variance"] == pytest.approx(
        new_astronaut["result"]["blur"]["laplacian_variance"], rel=1e-9)

    # --retry-failed: the failed image again (still corrupt: one more row, exit 1)
    assert cli.main(["score", str(folder), "--out", str(on_ray), "--engine", "ray", "--retry-failed",
                     "--no-progress"]) == cli.EXIT_FAILED
    assert read_jsonl(on_ray.with_suffix(".jsonl"))[-1]["path"] == "broken.jpg"


def test_ray_score_with_a_tasks_file_gives_the_in_process_columns(tmp_path, ray_env, capsys):
    folder = write_files(tmp_path / "photos", {k: v for k, v in photos().items() if not k.startswith("IMG")})
    tasks = tmp_path / "tasks.json"
    tasks.write_text(json.dumps([{"operation_id": "sharp", "type": "blur"}, {"operation_id": "light", "type": "exposure"}]))
    inproc, on_ray = tmp_path / "inproc", tmp_path / "ray"
    assert cli.main(["score", str(folder), "--tasks", str(tasks), "--out", str(inproc), "--no-progress"]) == cli.EXIT_FAILED
    assert cli.main(["score", str(folder), "--tasks", str(tasks), "--out", str(on_ray), "--engine", "ray",
                     "--no-progress"]) == cli.EXIT_FAILED
    ip = {line["path"]: line for line in read_jsonl(inproc.with_suffix(".jsonl"))}
    for line in read_jsonl(on_ray.with_suffix(".jsonl")):
        line.pop("sha256")
        close(line, ip[line["path"]], line["path"])
    table = pq.read_table(on_ray.with_suffix(".parquet"))
    assert table.column_names == ["path", "image_id", "width", "height", "sharp", "light", "error"]
    with inproc.with_suffix(".csv").open(newline="") as fh:
        want = {r["path"]: r for r in csv.DictReader(fh)}
    for r in table.to_pylist():
        if r["sharp"] is not None:
            assert float(r["sharp"]) == pytest.approx(float(want[r["path"]]["sharp"]), rel=1e-6)

    # a task list the API refuses stops the run with its reason (exit 4), as in-process
    tasks.write_text(json.dumps([{"operation_id": "x", "type": "no_such_type"}]))
    capsys.readouterr()
    assert cli.main(["score", str(folder), "--tasks", str(tasks), "--out", str(tmp_path / "refused"), "--engine", "ray",
                     "--no-progress"]) == cli.EXIT_REFUSED
    assert "refused the task list" in capsys.readouterr().err


def test_ray_score_an_object_store_prefix(tmp_path, ray_env, monkeypatch, capsys):
    pytest.importorskip("moto", reason="moto[server] is not installed (requirements-dev.txt pins it)")
    from tests.s3_server import CREDENTIALS, S3Server

    files = photos()
    server = S3Server()
    try:
        server.put("shoots", {f"2024/day1/{k}": v for k, v in files.items()}
                   | {"2024/day1/.hidden/skip.jpg": files["astronaut.jpg"], "2024/day1/notes.txt": b"not an image",
                      "2024/other/elsewhere.jpg": files["astronaut.jpg"]})
        for k, v in CREDENTIALS.items():
            monkeypatch.setenv(k, v)
        local = write_files(tmp_path / "local", files)
        inproc, on_ray = tmp_path / "inproc", tmp_path / "s3run"
        assert cli.main(["score", str(local), "--out", str(inproc), "--no-progress"]) == cli.EXIT_FAILED
        assert cli.main(["score", "s3://shoots/2024/day1/", "--s3-endpoint", server.endpoint, "--out", str(on_ray),
                         "--engine", "ray", "--no-progress"]) == cli.EXIT_FAILED
        assert "scored 6 image(s)" in capsys.readouterr().out
        assert_same_rows(inproc, on_ray, source_of=lambda p: f"s3://shoots/2024/day1/{p}")
        # resumed from the object store too
        assert cli.main(["score", "s3://shoots/2024/day1", "--s3-endpoint", server.endpoint, "--out", str(on_ray),
                         "--engine", "ray", "--no-progress"]) == cli.EXIT_OK
        assert "6 already done" in capsys.readouterr().out
    finally:
        server.close()


# --- cluster -------------------------------------------------------------------------------------------------------
def write_burst(root: Path) -> None:
    base = photo("astronaut")
    h, w = base.shape[:2]
    crop = np.ascontiguousarray(base[10:h - 8, 6:w - 12])
    write_files(root, {
        "burst/IMG_001.jpg": encode(base, quality=95),
        "burst/IMG_002.jpg": encode(jpeg_roundtrip(crop, 80), quality=85),
        "burst/IMG_003.jpg": encode(gaussian_blur(base, 3.0), quality=92),
        "coffee.jpg": encode(photo("coffee")),
        "coffee_small.jpg": encode(np.ascontiguousarray(photo("coffee")[::2, ::2]), quality=80),
        "chelsea.png": encode(photo("chelsea"), "PNG"),
        "broken.jpg": b"not really a jpeg",
    })


def test_ray_cluster_groups_like_in_process(tmp_path, ray_env, capsys):
    folder = tmp_path / "shoot"
    write_burst(folder)
    inproc, on_ray = tmp_path / "inproc", tmp_path / "ray"
    assert cli.main(["cluster", str(folder), "--out", str(inproc), "--no-progress"]) == cli.EXIT_FAILED
    assert cli.main(["cluster", str(folder), "--out", str(on_ray), "--engine", "ray", "--no-progress",
                     "--batch-size", "3"]) == cli.EXIT_FAILED
    out = capsys.readouterr().out
    assert "2 group(s)" in out
    want, got = (json.loads(p.with_suffix(".json").read_text()) for p in (inproc, on_ray))
    assert got["features_used"] == want["features_used"] and got["params"] == want["params"]
    assert len(got["groups"]) == len(want["groups"]) == 2
    for g, w in zip(got["groups"], want["groups"]):
        close({k: v for k, v in g.items()}, w)
    assert sorted(got["singletons"]) == sorted(want["singletons"]) == ["chelsea.png"]
    assert [f["path"] for f in got["failed"]] == [f["path"] for f in want["failed"]] == ["broken.jpg"]
    assert sorted(got["keep"]) == sorted(want["keep"])
    page = on_ray.with_suffix(".html").read_text()
    assert page.count("★ Best shot") == 2 and page.count('src="data:image/jpeg;base64,') == 6
