"""Near-duplicate clustering of embedding vectors: exact DBSCAN without an N×N matrix.

`dbscan()` runs scikit-learn's DBSCAN (``metric="precomputed"``) on a sparse
radius-neighbours graph that is built here block by block: the working memory
is one score block (128 MB by default) + N×D int8 + small buffers, plus the graph
itself (~150 bytes per neighbour pair at peak, capped by `max_pairs`), whatever N.

How the graph is built (cosine, the default engine ``"int8"``)
--------------------------------------------------------------
1. Every vector is L2-normalised and multiplied by a fixed randomised Hadamard
   matrix (block-diagonal, power-of-two blocks ≤ 256, random signs). Dot products
   are unchanged (up to float32 rounding, covered by the slack below); the
   rotation only spreads any "outlier" coordinate (CLIP has a few) over many
   coordinates so that step 2 loses little.
2. The rotated unit vectors ``u`` are quantised to int8 with one global scale
   ``s`` (127 / the largest coordinate of a sample of 8192 rows; the rare larger
   coordinates are clipped, which only enlarges their vector's e). Each vector's
   quantisation error ``e_a = |u_a - q_a/s|`` is measured (≈0.0125 at D=512),
   so by Cauchy–Schwarz ``|a·b - q_a·q_b/s²| <= E_a + E_b + E_a·E_b`` with
   ``E = e·(1+1e-3) + 1e-4`` (slack for the float32 normalisation/rotation).
3. The upper triangle of ``Q = q qᵀ`` is computed in blocks (4096 × 8192 by
   default) with an exact int8×int8→int32 product (oneDNN VNNI through
   ``torch._int_mm``: ~650 GOPS on the 2 AVX-512 cores here, ~3× float32).
   Entries are found with a two-level scan: the max of every 64-wide tile (one
   parallel pass), then only the tiles whose max reaches the global lower bound.
   For those pairs the per-pair bound decides: certainly within eps, certainly
   not, or undecided — the undecided band (~20 % of the true pairs at eps 0.35)
   is re-checked in float64 as ``1 - a·b/(|a||b|) <= eps``.

So the neighbour sets — and hence the labels — are those of float64 brute force:
the int8 product is only a filter with a proven error bound, never the decision.
Tolerance: a pair counts as a neighbour iff ``1 - cos <= eps`` evaluated in
float64; versus ``DBSCAN(metric="cosine")`` on float64 input the only possible
differences are pairs whose distance is within a few ulps (~1e-16) of eps,
where the two float64 formulas/summation orders may round differently (tests
put pairs 1e-9 and 1e-12 from eps and agree with sklearn). float32 input is
promoted to float64 first.

Euclidean uses the same block scan on a float32 product of augmented vectors
(``[2x, -|x|², -1]·[x, 1, |x|²] = -|x-y|²``, after centring and an exact
power-of-two rescaling) with a rigorous float32 error bound, and re-checks the
band in float64 as ``|x - y| <= eps``. The ``"float32"`` engine does the same
for cosine; it is the fallback when the int8 product is missing or fails its
one-time exactness self-test.

Why not a PCA projection + low-dimensional radius search (measured on the
benchmark data, 100k × 512, eps 0.35): the spectrum is nearly flat, so the
exact Cauchy–Schwarz bound on the top-k projection (``cos <= Pa·Pb + |Ra||Rb|``)
prunes 14 % / 39 % of the pairs at k = 64 / 128 (0 % / 1 % on random vectors).
Only k = 256 prunes ~all of them, and that saves half of the product at best
while ~3e-4 of all pairs survive and must be verified by gathering rows — more
work than the int8 product of the remaining half. Brute force in int8 costs the
same whatever the spectrum.

DBSCAN semantics are scikit-learn's: a point's neighbourhood includes itself,
core points have at least ``min_samples`` neighbours, border points go to the
first cluster (in sklearn's discovery order) that reaches them. Labels here are
then renumbered so that cluster 0 is the one whose smallest member index is
smallest, etc. (``clusters`` lists are in that order; noise stays -1).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from scipy import sparse

Metric = Literal["cosine", "euclidean"]
Engine = Literal["auto", "int8", "float32"]
METRICS: tuple[str, ...] = ("cosine", "euclidean")

#: Rows × columns of one score block (int32/float32 → 4 bytes each: 128 MiB).
DEFAULT_BLOCK_ROWS = 4096
DEFAULT_BLOCK_COLS = 8192
#: Upper bound on undirected neighbour pairs (i < j) kept in the graph. The graph
#: and sklearn's copies of it take ~150 bytes per pair at peak (measured: 10M pairs
#: → +1.45 GB, 12 s), so this caps the clustering at ~1.5 GB; an eps too large for
#: the data is refused with a ValueError instead of exhausting memory.
DEFAULT_MAX_PAIRS = 10_000_000
#: Largest absolute coordinate accepted (squared distances must not overflow).
MAX_ABS_VALUE = 1e100

_TILE = 64  # width of the tiles whose maxima are scanned first
_VERIFY_BATCH = 4096  # band pairs re-checked in float64 per batch (2 × 4096 × D × 8 bytes)
_ROT_BLOCK = 256  # size of the diagonal blocks of the random rotation
_ROT_SEED = 0x10_09E


# --------------------------------------------------------------------------- result


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


# ----------------------------------------------------------------------- validation


def validate_metric(metric: str) -> str:
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {list(METRICS)}, got {metric!r}.")
    return metric


def validate_params(eps: float, min_samples: int, metric: str) -> None:
    validate_metric(metric)
    is_number = isinstance(eps, (int, float, np.floating, np.integer)) and not isinstance(eps, bool)
    if not is_number or not math.isfinite(float(eps)) or eps <= 0:
        raise ValueError(f"eps must be a finite number > 0, got {eps!r}.")
    if not isinstance(min_samples, (int, np.integer)) or isinstance(min_samples, bool) or min_samples < 1:
        raise ValueError(f"min_samples must be an integer >= 1, got {min_samples!r}.")


def as_matrix(
    embeddings: Sequence[Sequence[float]] | np.ndarray,
    metric: str = "cosine",
    expected_dim: int | None = None,
) -> np.ndarray:
    """Validate embeddings and return them as a C-contiguous float64 (N, D) array.

    Raises ValueError (→ HTTP 422) for: no vectors, ragged rows / dimension
    mismatch (with the first offending index), a dimension other than
    `expected_dim`, non-numeric or non-finite values, absurdly large values, and
    zero vectors when the metric is cosine.
    """
    validate_metric(metric)
    if isinstance(embeddings, np.ndarray):
        arr = embeddings
        if arr.ndim != 2:
            raise ValueError(f"embeddings must be a 2-D array (N vectors × D), got shape {arr.shape}.")
    else:
        if len(embeddings) == 0:
            raise ValueError("embeddings is empty: give at least one vector.")
        dims = [len(v) if hasattr(v, "__len__") else -1 for v in embeddings]
        first = dims[0]
        if first < 0:
            raise ValueError("embeddings[0] is not a list of numbers.")
        for i, d in enumerate(dims):
            if d != first:
                raise ValueError(
                    f"embeddings are ragged: embeddings[{i}] has {d if d >= 0 else 'no'} values, "
                    f"embeddings[0] has {first}; all vectors must have the same dimension."
                )
        try:
            arr = np.asarray(embeddings, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"embeddings must contain only numbers: {exc}") from None
    n, d = arr.shape
    if n == 0:
        raise ValueError("embeddings is empty: give at least one vector.")
    if d == 0:
        raise ValueError("embedding vectors have dimension 0.")
    if expected_dim is not None and d != expected_dim:
        raise ValueError(f"embedding dimension mismatch: expected {expected_dim}, got {d}.")
    if arr.dtype.kind not in "fiub":
        raise ValueError(f"embeddings must be numeric, got dtype {arr.dtype}.")
    arr = np.ascontiguousarray(arr, dtype=np.float64)
    step = max(1, (8 << 20) // (8 * d))  # row chunks: temporaries stay ~8 MB
    for s in range(0, n, step):
        part = arr[s : s + step]
        finite = np.isfinite(part).all(axis=1)
        if not finite.all():
            i = s + int(np.flatnonzero(~finite)[0])
            raise ValueError(f"embeddings[{i}] contains a non-finite value (NaN or ±inf).")
        big = np.abs(part).max(axis=1) > MAX_ABS_VALUE
        if big.any():
            i = s + int(np.flatnonzero(big)[0])
            raise ValueError(f"embeddings[{i}] has a value larger than {MAX_ABS_VALUE:g} in magnitude.")
        if metric == "cosine":
            zero = ~(_row_norms(part) > 0)
            if zero.any():
                i = s + int(np.flatnonzero(zero)[0])
                raise ValueError(
                    f"embeddings[{i}] is a zero vector (or too small to normalise); "
                    "cosine distance is undefined for it."
                )
    return arr


def validate_ids(image_ids: Sequence[str], n_vectors: int | None = None) -> list[str]:
    """Check ids are unique (and as many as the vectors); return them as a list."""
    ids = list(image_ids)
    if n_vectors is not None and len(ids) != n_vectors:
        raise ValueError(
            f"length mismatch: {n_vectors} embeddings but {len(ids)} image_ids; give one id per vector."
        )
    seen: dict[str, int] = {}
    for i, s in enumerate(ids):
        j = seen.setdefault(s, i)
        if j != i:
            raise ValueError(f"duplicate image_id {s!r} at positions {j} and {i}; ids must be unique.")
    return ids


def validate_cluster_input(
    embeddings: Sequence[Sequence[float]] | np.ndarray,
    image_ids: Sequence[str],
    metric: str = "cosine",
    expected_dim: int | None = None,
) -> tuple[np.ndarray, list[str]]:
    """Both checks at once; the id/length check comes first (it is cheap)."""
    n = len(embeddings)
    ids = validate_ids(image_ids, n)
    return as_matrix(embeddings, metric, expected_dim), ids


# --------------------------------------------------------------------------- dbscan


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
    module docstring for the algorithm and its tolerance. Raises ValueError for
    invalid input or when the neighbourhood graph would exceed `max_pairs` pairs.
    `assume_valid=True` skips the input checks (for an array that already went
    through `as_matrix`/`validate_cluster_input`).
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
    labels, clusters = _renumber(model.labels_, n)
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


def radius_graph(
    vectors: np.ndarray,
    eps: float,
    metric: Metric = "cosine",
    *,
    engine: Engine = "auto",
    block_rows: int = DEFAULT_BLOCK_ROWS,
    block_cols: int = DEFAULT_BLOCK_COLS,
    max_pairs: int = DEFAULT_MAX_PAIRS,
    _validated: bool = False,
) -> tuple[sparse.csr_matrix, dict[str, Any]]:
    """Symmetric CSR graph of all pairs within `eps` (diagonal included, stored as 0).

    Membership is exact (see the module docstring). Rows are sorted by distance,
    as sklearn's precomputed-graph code wants. Stored distances carry float32
    precision relative to eps; for pairs decided by the filter alone they are its
    estimate (within ~0.03 for int8 cosine), clipped to <= eps — only membership
    matters to DBSCAN. Returns (graph, info) where info has the engine, the pair
    count, timings and the filter's band statistics.
    """
    import time

    validate_params(eps, 1, metric)
    X = vectors if _validated else as_matrix(vectors, metric)
    if block_rows < 1 or block_cols < 1:
        raise ValueError("block sizes must be >= 1")
    n = X.shape[0]
    t0 = time.perf_counter()
    if engine == "auto":
        engine = "int8" if (metric == "cosine" and _int8_ok()) else "float32"
    elif engine == "int8" and (metric != "cosine" or not _int8_ok()):
        engine = "float32"
    tile = min(_TILE, block_cols, n)
    npad = -(-n // tile) * tile  # matrices get whole tiles of rows; padding never pairs (filtered)
    if metric == "cosine":
        prep = _prep_cosine_int8(X, eps, npad) if engine == "int8" else _prep_cosine_f32(X, eps, npad)
    else:
        engine = "float32"
        prep = _prep_euclidean_f32(X, eps, npad)
    t_prep = time.perf_counter() - t0
    ei, ej, ed, scan = _scan(prep, X, eps, metric, n, tile, block_rows, block_cols, max_pairs)
    t_scan = time.perf_counter() - t0 - t_prep
    graph = _assemble(n, ei, ej, ed, eps)
    info = {
        "engine": engine,
        "n_pairs": int(ei.size),
        "t_prep_s": t_prep,
        "t_scan_s": t_scan,
        "t_graph_s": time.perf_counter() - t0 - t_prep - t_scan,
        **scan,
        "margin": prep["margin"],
    }
    return graph, info


# ------------------------------------------------------------------------ internals


def _row_norms(X: np.ndarray) -> np.ndarray:
    # The formula of sklearn.utils.extmath.row_norms.
    return np.sqrt(np.einsum("ij,ij->i", X, X))


def _renumber(raw: np.ndarray, n: int) -> tuple[np.ndarray, list[list[int]]]:
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


_INT8_STATE: dict[str, bool] = {}
_INT8_LOCK = threading.Lock()


def _int8_ok() -> bool:
    """Whether torch's int8 GEMM is present and exact here (checked once per process)."""
    with _INT8_LOCK:
        if "ok" not in _INT8_STATE:
            try:
                import torch

                rng = np.random.default_rng(1)
                a = rng.integers(-127, 128, (67, 520), dtype=np.int8)
                b = rng.integers(-127, 128, (131, 520), dtype=np.int8)
                a[0] = 127
                b[0] = -127
                b[1] = 127
                got = torch._int_mm(torch.from_numpy(a), torch.from_numpy(b).T).numpy()
                want = a.astype(np.int64) @ b.astype(np.int64).T
                _INT8_STATE["ok"] = bool(np.array_equal(got, want))
            except Exception:  # noqa: BLE001 - any failure means: use float32
                _INT8_STATE["ok"] = False
        return _INT8_STATE["ok"]


