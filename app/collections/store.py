"""Per-collection classifiers stored as data, and the store that serves the best of each.

Layout under CLASSIFIER_DIR (empty setting = MODEL_DIR/classifiers):

    <collection_id>/<version>.json   one trained logistic regression per file (see `Classifier`)
    best_models.json                 {collection_id: {version, embedding_model, dim, threshold, metrics}}

A classifier is JSON, never pickle, so loading one can never run code. Loading still distrusts
the file: the schema, finite numbers, len(coef) == dim and the dimension of the embedding model
are checked, and a sha256 over the decision payload (coef, intercept, threshold, …) catches a
file edited by hand or half-written, so a tampered classifier is refused instead of silently
answering differently.

`CollectionStore` re-reads best_models.json when its mtime or size changes (one stat per access),
so a training run that writes a new best is served without restarting anything.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import tempfile
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from app.core.config import Settings

EMBEDDING_MODELS = ("clip", "dinov2", "mobilenet")
BEST_MODELS = "best_models.json"
METRIC_NAMES = ("precision", "recall", "f1", "roc_auc")
COUNT_NAMES = ("n_train", "n_test")
#: a collection id is a folder name: no separators, no "..", nothing hidden
COLLECTION_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
VERSION = re.compile(r"^\d{8}T\d{6}\d{6}Z(-\d+)?$")

#: output width of the embedding models whose width follows from their name (None = unknown)
CLIP_DIMS = {"openai/clip-vit-base-patch32": 512, "openai/clip-vit-base-patch16": 512, "openai/clip-vit-large-patch14": 768,
             "openai/clip-vit-large-patch14-336": 768}
DINOV2_DIMS = {"small": 384, "base": 768, "large": 1024, "giant": 1536}
MOBILENET_DIM = 1024  # MobileNetV1 1.0/224 global-average-pooled features (app.models.mobilenet)


class ClassifierError(ValueError):
    """A classifier file or best_models.json that cannot be trusted or used (the message says why)."""


def expected_dim(settings: Settings, embedding_model: str) -> int | None:
    """The embedding width `embedding_model` produces with these settings, when it is known without loading it.

    Why: a classifier trained on 512-d CLIP vectors must never be fed 768-d ones after CLIP_MODEL_NAME changes;
    comparing at load time turns that into a clear error instead of a numpy broadcast failure (or worse, none)."""
    if embedding_model == "mobilenet":
        return MOBILENET_DIM
    if embedding_model == "clip":
        return CLIP_DIMS.get(settings.clip_model_name)
    if embedding_model == "dinov2":
        name = settings.dinov2_model_name.rsplit("/", 1)[-1]
        return next((d for size, d in DINOV2_DIMS.items() if name.endswith(f"-{size}")), None)
    return None


def classifier_dir(settings: Settings) -> Path:
    """CLASSIFIER_DIR, or MODEL_DIR/classifiers when it is empty."""
    return Path(settings.classifier_dir).expanduser() if settings.classifier_dir else Path(settings.model_dir).expanduser() / "classifiers"


def new_version(now: datetime | None = None) -> str:
    """A sortable UTC timestamp with microseconds: versions order by time as plain strings."""
    return (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%S%fZ")


def sigmoid(z: float) -> float:
    """The logistic function, without overflow for large |z|."""
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


@dataclass(frozen=True)
class Classifier:
    """One trained version: P(in collection | v) = sigmoid(coef·v + intercept); in when P ≥ threshold."""

    collection_id: str
    version: str
    embedding_model: str
    dim: int
    coef: np.ndarray
    intercept: float
    threshold: float
    metrics: dict[str, float] = field(default_factory=dict)
    created_at: str = ""

    def probabilities(self, vectors: np.ndarray) -> np.ndarray:
        """P(in) for a (n, dim) batch (what the bake-off scores)."""
        x = np.asarray(vectors, np.float64)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ClassifierError(f"collection {self.collection_id!r} takes {self.dim}-d {self.embedding_model} embeddings, got shape {x.shape}")
        z = x @ self.coef + self.intercept
        return 1.0 / (1.0 + np.exp(-np.clip(z, -500, 500)))

    def predict(self, vector: Any) -> tuple[float, bool]:
        """(probability, is_in) of one embedding."""
        v = np.asarray(vector, np.float64).reshape(-1)
        if v.shape[0] != self.dim:
            raise ClassifierError(f"collection {self.collection_id!r} takes {self.dim}-d {self.embedding_model} embeddings, got {v.shape[0]}-d")
        p = sigmoid(float(self.coef @ v) + self.intercept)
        return p, p >= self.threshold

    def payload(self) -> dict[str, Any]:
        """The fields that decide an answer: what the sha256 covers."""
        return {"collection_id": self.collection_id, "version": self.version, "embedding_model": self.embedding_model,
                "dim": self.dim, "coef": [float(c) for c in self.coef], "intercept": float(self.intercept),
                "threshold": float(self.threshold)}

    def to_json(self) -> dict[str, Any]:
        return {**self.payload(), "metrics": self.metrics, "created_at": self.created_at, "sha256": payload_sha256(self.payload())}


def payload_sha256(payload: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of the decision payload (sorted keys, no spaces; floats as repr, which round-trips)."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _finite(value: Any, what: str, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ClassifierError(f"{where}: {what} must be a finite number, got {value!r}")
    return float(value)


def parse_classifier(data: Any, where: str, settings: Settings | None = None) -> Classifier:
    """A checked `Classifier` from a decoded JSON document (see the module docstring for what is checked)."""
    if not isinstance(data, dict):
        raise ClassifierError(f"{where}: expected a JSON object")
    required = ("collection_id", "version", "embedding_model", "dim", "coef", "intercept", "threshold", "metrics", "created_at", "sha256")
    missing = [k for k in required if k not in data]
    if missing:
        raise ClassifierError(f"{where}: missing fields {missing}")
    cid, version, model = data["collection_id"], data["version"], data["embedding_model"]
    if not isinstance(cid, str) or not COLLECTION_ID.match(cid):
        raise ClassifierError(f"{where}: bad collection_id {cid!r}")
    if not isinstance(version, str) or not VERSION.match(version):
        raise ClassifierError(f"{where}: bad version {version!r}")
    if model not in EMBEDDING_MODELS:
        raise ClassifierError(f"{where}: embedding_model must be one of {EMBEDDING_MODELS}, got {model!r}")
    dim = data["dim"]
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ClassifierError(f"{where}: dim must be a positive integer, got {dim!r}")
    coef = data["coef"]
    if not isinstance(coef, list):
        raise ClassifierError(f"{where}: coef must be a list of numbers")
    if len(coef) != dim:
        raise ClassifierError(f"{where}: coef has {len(coef)} numbers but dim is {dim}")
    values = [_finite(c, "every coef", where) for c in coef]
    intercept = _finite(data["intercept"], "intercept", where)
    threshold = _finite(data["threshold"], "threshold", where)
    if not 0 <= threshold <= 1:
        raise ClassifierError(f"{where}: threshold must be in [0, 1], got {threshold}")
    metrics = data["metrics"]
    if not isinstance(metrics, dict):
        raise ClassifierError(f"{where}: metrics must be an object")
    checked = {k: _finite(metrics[k], f"metrics.{k}", where) for k in METRIC_NAMES + COUNT_NAMES if k in metrics}
    clf = Classifier(collection_id=cid, version=version, embedding_model=model, dim=dim, coef=np.array(values, np.float64),
                     intercept=intercept, threshold=threshold, metrics=checked, created_at=str(data["created_at"]))
    if data["sha256"] != payload_sha256(clf.payload()):
        raise ClassifierError(f"{where}: sha256 mismatch: the coefficients, intercept or threshold were changed after training "
                              f"(or the file is damaged); refusing to use it")
    known = expected_dim(settings, model) if settings is not None else None
    if known is not None and known != dim:
        raise ClassifierError(f"{where}: trained on {dim}-d {model} embeddings, but {model} here gives {known}-d ones "
                              f"(was the model changed?); retrain this collection")
    return clf


def version_path(root: Path, collection_id: str, version: str) -> Path:
    return root / collection_id / f"{version}.json"


def load_classifier(path: Path, settings: Settings | None = None) -> Classifier:
    """Read and check one classifier file; ClassifierError (with the path) when it cannot be trusted."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ClassifierError(f"{path}: cannot read classifier: {exc}") from exc
    clf = parse_classifier(data, str(path), settings)
    if Path(path).stem != clf.version or Path(path).parent.name != clf.collection_id:
        raise ClassifierError(f"{path}: file is named for another collection/version than it holds "
                              f"({clf.collection_id}/{clf.version})")
    return clf


