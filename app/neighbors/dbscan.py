"""Exact DBSCAN of embedding vectors: scikit-learn's, on our sparse radius graph.

Why: near-duplicate grouping (/v1/cluster, photo sets) needs DBSCAN's labels on
up to ~100k × 512 vectors, and sklearn's own DBSCAN either builds an N×N matrix
(brute) or is slow in high dimension (trees). Here sklearn's DBSCAN
(``metric="precomputed"``) runs on the exact radius graph of radius.py, so the
memory is that of the graph, not of N².

Tolerance: a pair counts as a neighbour iff ``1 - cos <= eps`` (or
``|x - y| <= eps``) evaluated in float64; versus ``DBSCAN(metric="cosine")`` on
float64 input the only possible differences are pairs whose distance is within
a few ulps (~1e-16) of eps, where the two float64 formulas/summation orders may
round differently (tests put pairs 1e-9 and 1e-12 from eps and agree with
sklearn). float32 input is promoted to float64 first.

DBSCAN semantics are scikit-learn's: a point's neighbourhood includes itself,
core points have at least ``min_samples`` neighbours, border points go to the
first cluster (in sklearn's discovery order) that reaches them. Labels here are
then renumbered so that cluster 0 is the one whose smallest member index is
smallest, etc. (``clusters`` lists are in that order; noise stays -1).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from app.neighbors.radius import (
    DEFAULT_BLOCK_COLS,
    DEFAULT_BLOCK_ROWS,
    DEFAULT_MAX_PAIRS,
    Engine,
    radius_graph,
)
from app.neighbors.validate import Metric, as_matrix, validate_params


@dataclass
class ClusterResult:
    """DBSCAN output. ``labels[i]`` is the cluster of vector i (-1 = noise)."""

    labels: np.ndarray
    n_clusters: int
    n_noise: int
    clusters: list[list[int]]
    params: dict[str, Any]
    core_sample_indices: np.ndarray = field(repr=False, default_factory=lambda: np.empty(0, np.intp))
    n_pairs: int = 0  # undirected neighbour pairs (i < j) in the graph
    stats: dict[str, Any] = field(default_factory=dict)  # engine details (band sizes, timings)


def dbscan(
    vectors: np.ndarray,
    eps: float,
    min_samples: int,
    metric: Metric = "cosine",
    *,
    engine: Engine = "auto",
    block_rows: int = DEFAULT_BLOCK_ROWS,
    block_cols: int = DEFAULT_BLOCK_COLS,
    max_pairs: int = DEFAULT_MAX_PAIRS,
    assume_valid: bool = False,
) -> ClusterResult:
    """Exact DBSCAN (scikit-learn) of `vectors` (N, D) without an N×N matrix.

    Same labels (up to cluster numbering) as ``sklearn.cluster.DBSCAN(eps,
    min_samples=min_samples, metric=metric)`` on the float64 vectors. See the
    module docstring for the tolerance, radius.py for the algorithm. Raises
    ValueError for invalid input or when the neighbourhood graph would exceed
    `max_pairs` pairs. `assume_valid=True` skips the input checks (for an array
    that already went through `as_matrix`/`validate_cluster_input`).
    """
    from sklearn.cluster import DBSCAN

    validate_params(eps, min_samples, metric)
    X = np.ascontiguousarray(vectors, dtype=np.float64) if assume_valid else as_matrix(vectors, metric)
    n = X.shape[0]
    graph, info = radius_graph(
        X, eps, metric, engine=engine, block_rows=block_rows, block_cols=block_cols, max_pairs=max_pairs,
        _validated=True,
    )
    model = DBSCAN(eps=float(eps), min_samples=int(min_samples), metric="precomputed").fit(graph)
    labels, clusters = renumber(model.labels_, n)
    params = {"eps": float(eps), "min_samples": int(min_samples), "metric": metric, "engine": info["engine"]}
    n_noise = int(np.count_nonzero(labels < 0))
    return ClusterResult(
        labels=labels,
        n_clusters=len(clusters),
        n_noise=n_noise,
        clusters=clusters,
        params=params,
        core_sample_indices=np.asarray(model.core_sample_indices_, dtype=np.intp),
        n_pairs=info["n_pairs"],
        stats=info,
    )


def renumber(raw: np.ndarray, n: int) -> tuple[np.ndarray, list[list[int]]]:
    """Relabel clusters in order of their smallest member; return labels and member lists."""
    raw = np.asarray(raw)
    labels = np.full(n, -1, dtype=np.int64)
    clustered = raw >= 0
    if not clustered.any():
        return labels, []
    uniq, first = np.unique(raw[clustered], return_index=True)
    idx = np.flatnonzero(clustered)
    order = np.argsort(idx[first], kind="stable")  # clusters by first member
    new_id = np.empty(uniq.size, dtype=np.int64)
    new_id[order] = np.arange(uniq.size)
    labels[clustered] = new_id[np.searchsorted(uniq, raw[clustered])]
    members = np.argsort(labels[clustered], kind="stable")
    sorted_idx = idx[members]
    counts = np.bincount(labels[clustered], minlength=uniq.size)
    clusters = [part.tolist() for part in np.split(sorted_idx, np.cumsum(counts)[:-1])]
    return labels, clusters
