"""The `classify` task: is the target region in a collection?

The collection's best classifier (CLASSIFIER_DIR/best_models.json, `app.collections.store`) names
the embedding model it was trained on; the region is embedded with that model — one batch per
model across every classify task of the request — and the logistic regression answers. An
unknown collection is `skipped` with the reason; a classifier that fails its checks (tampered,
wrong dimension) is an `error` for that task only. The store re-reads best_models.json when it
changes, so a new training run is served without a restart.
"""

from __future__ import annotations

import threading
from typing import Any

from app.collections.store import ClassifierError, CollectionStore, classifier_dir
from app.core.config import Settings
from app.tasks.stages import message, run_stage

_stores: dict[str, CollectionStore] = {}
_lock = threading.Lock()


def store_for(settings: Settings) -> CollectionStore:
    """One store per classifier folder, for the life of the process."""
    key = str(classifier_dir(settings))
    with _lock:
        if key not in _stores:
            _stores[key] = CollectionStore(settings)
        return _stores[key]


def lookup(store: CollectionStore, collection_id: str) -> Any:
    """The collection's classifier, None when unknown, or the ClassifierError that refused it."""
    try:
        return store.get(collection_id)
    except ClassifierError as exc:
        return exc


async def run_classify(orch: Any, params: list[Any], crops: list[Any]) -> list[tuple[str, Any]]:
    store = store_for(orch.settings)
    out: list[tuple[str, Any]] = [("error", "not run")] * len(params)
    by_model: dict[str, list[int]] = {}
    classifiers = {}
    ids = sorted({str(p.collection_id) for p in params})
    found = await orch.in_pool(lambda: {cid: lookup(store, cid) for cid in ids})  # file reads and sha256: off the loop
    for k, p in enumerate(params):
        cid = str(p.collection_id)
        clf = found[cid]
        if isinstance(clf, ClassifierError):
            out[k] = ("error", f"The classifier of collection {cid!r} cannot be used: {clf}")
            continue
        if clf is None:
            out[k] = ("skipped", f"Unknown collection {cid!r}: best_models.json names no classifier for it.")
            continue
        classifiers[k] = clf
        by_model.setdefault(clf.embedding_model, []).append(k)
    for model, ks in by_model.items():
        vectors = await run_stage(orch, model, [crops[k] for k in ks])
        for k, v in zip(ks, vectors):
            if v is None or isinstance(v, BaseException):
                out[k] = ("error", f"The {model} embedding failed: {message(v)}")
                continue
            clf = classifiers[k]
            try:
                probability, is_in = clf.predict(v)
            except ClassifierError as exc:
                out[k] = ("error", str(exc))
                continue
            out[k] = ("success", {"collection_id": clf.collection_id, "is_in_collection": bool(is_in),
                                  "probability": round(float(probability), 6), "threshold": clf.threshold,
                                  "model_version": clf.version, "embedding_model": clf.embedding_model})
    return out
