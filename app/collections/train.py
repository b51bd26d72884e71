"""Train per-collection classifiers, run a bake-off of every stored version, keep the best ten.

Input is either a labelled embeddings file (JSONL, CSV with the embedding as a JSON list, or Parquet
when pyarrow is installed; fields collection_id, image_id, embedding, label) or folders
ROOT/<collection_id>/{positive,negative}/ of images, embedded in this process by Loupe's own registry
(the same decode and model code as the API, so training vectors match serving vectors). Embeddings of
images are cached by the image's sha256 in a JSONL next to the classifiers, so an interrupted or repeated
run only embeds new images.

Per collection: LogisticRegression(class_weight="balanced") on a stratified 80/20 split with a fixed
seed (the same data always gives the same split, so versions are compared on data none of them trained
on when the data did not change), threshold 0.5, saved as a new timestamped version. Then every stored
version of the collection with the same embedding model and width is scored on the latest held-out
split and ranked by macro precision (then F1, ROC AUC, newest): a wrong "yes" costs more than a miss
in a curated collection. The best KEEP versions stay, the rest are deleted, and best_models.json names
the winner with its bake-off metrics.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import hashlib
import json
import sys
from collections import defaultdict
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from app.collections.store import (
    BEST_MODELS,
    COLLECTION_ID,
    EMBEDDING_MODELS,
    Classifier,
    ClassifierError,
    classifier_dir,
    expected_dim,
    load_classifier,
    new_version,
    read_best,
    save_classifier,
    stored_versions,
    version_path,
    write_json_atomic,
)
from app.core.config import Settings

MIN_PER_CLASS = 5  # a stratified 80/20 split then holds at least one example of each class
KEEP = 10
SEED = 0
TEST_SIZE = 0.2
THRESHOLD = 0.5
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".heic", ".heif", ".avif")
LABELS = {"1": 1, "true": 1, "yes": 1, "positive": 1, "pos": 1, "in": 1,
          "0": 0, "false": 0, "no": 0, "negative": 0, "neg": 0, "out": 0}


class TrainError(ValueError):
    """Input that cannot train a classifier (the message says what to fix)."""


@dataclass(frozen=True)
class Example:
    collection_id: str
    image_id: str
    embedding: np.ndarray
    label: int


@dataclass
class Split:
    """One collection's fixed-seed 80/20 split."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


@dataclass
class Ranked:
    version: str
    metrics: dict[str, float]
    kept: bool = True


# -- reading labelled embeddings ------------------------------------------------------------------------------------
def parse_label(value: Any, where: str) -> int:
    """0/1, booleans or positive/negative words → 0 or 1."""
    key = str(value).strip().lower()
    if isinstance(value, bool):
        key = "1" if value else "0"
    elif isinstance(value, int | float) and value in (0, 1):
        key = str(int(value))
    if key not in LABELS:
        raise TrainError(f"{where}: label must be 1/0, true/false or positive/negative, got {value!r}")
    return LABELS[key]


def parse_embedding(value: Any, where: str) -> np.ndarray:
    """A list of finite numbers (or its JSON text, as CSV holds it) → float64 vector."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise TrainError(f"{where}: embedding must be a JSON list of numbers") from exc
    try:
        v = np.asarray(value, np.float64)
    except (TypeError, ValueError) as exc:
        raise TrainError(f"{where}: embedding must be a list of numbers") from exc
    if v.ndim != 1 or v.size == 0 or not np.all(np.isfinite(v)):
        raise TrainError(f"{where}: embedding must be a non-empty list of finite numbers")
    return v


def example_from_row(row: dict[str, Any], where: str) -> Example:
    missing = [k for k in ("collection_id", "image_id", "embedding", "label") if row.get(k) in (None, "")]
    if missing:
        raise TrainError(f"{where}: missing {missing}")
    return Example(str(row["collection_id"]), str(row["image_id"]), parse_embedding(row["embedding"], where),
                   parse_label(row["label"], where))


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a .jsonl, .csv or .parquet file."""
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        rows = []
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except ValueError as exc:
                    raise TrainError(f"{path}:{n}: not JSON: {exc}") from exc
        return rows
    if suffix == ".csv":
        with path.open(newline="") as f:
            return list(csv.DictReader(f))
    if suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError as exc:
            raise TrainError(f"{path}: reading Parquet needs pyarrow (pip install pyarrow), or use JSONL/CSV") from exc
        return pq.read_table(path).to_pylist()
    raise TrainError(f"{path}: unknown format {suffix!r}; use .jsonl, .csv or .parquet")