def _rotation_blocks(d: int) -> list[tuple[int, int, np.ndarray]]:
    """Randomised Hadamard rotation, block-diagonal: [(start, stop, diag(±1)·H/√k)].

    Blocks have power-of-two sizes (≤ 256) that add up to d; no LAPACK call. The
    entries ±1/√k are exact in float32 when k is a power of 4 and rounded once
    otherwise (orthogonal to ~1e-7, inside the slack of the error bound).
    """
    rng = np.random.default_rng(_ROT_SEED)
    blocks = []
    s = 0
    while s < d:
        k = min(_ROT_BLOCK, 1 << ((d - s).bit_length() - 1))
        h = np.ones((1, 1))
        while h.shape[0] < k:
            h = np.block([[h, h], [h, -h]])
        h = h * rng.choice([-1.0, 1.0], size=k)[:, None] / np.sqrt(k)
        blocks.append((s, s + k, h.astype(np.float32)))
        s += k
    return blocks


def _rotate_unit(X: np.ndarray, norms: np.ndarray, blocks) -> np.ndarray:
    """float32 rotated unit rows: (X / |X|) · R."""
    A = (X / norms[:, None]).astype(np.float32)
    out = np.empty_like(A)
    for s, e, h in blocks:
        np.matmul(A[:, s:e], h, out=out[:, s:e])
    return out


