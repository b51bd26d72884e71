"""`loupe train` on folders of real photos (embedded in-process by the app's own registry, real MobileNet) and
scripts/train_classifiers.py on labelled embeddings files (JSONL, CSV, Parquet) made from that run's cache."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest

from app.cli import main
from app.collections.store import BEST_MODELS, CollectionStore
from app.core.config import Settings
from tests.helpers import PROJECT_ROOT, encode, photo
from tests.unit.test_collections import NEGATIVE, POSITIVE, held_out_copies, mobilenet_embed, require_mobilenet, training_copies


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """ROOT/space_coffee/{positive,negative}/ and ROOT/only_yes/positive/ of JPEG files."""
    require_mobilenet()
    root = tmp_path_factory.mktemp("collections")
    for name in POSITIVE + NEGATIVE:
        sub = "positive" if name in POSITIVE else "negative"
        folder = root / "space_coffee" / sub / name
        folder.mkdir(parents=True)
        for i, im in enumerate(training_copies(photo(name))):
            (folder / f"{i}.jpg").write_bytes(encode(im))
    (root / "only_yes" / "positive").mkdir(parents=True)
    for i, im in enumerate(training_copies(photo("astronaut"))[:6]):
        (root / "only_yes" / "positive" / f"{i}.png").write_bytes(encode(im, "PNG"))
    return root


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("LOUPE_MODEL_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("LOUPE_MOBILENET_PATH", str(require_mobilenet()))
    monkeypatch.setenv("LOUPE_CLASSIFIER_DIR", str(tmp_path / "classifiers"))
    monkeypatch.setenv("LOUPE_LOG_JSON", "false")
    monkeypatch.setenv("LOUPE_PRELOAD_MODELS", "")
    return tmp_path / "classifiers"


def test_loupe_train_on_folders_embeds_in_process_caches_and_serves(folders, env, capsys):
    rc = main(["train", "--images", str(folders), "--embedding-model", "mobilenet", "--no-progress"])
    out, err = capsys.readouterr()
    assert rc == 1, (out, err)  # only_yes was refused; space_coffee trained
    assert "collection 'only_yes': only one class (6 positive, 0 negative)" in err and "at least 5 of each" in err
    assert "collection space_coffee" in out and "precision" in out and "best" in out
    cache = env / "embeddings-mobilenet.jsonl"
    lines = cache.read_text().splitlines()
    assert len(lines) == 10 * (len(POSITIVE) + len(NEGATIVE)) + 6
    assert {len(json.loads(line)["embedding"]) for line in lines} == {1024}

    store = CollectionStore(Settings(_env_file=None, classifier_dir=str(env)))
    clf = store.get("space_coffee")
    assert clf is not None and clf.embedding_model == "mobilenet" and clf.dim == 1024
    assert store.get("only_yes") is None
    held_in = mobilenet_embed([im for n in POSITIVE for im in held_out_copies(photo(n))])
    held_out = mobilenet_embed([im for n in NEGATIVE for im in held_out_copies(photo(n))])
    p_in = [clf.predict(v) for v in held_in]
    p_out = [clf.predict(v) for v in held_out]
    print(f"\nfolder-trained: held-out positives p in [{min(p for p, _ in p_in):.3f}, {max(p for p, _ in p_in):.3f}], "
          f"held-out negatives p in [{min(p for p, _ in p_out):.3f}, {max(p for p, _ in p_out):.3f}]; metrics {clf.metrics}")
    assert all(i for _, i in p_in) and not any(i for _, i in p_out)

    # a rerun embeds nothing new (the cache answers) and adds a second version
    rc = main(["train", "--images", str(folders), "--collection", "space_coffee", "--no-progress"])
    assert rc == 0, capsys.readouterr()
    assert len(cache.read_text().splitlines()) == len(lines)
    assert len(list((env / "space_coffee").glob("*.json"))) == 2
    assert store.get("space_coffee") is not None and store.list()[0]["collection_id"] == "space_coffee"


def labelled_rows(folders, cache_file):
    """(collection_id, image_id, embedding, label) rows from the folders and the embeddings cache."""
    import hashlib

    cache = {json.loads(x)["sha256"]: json.loads(x)["embedding"] for x in cache_file.read_text().splitlines()}
    rows = []
    for p in sorted((folders / "space_coffee").rglob("*.jpg")):
        rel = p.relative_to(folders / "space_coffee")
        rows.append({"collection_id": "space_coffee", "image_id": str(rel), "embedding": cache[hashlib.sha256(p.read_bytes()).hexdigest()],
                     "label": "positive" if rel.parts[0] == "positive" else "negative"})
    return rows


def script(*args):
    return subprocess.run([sys.executable, str(PROJECT_ROOT / "scripts" / "train_classifiers.py"), *args],
                          capture_output=True, text=True, timeout=300, cwd=PROJECT_ROOT)


def test_script_trains_from_jsonl_csv_and_parquet(folders, env, tmp_path, capsys):
    assert main(["train", "--images", str(folders), "--collection", "space_coffee", "--no-progress"]) == 0
    capsys.readouterr()
    rows = labelled_rows(folders, env / "embeddings-mobilenet.jsonl")
    jsonl = tmp_path / "labelled.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with (tmp_path / "labelled.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["collection_id", "image_id", "embedding", "label"])
        w.writeheader()
        w.writerows({**r, "embedding": json.dumps(r["embedding"]), "label": 1 if r["label"] == "positive" else 0} for r in rows)
    files = [jsonl, tmp_path / "labelled.csv"]
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist([{**r, "label": r["label"] == "positive"} for r in rows]), tmp_path / "labelled.parquet")
        files.append(tmp_path / "labelled.parquet")
    except ImportError:
        pass
    for f in files:
        r = script("--embeddings", str(f), "--embedding-model", "mobilenet")
        assert r.returncode == 0, (f, r.stdout, r.stderr)
        assert "collection space_coffee" in r.stdout
    versions = sorted(p.stem for p in (env / "space_coffee").glob("*.json"))
    assert len(versions) == 1 + len(files)
    best = json.loads((env / BEST_MODELS).read_text())["space_coffee"]
    assert best["version"] in versions and best["metrics"]["precision"] >= 0.9 and best["metrics"]["n_test"] > 0

    # unusable input: a wrong model name for 1024-d vectors, and an unknown format, are clear errors
    r = script("--embeddings", str(jsonl), "--embedding-model", "dinov2")
    assert r.returncode == 1 and "1024-d embeddings, but dinov2 gives 384-d" in r.stderr
    (tmp_path / "x.txt").write_text("")
    r = script("--embeddings", str(tmp_path / "x.txt"))
    assert r.returncode == 2 and "use .jsonl, .csv or .parquet" in r.stderr
    assert np.isfinite(best["metrics"]["roc_auc"])
