"""Chunked DBSCAN == scikit-learn's DBSCAN; validation errors."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.cluster import DBSCAN

from app.neighbors import (
    ClusterResult,
    as_matrix,
    dbscan,
    kernels,
    radius_graph,
    validate_cluster_input,
    validate_ids,
)


def clustered(n: int, d: int, seed: int, frac_isolated: float = 0.3, scale: bool = True) -> np.ndarray:
    """Bursts around random directions (spread σ ∈ [0.3, 0.8]) + isolated points."""
    rng = np.random.default_rng(seed)
    k = max(2, n // 12)
    centres = rng.standard_normal((k, d))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    member = rng.integers(0, k, n)
    sigma = rng.uniform(0.3, 0.8, k)[member]
    X = centres[member] + sigma[:, None] * rng.standard_normal((n, d)) / np.sqrt(d)
    iso = rng.random(n) < frac_isolated
    X[iso] = rng.standard_normal((int(iso.sum()), d))
    if scale:  # cosine ignores the norm; euclidean sees it
        X *= rng.uniform(0.5, 2.0, (n, 1))
    return X


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or not np.array_equal(a < 0, b < 0):
        return False
    m = a >= 0
    pairs = np.unique(np.stack([a[m], b[m]], axis=1), axis=0)
    return len(np.unique(pairs[:, 0])) == len(pairs) == len(np.unique(pairs[:, 1]))


def reference(X: np.ndarray, eps: float, min_samples: int, metric: str) -> np.ndarray:
    return DBSCAN(eps=eps, min_samples=min_samples, metric=metric, algorithm="brute").fit(X).labels_


def check_result(r: ClusterResult, n: int) -> None:
    labels = r.labels
    assert labels.shape == (n,)
    assert r.n_noise == int((labels == -1).sum())
    assert r.n_clusters == len(r.clusters) == (int(labels.max()) + 1 if (labels >= 0).any() else 0)
    firsts = [c[0] for c in r.clusters]
    assert firsts == sorted(firsts)
    for k, members in enumerate(r.clusters):
        assert members == sorted(members)
        assert np.array_equal(np.flatnonzero(labels == k), members)


COSINE_CASES = [(0.1, 1), (0.2, 2), (0.35, 2), (0.35, 5), (0.5, 3), (0.9, 4)]


@pytest.mark.parametrize("engine", ["int8", "float32"])
@pytest.mark.parametrize("eps,min_samples", COSINE_CASES)
def test_cosine_equals_sklearn(engine, eps, min_samples):
    X = clustered(700, 64, seed=int(eps * 100) + min_samples)
    want = reference(X, eps, min_samples, "cosine")
    got = dbscan(X, eps, min_samples, "cosine", engine=engine)
    assert same_partition(got.labels, want)
    check_result(got, len(X))
    assert got.n_clusters > (3 if eps < 0.6 else 0)  # a non-trivial partition
    assert got.params == {"eps": eps, "min_samples": min_samples, "metric": "cosine", "engine": engine}


@pytest.mark.parametrize("eps,min_samples", [(0.4, 1), (0.6, 2), (0.8, 3), (1.2, 5)])
def test_euclidean_equals_sklearn(eps, min_samples):
    X = clustered(600, 32, seed=7 + min_samples)
    want = reference(X, eps, min_samples, "euclidean")
    got = dbscan(X, eps, min_samples, "euclidean")
    assert same_partition(got.labels, want)
    check_result(got, len(X))


@pytest.mark.parametrize("metric,eps", [("cosine", 0.3), ("euclidean", 0.7)])
@pytest.mark.parametrize("block_rows,block_cols", [(1, 1), (7, 13), (64, 5), (33, 64), (100, 1000)])
def test_tiny_blocks_cross_chunk_boundaries(metric, eps, block_rows, block_cols):
    X = clustered(257, 24, seed=block_rows * 31 + block_cols)
    want = reference(X, eps, 2, metric)
    for engine in ("int8", "float32"):
        got = dbscan(X, eps, 2, metric, engine=engine, block_rows=block_rows, block_cols=block_cols)
        assert same_partition(got.labels, want), (engine, block_rows, block_cols)


@pytest.mark.parametrize("scale", [1e-150, 1e-20, 1e20, 1e90])
def test_euclidean_any_units(scale):
    """float32 is only the filter, after an exact power-of-two rescale: no overflow/underflow."""
    X = clustered(300, 20, seed=9) * scale
    got = dbscan(X, 0.6 * scale, 3, "euclidean")
    assert same_partition(got.labels, reference(X, 0.6 * scale, 3, "euclidean"))
    assert got.n_clusters > 3


def test_outlier_coordinates_and_spiky_vectors():
    """CLIP-like vectors with two large shared coordinates, plus one-hot vectors (heavy clipping)."""
    X = clustered(600, 512, seed=12)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    X[:, 3] += 0.5  # ~11× a typical coordinate
    X[:, 77] -= 0.3
    X[::50] = 0.0
    X[::50, 200] = 1.0  # identical one-hot vectors: a cluster of their own
    X[1::97] = np.eye(512)[np.arange(len(X[1::97])) + 300]  # distinct one-hot vectors: noise
    for eps in (0.1, 0.2, 0.35):
        want = reference(X, eps, 2, "cosine")
        got = dbscan(X, eps, 2, "cosine", engine="int8")
        assert same_partition(got.labels, want), eps
        assert got.n_clusters > 3 and got.n_noise > 6


def test_graph_is_the_exact_radius_graph():
    X = clustered(400, 48, seed=3)
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    dist = 1 - Xn @ Xn.T
    for engine in ("int8", "float32"):
        g, info = radius_graph(X, 0.3, "cosine", engine=engine, block_rows=50, block_cols=70)
        assert info["engine"] == engine
        assert (g != g.T).nnz == 0
        dense = np.zeros(dist.shape, bool)
        coo = g.tocoo()
        dense[coo.row, coo.col] = True
        assert np.array_equal(dense, dist <= 0.3)  # diagonal included
        assert np.array_equal(g.diagonal(), np.zeros(len(X)))
        assert (g.data <= 0.3).all()
        assert info["n_pairs"] == (g.nnz - len(X)) // 2
        for i in range(0, len(X), 37):  # each row sorted by distance, as sklearn wants
            row = g.data[g.indptr[i]:g.indptr[i + 1]]
            assert (np.diff(row) >= 0).all()


def test_pairs_at_the_border_are_decided_in_float64():
    """Pairs 1e-9 inside / outside eps, hidden in 512-D, are classified exactly (int8 filter band)."""
    rng = np.random.default_rng(5)
    d, eps = 512, 0.35
    Q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    pts = []
    for delta in (-1e-9, 1e-9, -1e-12, 0.02, -0.02):
        theta = np.arccos(1 - (eps + delta))
        pts.append(Q[:, 0])
        pts.append(np.cos(theta) * Q[:, 0] + np.sin(theta) * Q[:, 1 + len(pts)])
    X = np.array(pts)
    want = reference(X, eps, 2, "cosine")
    for engine in ("int8", "float32"):
        got = dbscan(X, eps, 2, "cosine", engine=engine)
        assert same_partition(got.labels, want)
    # points 0,1 (−1e-9), 4,5 (−1e-12), 8,9 (−0.02) are inside eps; the copies of Q[:,0] all coincide
    assert got.n_clusters == 1 and got.labels[3] == got.labels[7] == -1


def test_exact_border_values():
    """Distances exactly equal to eps count as neighbours (<=), as in sklearn."""
    X = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [-1.0, 1.0], [-1.0, 0.0]])
    eps = float(1 - np.dot(X[0] / np.linalg.norm(X[0]), X[1] / np.linalg.norm(X[1])))
    got = dbscan(X, eps, 2, "cosine")
    assert same_partition(got.labels, reference(X, eps, 2, "cosine"))
    grid = np.array([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0], [5.0, 0.0], [5.0, 1.0], [9.0, 9.0]])
    got = dbscan(grid, 1.0, 2, "euclidean")
    assert got.labels.tolist() == [0, 0, 0, 1, 1, -1]
    assert got.clusters == [[0, 1, 2], [3, 4]]


def test_duplicates_small_inputs_and_float32():
    X = np.tile([[0.3, -0.2, 0.9]], (5, 1))
    r = dbscan(X, 1e-6, 5)
    assert r.labels.tolist() == [0] * 5 and r.n_pairs == 10
    assert dbscan(X, 1e-6, 6).labels.tolist() == [-1] * 5
    one = dbscan(np.array([[1.0, 2.0]]), 0.1, 1)
    assert one.labels.tolist() == [0] and one.clusters == [[0]]
    assert dbscan(np.array([[1.0, 2.0]]), 0.1, 2).n_noise == 1
    X32 = clustered(300, 16, seed=11).astype(np.float32)
    got = dbscan(X32, 0.3, 2)
    assert same_partition(got.labels, reference(X32.astype(np.float64), 0.3, 2, "cosine"))
    lists = clustered(50, 8, seed=2).tolist()
    assert same_partition(dbscan(lists, 0.3, 2).labels, reference(np.array(lists), 0.3, 2, "cosine"))


def test_renumbering_orders_clusters_by_first_member():
    X = np.array([[0.0, 10.0], [5.0, 0.0], [0.0, 10.1], [5.0, 0.1], [0.0, 10.2], [50.0, 50.0]])
    r = dbscan(X, 0.15, 2, "euclidean")
    assert r.labels.tolist() == [0, 1, 0, 1, 0, -1]
    assert r.clusters == [[0, 2, 4], [1, 3]]
    assert (r.n_clusters, r.n_noise) == (2, 1)


def test_fallback_when_int8_is_unavailable(monkeypatch):
    monkeypatch.setitem(kernels._INT8_STATE, "ok", False)
    X = clustered(200, 16, seed=4)
    r = dbscan(X, 0.3, 2)
    assert r.params["engine"] == "float32"
    assert same_partition(r.labels, reference(X, 0.3, 2, "cosine"))


def test_int8_matmul_is_exact():
    """Guards the private ``torch._int_mm`` behind kernels.int8_matmul: a torch upgrade that
    removes it, renames it or changes its result (dtype, layout, saturation) fails here loudly,
    both in the plain form (the self-test) and the ``out=`` form (the scan's blocks)."""
    import torch

    rng = np.random.default_rng(7)
    for m, k, n in [(64, 512, 192), (33, 520, 64), (1, 8, 64)]:  # k: multiples of 8; m = 1: a last row block
        a = rng.integers(-128, 128, (m, k), dtype=np.int8)
        b = rng.integers(-128, 128, (n, k), dtype=np.int8)
        a[0], b[0], b[1] = 127, -128, 127  # extremes: int32 sums near k·2^14, no saturation allowed
        want = a.astype(np.int64) @ b.astype(np.int64).T
        got = kernels.int8_matmul(torch.from_numpy(a), torch.from_numpy(b).T)  # transposed view, as the scan uses
        assert got.dtype == torch.int32 and tuple(got.shape) == (m, n)
        np.testing.assert_array_equal(got.numpy().astype(np.int64), want)
        buf = torch.full((m * n + 5,), -1, dtype=torch.int32)
        out = buf[: m * n].view(m, n)  # a view into a larger buffer, as the scan's blocks are
        kernels.int8_matmul(torch.from_numpy(a), torch.from_numpy(b).T, out=out)
        np.testing.assert_array_equal(out.numpy().astype(np.int64), want)
        assert (buf[m * n :] == -1).all()  # wrote only where asked
    assert kernels.int8_available()


def test_int8_matmul_missing_says_so_and_falls_back(monkeypatch):
    import torch

    kernels.int8_available()  # settle the verdict first so that monkeypatch restores it afterwards
    monkeypatch.delattr(torch, "_int_mm")
    monkeypatch.delitem(kernels._INT8_STATE, "ok")
    a = torch.zeros((16, 8), dtype=torch.int8)
    with pytest.raises(kernels.Int8MatmulUnavailable, match=r"torch .* has no torch\._int_mm"):
        kernels.int8_matmul(a, a.T)
    assert kernels.int8_available() is False
    X = clustered(200, 16, seed=4)
    r = dbscan(X, 0.3, 2, engine="int8")
    assert r.params["engine"] == "float32"
    assert same_partition(r.labels, reference(X, 0.3, 2, "cosine"))


def test_too_many_pairs_is_refused():
    X = clustered(300, 16, seed=1)
    with pytest.raises(ValueError, match="too large"):
        dbscan(X, 1.9, 2, max_pairs=1000)
    assert dbscan(X, 0.05, 2, max_pairs=1000).n_pairs <= 1000


# ----------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "emb,metric,match",
    [
        ([], "cosine", "empty"),
        ([[1.0, 2.0], [1.0]], "cosine", r"ragged: embeddings\[1\] has 1"),
        ([[1.0, 2.0], [1.0, 2.0, 3.0]], "euclidean", "ragged"),
        ([[1.0, float("nan")]], "cosine", r"embeddings\[0\].*non-finite"),
        ([[1.0, 1.0], [float("inf"), 0.0]], "euclidean", r"embeddings\[1\].*non-finite"),
        ([[1.0, 1.0], [0.0, 0.0]], "cosine", r"embeddings\[1\] is a zero vector"),
        ([[1.0, 1.0], [1e300, 0.0]], "euclidean", "larger than"),
        ([[1.0, "a"]], "cosine", "numbers"),
        ([[]], "cosine", "dimension 0"),
        ([[1.0, 2.0]], "manhattan", "metric must be"),
    ],
)
def test_invalid_embeddings(emb, metric, match):
    with pytest.raises(ValueError, match=match):
        as_matrix(emb, metric)