def read_labelled(path: Path) -> list[Example]:
    if not path.is_file():
        raise TrainError(f"{path}: no such file")
    return [example_from_row(row, f"{path} row {n}") for n, row in enumerate(read_rows(path), 1)]


# -- embedding folders of images in-process ---------------------------------------------------------------------------
def folder_items(root: Path) -> list[tuple[str, Path, int]]:
    """(collection_id, image path, label) of ROOT/<collection_id>/{positive,negative}/**."""
    if not root.is_dir():
        raise TrainError(f"{root}: no such folder")
    items = []
    for coll in sorted(p for p in root.iterdir() if p.is_dir()):
        for sub, label in (("positive", 1), ("negative", 0)):
            folder = coll / sub
            if folder.is_dir():
                items += [(coll.name, p, label) for p in sorted(folder.rglob("*")) if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()]
    if not items:
        raise TrainError(f"{root}: no images in <collection_id>/positive/ or <collection_id>/negative/")
    return items


def cache_path(out_dir: Path, embedding_model: str) -> Path:
    return out_dir / f"embeddings-{embedding_model}.jsonl"


def read_cache(path: Path) -> dict[str, list[float]]:
    """sha256 → embedding from the cache JSONL (a torn last line from an interrupted run is skipped)."""
    cache: dict[str, list[float]] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
                cache[row["sha256"]] = row["embedding"]
            except (ValueError, KeyError, TypeError):
                continue
    return cache


def decode_file(path: Path, max_pixels: int) -> Any:
    """The same decode as an upload to the API (format sniffing, pixel limit, EXIF transpose)."""
    from app.imaging.decode import decode_image

    return decode_image(path.read_bytes(), max_pixels=max_pixels)


async def embed_paths(settings: Settings, embedding_model: str, paths: list[Path], cache_file: Path,
                      progress: bool = False, batch: int = 16) -> dict[Path, np.ndarray]:
    """Embed images with the app's own registry (create_app + its lifespan), reusing and extending the cache."""
    from tqdm import tqdm

    from app.main import create_app

    cache = read_cache(cache_file)
    digests = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}
    todo = [p for p in paths if digests[p] not in cache]
    app = create_app(settings)
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=len(paths), initial=len(paths) - len(todo), unit="img", disable=not progress, file=sys.stderr)
    async with app.router.lifespan_context(app):
        registry, pool = app.state.registry, app.state.pool
        loop = asyncio.get_running_loop()
        with cache_file.open("a") as f:
            for i in range(0, len(todo), batch):
                chunk = todo[i : i + batch]
                images = [await loop.run_in_executor(pool, decode_file, p, settings.max_image_pixels) for p in chunk]
                vectors = await registry.run(embedding_model, images)
                for p, v in zip(chunk, vectors):
                    cache[digests[p]] = [float(x) for x in np.asarray(v).reshape(-1)]
                    f.write(json.dumps({"sha256": digests[p], "embedding_model": embedding_model, "embedding": cache[digests[p]]}) + "\n")
                f.flush()
                bar.update(len(chunk))
    bar.close()
    return {p: np.asarray(cache[digests[p]], np.float64) for p in paths}


def embed_folders(settings: Settings, root: Path, embedding_model: str, out_dir: Path, progress: bool = False) -> list[Example]:
    items = folder_items(root)
    vectors = asyncio.run(embed_paths(settings, embedding_model, [p for _, p, _ in items], cache_path(out_dir, embedding_model), progress))
    return [Example(cid, str(p.relative_to(root)), vectors[p], label) for cid, p, label in items]


# -- training and the bake-off ----------------------------------------------------------------------------------------
def check_collection(collection_id: str, labels: np.ndarray) -> None:
    """Refuse data that cannot give a classifier and a held-out score: both classes, MIN_PER_CLASS of each."""
    if not COLLECTION_ID.match(collection_id):
        raise TrainError(f"collection {collection_id!r}: the id must be letters, digits, '.', '_' or '-' (not first), at most 128")
    pos, neg = int((labels == 1).sum()), int((labels == 0).sum())
    if pos == 0 or neg == 0:
        raise TrainError(f"collection {collection_id!r}: only one class ({pos} positive, {neg} negative); a classifier needs "
                         f"positive and negative examples, at least {MIN_PER_CLASS} of each")
    if min(pos, neg) < MIN_PER_CLASS:
        raise TrainError(f"collection {collection_id!r}: too few examples ({pos} positive, {neg} negative); "
                         f"the minimum is {MIN_PER_CLASS} of each class")


