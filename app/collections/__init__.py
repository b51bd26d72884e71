"""Trained per-collection classifiers: "is this photo one of collection X?".

A collection's classifier is a logistic regression on one model's image embeddings, stored as
plain JSON data (never pickle: a classifier file is data anyone can read and nobody can make
execute code). store.py reads, checks and serves them; train.py trains them and keeps the best.
"""

from app.collections.store import Classifier, ClassifierError, CollectionStore, expected_dim, load_classifier, save_classifier

__all__ = ["Classifier", "ClassifierError", "CollectionStore", "expected_dim", "load_classifier", "save_classifier"]