def _chunks(n: int, size: int):
    for s in range(0, n, size):
        yield s, min(n, s + size)


def _prep_cosine_int8(X: np.ndarray, eps: float, npad: int) -> dict[str, Any]:
    import torch

    n, d = X.shape
    dp = -(-d // 8) * 8  # pad the dimension to a multiple of 8 (zeros change no dot product)
    norms = _row_norms(X)
    blocks = _rotation_blocks(d)
    chunk = _row_chunk(d)
    # One global scale: 127 / the largest rotated coordinate of a fixed sample of rows.
    # Rarer, larger coordinates are clipped; that only enlarges those vectors' measured
    # error e (so their pairs' margins), never the correctness — and saves a pass.
    sample = np.sort(np.random.default_rng(0).choice(n, 8192, replace=False)) if n > 8192 else np.arange(n)
    amax = float(np.abs(_rotate_unit(X[sample], norms[sample], blocks)).max())
    scale = np.float32(127.0 / max(amax, 1e-30))
    inv = np.float32(1.0) / scale
    # quantise, and measure each vector's quantisation error e = |u - q/s|
    q = np.zeros((npad, dp), dtype=np.int8)
    err = np.empty(n, dtype=np.float64)
    for s, e in _chunks(n, chunk):
        U = _rotate_unit(X[s:e], norms[s:e], blocks)
        qi = np.rint(U * scale)
        np.clip(qi, -127, 127, out=qi)
        q[s:e, :d] = qi
        qi *= inv
        U -= qi
        err[s:e] = np.sqrt(np.einsum("ij,ij->i", U, U, dtype=np.float64))
    # Slack for the float32 normalisation/rotation (relative error ≲ 300·2^-24 ≈ 2e-5 per
    # vector) and for q·fl(1/s) vs q/s: |â·b̂ − a·b| ≤ E_a + E_b + E_a·E_b with E = e·(1+1e-3) + 1e-4.
    E = err * (1 + 1e-3) + 1e-4
    e_max = float(E.max())
    margin = 2 * e_max + e_max * e_max
    thr = 1.0 - float(eps)
    s2 = float(scale) ** 2
    return {
        "kind": "int8",
        "mat": torch.from_numpy(q),
        "lo": math.floor((thr - margin) * s2),  # Q < lo ⇒ certainly no pair, whoever a and b are
        "est": lambda v: v.astype(np.float64) / s2,  # estimate of cos
        "pair_margin": lambda i, j: E[i] + E[j] + E[i] * E[j],
        "thr": thr,
        "to_dist": lambda c: 1.0 - c,
        "norms": norms,
        "margin": margin,
        "e_typ": float(np.median(E)),
    }


def _prep_cosine_f32(X: np.ndarray, eps: float, npad: int) -> dict[str, Any]:
    import torch

    n, d = X.shape
    norms = _row_norms(X)
    A = np.zeros((npad, d), dtype=np.float32)
    for s, e in _chunks(n, _row_chunk(d)):
        A[s:e] = X[s:e] / norms[s:e, None]
    u = 2.0**-24
    # |fl(a·b) - a·b| <= γ_d Σ|a_k b_k| <= γ_d for unit vectors; + rounding of the inputs.
    margin = (d + 8) * u * 1.01 + 1e-6
    thr = 1.0 - float(eps)
    return {
        "kind": "float32",
        "mat": torch.from_numpy(A),
        "lo": thr - margin,
        "est": lambda v: v.astype(np.float64),
        "pair_margin": lambda i, j: margin,
        "thr": thr,
        "to_dist": lambda c: 1.0 - c,
        "norms": norms,
        "margin": margin,
    }


def _prep_euclidean_f32(X: np.ndarray, eps: float, npad: int) -> dict[str, Any]:
    import torch

    n, d = X.shape
    chunk = _row_chunk(d)
    mean = X.mean(axis=0)
    nrm2 = np.empty(n)
    for s, e in _chunks(n, chunk):
        C = X[s:e] - mean
        nrm2[s:e] = np.einsum("ij,ij->i", C, C)
    nmax = float(np.sqrt(nrm2.max()))
    # Scale by a power of two (exact) so that the largest centred norm is in (0.5, 1]:
    # float32 then neither overflows nor underflows, whatever the units of the input.
    p2 = 2.0 ** -math.frexp(nmax)[1] if nmax > 0 else 1.0
    nrm2 *= p2 * p2
    nmax *= p2
    # rows: [2x, -|x|², -1]   cols: [x, 1, |x|²]   →   row·col = -|x - y|²
    k = d + 2
    Arow = np.zeros((npad, k), dtype=np.float32)
    Bcol = np.zeros((npad, k), dtype=np.float32)
    Bcol[n:, d + 1] = 1e30  # padding columns score ≈ -1e30: never a hit
    for s, e in _chunks(n, chunk):
        C = (X[s:e] - mean) * p2
        Arow[s:e, :d] = 2.0 * C
        Arow[s:e, d] = -nrm2[s:e]
        Arow[s:e, d + 1] = -1.0
        Bcol[s:e, :d] = C
        Bcol[s:e, d] = 1.0
        Bcol[s:e, d + 1] = nrm2[s:e]
    u = 2.0**-24
    # Σ|terms| <= 2|x||y| + |x|² + |y|² <= (|x|+|y|)² <= 4 nmax²; γ_k + input rounding
    # (+1e-30 for float32 subnormals of coordinates far below nmax).
    margin = (k + 8) * u * 1.01 * 4.0 * nmax * nmax + 1e-30
    thr = -((float(eps) * p2) ** 2)
    return {
        "kind": "euclid",
        "mat": torch.from_numpy(Arow),
        "mat_cols": torch.from_numpy(Bcol),
        "lo": thr - margin,
        "est": lambda v: v.astype(np.float64),  # −|x − y|² in the scaled units
        "pair_margin": lambda i, j: margin,
        "thr": thr,
        "to_dist": lambda c: np.sqrt(np.maximum(-c, 0.0)) / p2,
        "margin": margin,
    }


def _row_chunk(d: int, nbytes: int = 8 << 20) -> int:
    """Rows per chunk so that a float64 (rows, d) temporary is about `nbytes`."""
    return max(1, nbytes // (8 * d))


def _scan(prep: dict[str, Any], X: np.ndarray, eps: float, metric: str, n: int, tile: int,
          block_rows: int, block_cols: int, max_pairs: int):
    """Blockwise upper-triangle scan: undirected pairs (i<j) and their distances / eps (float32)."""
    import torch

    rows_mat = prep["mat"]
    cols_mat = prep.get("mat_cols", rows_mat)
    npad = rows_mat.shape[0]
    lo, thr = prep["lo"], prep["thr"]
    is_int = prep["kind"] == "int8"
    if not is_int:  # the scan compares float32 entries: round the bound down, never up
        lo32 = np.float32(lo)
        lo = float(lo32 if float(lo32) <= lo else np.nextafter(lo32, np.float32(-np.inf)))
    br = max(1, min(block_rows, n))
    bc = -(-max(1, min(block_cols, npad)) // tile) * tile  # whole tiles
    buf = torch.empty(br * bc, dtype=torch.int32 if is_int else torch.float32)
    out_i: list[np.ndarray] = []
    out_j: list[np.ndarray] = []
    out_d: list[np.ndarray] = []
    band_i: list[np.ndarray] = []
    band_j: list[np.ndarray] = []
    stats = {"n_band": 0, "n_band_kept": 0, "n_sure": 0}
    pending = 0

    def flush_band() -> None:
        nonlocal pending
        if not band_i:
            return
        bi = np.concatenate(band_i)
        bj = np.concatenate(band_j)
        band_i.clear()
        band_j.clear()
        pending = 0
        d = _exact_dist(X, prep, bi, bj, metric)
        keep = d <= eps
        stats["n_band_kept"] += int(keep.sum())
        out_i.append(bi[keep])
        out_j.append(bj[keep])
        out_d.append(_rel(d[keep], eps))

    for r0 in range(0, n, br):
        r1 = min(n, r0 + br)
        A = rows_mat[r0:r1]
        # the upper triangle: columns from the tile holding r0 on (the lower rest is dropped below)
        for c0 in range((r0 // tile) * tile, npad, bc):
            c1 = min(npad, c0 + bc)
            m, w = r1 - r0, c1 - c0
            S = buf[: m * w].view(m, w)
            if is_int:
                torch._int_mm(A, cols_mat[c0:c1].T, out=S)
            else:
                torch.mm(A, cols_mat[c0:c1].T, out=S)
            for ri, cj, v in _hits(S, lo, tile):
                gi = ri + r0
                gj = cj + c0
                if c0 < r1 or c1 > n:  # near the diagonal or the padding: keep i < j < n
                    ok = (gj > gi) & (gj < n)
                    gi, gj, v = gi[ok], gj[ok], v[ok]
                est = prep["est"](v)
                pm = prep["pair_margin"](gi, gj)
                sure = est - pm >= thr  # within eps whatever the rounding
                band = ~sure & (est + pm >= thr)  # undecided: re-checked exactly
                ns = int(np.count_nonzero(sure))
                if ns:
                    out_i.append(gi[sure].astype(np.int32))
                    out_j.append(gj[sure].astype(np.int32))
                    out_d.append(_rel(prep["to_dist"](est[sure]), eps))
                    stats["n_sure"] += ns
                nb = int(np.count_nonzero(band))
                if nb:
                    band_i.append(gi[band].astype(np.int32))
                    band_j.append(gj[band].astype(np.int32))
                    pending += nb
                    stats["n_band"] += nb
                    if pending >= 8 * _VERIFY_BATCH:
                        flush_band()
                if stats["n_sure"] + stats["n_band_kept"] > max_pairs:
                    _too_many(max_pairs, eps, n, metric)
    flush_band()
    if stats["n_sure"] + stats["n_band_kept"] > max_pairs:
        _too_many(max_pairs, eps, n, metric)
    if out_i:
        ei = np.concatenate(out_i)
        ej = np.concatenate(out_j)
        ed = np.concatenate(out_d)
    else:
        ei = ej = np.empty(0, np.int32)
        ed = np.empty(0, np.float32)
    return ei, ej, ed, stats


def _rel(d: np.ndarray, eps: float) -> np.ndarray:
    """Distances as float32 fractions of eps, in [0, 1] (compact; cannot overflow)."""
    return np.clip(d / eps, 0.0, 1.0).astype(np.float32)


def _too_many(max_pairs: int, eps: float, n: int, metric: str) -> None:
    hint = " (near-duplicate images are usually well under 0.3 in cosine distance)" if metric == "cosine" else ""
    raise ValueError(
        f"eps={eps:g} is too large for these {n} vectors: more than {max_pairs:,} pairs are within "
        f"eps ({metric} distance), which would exhaust memory; use a smaller eps{hint}."
    )


def _hits(S, lo, tile: int, max_tiles: int = 32_768):
    """Yield (row, col, value) arrays of the entries of S (whole tiles wide) that are >= lo.

    One parallel pass (torch) takes the maximum of every `tile`-wide run of a row;
    only the runs whose maximum reaches `lo` are then gathered and searched, at
    most `max_tiles` at a time (numpy: these arrays are small, and small torch
    ops pay thread start-up). Chunking bounds memory when eps makes S dense.
    """
    import torch

    m, w = S.shape
    nt = w // tile
    tmax = torch.amax(S.view(m * nt, tile), dim=1).numpy()
    hit_tiles = np.flatnonzero(tmax >= lo)
    flat = S.numpy().reshape(m * nt, tile)
    for s in range(0, hit_tiles.size, max_tiles):
        ti = hit_tiles[s : s + max_tiles]
        tiles = flat[ti]
        k, l = np.nonzero(tiles >= lo)
        ft = ti[k]
        yield ft // nt, (ft % nt) * tile + l, tiles[k, l]


def _exact_dist(X: np.ndarray, prep: dict[str, Any], bi: np.ndarray, bj: np.ndarray, metric: str) -> np.ndarray:
    """float64 distances of the pairs (bi[k], bj[k]): 1 - a·b/(|a||b|) or |a - b|."""
    out = np.empty(bi.size, dtype=np.float64)
    step = _VERIFY_BATCH
    a = np.empty((min(step, bi.size), X.shape[1]), dtype=np.float64)
    b = np.empty_like(a)
    for s, e in _chunks(bi.size, step):
        k = e - s
        np.take(X, bi[s:e], axis=0, out=a[:k])
        np.take(X, bj[s:e], axis=0, out=b[:k])
        if metric == "cosine":
            norms = prep["norms"]
            out[s:e] = 1.0 - np.einsum("ij,ij->i", a[:k], b[:k]) / (norms[bi[s:e]] * norms[bj[s:e]])
        else:
            np.subtract(a[:k], b[:k], out=a[:k])
            out[s:e] = np.sqrt(np.einsum("ij,ij->i", a[:k], a[:k]))
    return out


def _assemble(n: int, ei: np.ndarray, ej: np.ndarray, r32: np.ndarray, eps: float) -> sparse.csr_matrix:
    """Symmetric CSR (diagonal = explicit 0), each row sorted by distance.

    Stored distances are float64 values of (d/eps rounded to float32)·eps: never
    above eps (so sklearn's `data <= eps` keeps every edge), no overflow whatever
    the units, and ties in the float32 sort key are ties in the data too.
    """
    diag = np.arange(n, dtype=np.int32)
    rows = np.concatenate([ei, ej, diag])
    cols = np.concatenate([ej, ei, diag])
    rel = np.concatenate([r32, r32, np.zeros(n, np.float32)])
    key = (rows.astype(np.int64) << 32) | rel.view(np.uint32).astype(np.int64)
    order = np.argsort(key)
    del key
    data = rel[order].astype(np.float64) * eps
    indptr = np.zeros(n + 1, dtype=np.int64 if rows.size >= 2**31 else np.int32)
    np.cumsum(np.bincount(rows, minlength=n), out=indptr[1:])
    return sparse.csr_matrix((data, cols[order], indptr), shape=(n, n))