def split_collection(x: np.ndarray, y: np.ndarray, seed: int = SEED) -> Split:
    from sklearn.model_selection import train_test_split

    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=TEST_SIZE, stratify=y, random_state=seed)
    return Split(x_tr, y_tr, x_te, y_te)


def score(clf: Classifier, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Macro precision, recall and F1 at the classifier's threshold, and ROC AUC, on (x, y)."""
    from sklearn.metrics import precision_recall_fscore_support, roc_auc_score

    p = clf.probabilities(x)
    pred = (p >= clf.threshold).astype(int)
    prec, rec, f1, _ = precision_recall_fscore_support(y, pred, average="macro", zero_division=0)
    auc = float(roc_auc_score(y, p)) if len(set(y.tolist())) == 2 else float("nan")
    return {"precision": float(prec), "recall": float(rec), "f1": float(f1), "roc_auc": auc}


def fit(collection_id: str, embedding_model: str, split: Split, version: str | None = None) -> Classifier:
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(class_weight="balanced", max_iter=5000, random_state=SEED).fit(split.x_train, split.y_train)
    clf = Classifier(collection_id=collection_id, version=version or new_version(), embedding_model=embedding_model,
                     dim=int(split.x_train.shape[1]), coef=model.coef_[0].astype(np.float64), intercept=float(model.intercept_[0]),
                     threshold=THRESHOLD, created_at=datetime.now(UTC).isoformat(timespec="seconds"))
    metrics = {**score(clf, split.x_test, split.y_test), "n_train": float(len(split.y_train)), "n_test": float(len(split.y_test))}
    return replace(clf, metrics=metrics)


def bake_off(root: Path, collection_id: str, embedding_model: str, dim: int, split: Split,
             settings: Settings | None = None, keep: int = KEEP) -> tuple[list[Ranked], list[str]]:
    """Score every stored comparable version on the split, best first; delete all but the best `keep`.
    Returns (ranking, problems): versions of another model/width are left alone, unreadable ones reported."""
    ranked, problems = [], []
    for version in stored_versions(root, collection_id):
        try:
            clf = load_classifier(version_path(root, collection_id, version), settings)
        except ClassifierError as exc:
            problems.append(str(exc))
            continue
        if clf.embedding_model != embedding_model or clf.dim != dim:
            continue
        metrics = {**score(clf, split.x_test, split.y_test), "n_train": clf.metrics.get("n_train", 0.0), "n_test": float(len(split.y_test))}
        ranked.append(Ranked(version, metrics))
    ranked.sort(key=lambda r: (r.metrics["precision"], r.metrics["f1"], np.nan_to_num(r.metrics["roc_auc"]), r.version), reverse=True)
    for r in ranked[keep:]:
        r.kept = False
        version_path(root, collection_id, r.version).unlink(missing_ok=True)
    return ranked, problems


def update_best(root: Path, collection_id: str, winner: Ranked, embedding_model: str, dim: int) -> None:
    best = read_best(root)
    best[collection_id] = {"version": winner.version, "embedding_model": embedding_model, "dim": dim, "threshold": THRESHOLD,
                           "metrics": winner.metrics}
    write_json_atomic(root / BEST_MODELS, dict(sorted(best.items())))


def group(examples: list[Example]) -> dict[str, list[Example]]:
    out: dict[str, list[Example]] = defaultdict(list)
    for e in examples:
        out[e.collection_id].append(e)
    return dict(sorted(out.items()))


def train_collection(root: Path, collection_id: str, examples: list[Example], embedding_model: str,
                     settings: Settings | None = None, keep: int = KEEP) -> tuple[Classifier, list[Ranked], list[str]]:
    """Train, save a new version, run the bake-off, update best_models.json. TrainError on unusable data."""
    dims = {e.embedding.shape[0] for e in examples}
    if len(dims) != 1:
        raise TrainError(f"collection {collection_id!r}: embeddings of different widths {sorted(dims)}")
    dim = dims.pop()
    known = expected_dim(settings, embedding_model) if settings is not None else None
    if known is not None and known != dim:
        raise TrainError(f"collection {collection_id!r}: {dim}-d embeddings, but {embedding_model} gives {known}-d ones "
                         f"(wrong --embedding-model?)")
    y = np.array([e.label for e in examples])
    check_collection(collection_id, y)
    split = split_collection(np.stack([e.embedding for e in examples]), y)
    clf = fit(collection_id, embedding_model, split)
    save_classifier(root, clf)
    ranked, problems = bake_off(root, collection_id, embedding_model, dim, split, settings, keep)
    update_best(root, collection_id, ranked[0], embedding_model, dim)
    return clf, ranked, problems


def table(collection_id: str, new: str, ranked: list[Ranked]) -> str:
    lines = [f"collection {collection_id} (new version {new}; held-out n={int(ranked[0].metrics['n_test']) if ranked else 0})",
             f"  {'rank':>4}  {'version':<24} {'precision':>9} {'recall':>7} {'f1':>6} {'roc_auc':>7}  note"]
    for i, r in enumerate(ranked, 1):
        m = r.metrics
        note = ", ".join(x for x in ("best" if i == 1 else "", "new" if r.version == new else "", "" if r.kept else "deleted") if x)
        lines.append(f"  {i:>4}  {r.version:<24} {m['precision']:>9.3f} {m['recall']:>7.3f} {m['f1']:>6.3f} {m['roc_auc']:>7.3f}  {note}".rstrip())
    return "\n".join(lines)


# -- command line -----------------------------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--embeddings", type=Path, metavar="FILE",
                     help="Labelled embeddings: .jsonl, .csv (embedding as a JSON list) or .parquet, with collection_id, image_id, "
                          "embedding, label (1/0, true/false or positive/negative).")
    src.add_argument("--images", type=Path, metavar="ROOT",
                     help="Folders ROOT/<collection_id>/{positive,negative}/ of images, embedded here with Loupe's own model code "
                          "(cached by sha256 in CLASSIFIER_DIR/embeddings-<model>.jsonl, so a rerun only embeds new images).")
    p.add_argument("--embedding-model", choices=EMBEDDING_MODELS, default="mobilenet",
                   help="The model the embeddings come from (or that embeds --images; default: %(default)s).")
    p.add_argument("--classifier-dir", type=Path, default=None, metavar="DIR",
                   help="Where versions and best_models.json go (default: CLASSIFIER_DIR, else MODEL_DIR/classifiers).")
    p.add_argument("--collection", action="append", default=None, metavar="ID", help="Train only this collection (repeatable).")
    p.add_argument("--keep", type=int, default=KEEP, metavar="N", help="Versions kept per collection after the bake-off (default: %(default)s).")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=sys.stderr.isatty(),
                   help="Progress bar while embedding --images (default: on when stderr is a terminal).")