def test_zero_vector_is_fine_for_euclidean_and_dim_check():
    assert as_matrix([[0.0, 0.0], [1.0, 1.0]], "euclidean").shape == (2, 2)
    with pytest.raises(ValueError, match="dimension mismatch: expected 3, got 2"):
        as_matrix([[0.0, 1.0]], "cosine", expected_dim=3)


def test_ids_validation():
    assert validate_ids(["a", "b"], 2) == ["a", "b"]
    with pytest.raises(ValueError, match="duplicate image_id 'a' at positions 0 and 2"):
        validate_ids(["a", "b", "a"], 3)
    with pytest.raises(ValueError, match="length mismatch: 3 embeddings but 2 image_ids"):
        validate_ids(["a", "b"], 3)
    X, ids = validate_cluster_input([[1.0, 0.0], [0.0, 1.0]], ["x", "y"])
    assert X.dtype == np.float64 and ids == ["x", "y"]
    with pytest.raises(ValueError, match="length mismatch"):
        validate_cluster_input([[1.0, 0.0]], ["x", "y"])


@pytest.mark.parametrize("eps,min_samples", [(0, 2), (-0.1, 2), (float("nan"), 2), (0.3, 0), (0.3, 1.5), (True, 2)])
def test_invalid_params(eps, min_samples):
    with pytest.raises(ValueError):
        dbscan(np.eye(3), eps, min_samples)