def write_json_atomic(path: Path, data: Any) -> None:
    """Write via a temporary file and rename, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_classifier(root: Path, clf: Classifier) -> Path:
    """Write `clf` as root/<collection_id>/<version>.json (never overwriting another version)."""
    if not COLLECTION_ID.match(clf.collection_id):
        raise ClassifierError(f"bad collection_id {clf.collection_id!r}: use letters, digits, '.', '_' or '-' (not first)")
    path = version_path(root, clf.collection_id, clf.version)
    if path.exists():
        raise ClassifierError(f"{path} exists already: versions are never overwritten")
    write_json_atomic(path, clf.to_json())
    return path


def stored_versions(root: Path, collection_id: str) -> list[str]:
    """Every version file of a collection, oldest first."""
    folder = root / collection_id
    return sorted(p.stem for p in folder.glob("*.json") if VERSION.match(p.stem)) if folder.is_dir() else []


def read_best(root: Path) -> dict[str, dict[str, Any]]:
    """best_models.json as a dict ({} when absent); ClassifierError when it is not a JSON object of objects."""
    path = root / BEST_MODELS
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ClassifierError(f"{path}: cannot read: {exc}") from exc
    def entry_ok(k: Any, v: Any) -> bool:
        return (isinstance(k, str) and isinstance(v, dict) and isinstance(v.get("version"), str)
                and bool(VERSION.match(v["version"])) and isinstance(v.get("embedding_model"), str)
                and isinstance(v.get("dim"), int) and isinstance(v.get("threshold"), int | float)
                and isinstance(v.get("metrics"), dict))

    if not isinstance(data, dict) or not all(entry_ok(k, v) for k, v in data.items()):
        raise ClassifierError(f"{path}: expected {{collection_id: {{version (a timestamp), embedding_model, dim, threshold, "
                              f"metrics}}}}")
    return data


class CollectionStore:
    """The best classifier of every collection, as best_models.json names them.

    Every access stats best_models.json (cheap) and re-reads it when its mtime or size changed, dropping the
    classifiers loaded for the old contents; so a new training run is served at once, and an unchanged file
    costs one stat. Thread-safe: one lock around the check and the cache."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.root = classifier_dir(settings)
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._best: dict[str, dict[str, Any]] = {}
        self._cache: dict[tuple[str, str], Classifier] = {}

    def _refresh(self) -> None:
        """Re-read best_models.json when its (mtime_ns, size, inode) changed (an atomic replace is a new inode). Call with the lock held."""
        path = self.root / BEST_MODELS
        try:
            st = path.stat()
            stamp: tuple[int, int, int] | None = (st.st_mtime_ns, st.st_size, st.st_ino)
        except FileNotFoundError:
            stamp = None
        if stamp == self._stamp:
            return
        self._best = read_best(self.root) if stamp is not None else {}
        self._stamp = stamp
        self._cache.clear()

    def get(self, collection_id: str) -> Classifier | None:
        """The best classifier of a collection (loaded and checked once per best_models.json change), or None."""
        with self._lock:
            self._refresh()
            entry = self._best.get(collection_id)
            if entry is None:
                return None
            key = (collection_id, entry["version"])
            if key not in self._cache:
                if not COLLECTION_ID.match(collection_id):
                    raise ClassifierError(f"{self.root / BEST_MODELS}: bad collection_id {collection_id!r}")
                self._cache[key] = load_classifier(version_path(self.root, collection_id, entry["version"]), self.settings)
            return self._cache[key]

    def list(self) -> list[dict[str, Any]]:
        """Every collection with a best model: {collection_id, version, embedding_model, dim, threshold, metrics}."""
        with self._lock:
            self._refresh()
            return [{"collection_id": cid, **{k: e.get(k) for k in ("version", "embedding_model", "dim", "threshold", "metrics")}}
                    for cid, e in sorted(self._best.items())]