def run(args: argparse.Namespace, settings: Settings | None = None) -> int:
    """Train every collection of the input. Exit 0 when all trained, 1 when some were refused, 2 on unusable input."""
    settings = settings or Settings()
    root = args.classifier_dir or classifier_dir(settings)
    if args.keep < 1:
        print("train: error: --keep must be at least 1", file=sys.stderr)
        return 2
    try:
        examples = read_labelled(args.embeddings) if args.embeddings else embed_folders(settings, args.images, args.embedding_model, root, args.progress)
    except (TrainError, OSError) as exc:
        print(f"train: error: {exc}", file=sys.stderr)
        return 2
    collections = group(examples)
    if args.collection:
        unknown = sorted(set(args.collection) - set(collections))
        if unknown:
            print(f"train: error: no examples for {unknown}", file=sys.stderr)
            return 2
        collections = {c: collections[c] for c in args.collection}
    failed = 0
    for cid, items in collections.items():
        try:
            clf, ranked, problems = train_collection(root, cid, items, args.embedding_model, settings, args.keep)
        except (TrainError, ClassifierError) as exc:
            print(f"train: error: {exc}", file=sys.stderr)
            failed += 1
            continue
        print(table(cid, clf.version, ranked))
        for problem in problems:
            print(f"  skipped (cannot be trusted): {problem}", file=sys.stderr)
    print(f"best models: {root / BEST_MODELS}")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="train_classifiers", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(ap)
    return run(ap.parse_args(argv))
