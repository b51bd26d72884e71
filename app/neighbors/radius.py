"""The exact radius-neighbours graph, built block by block without an N×N matrix.

Why this shape: DBSCAN needs every pair within eps, and N = 100k vectors would
need a 40 GB distance matrix. Here the working memory is one score block (128 MB
by default) + the filter's N×D matrix + small buffers, plus the graph itself
(~150 bytes per neighbour pair at peak, capped by `max_pairs`), whatever N.

How: the upper triangle of the filter's product (filters.py: exact int8 for
cosine, float32 otherwise) is computed in blocks (4096 × 8192 by default).
Entries are found with a two-level scan: the max of every 64-wide tile (one
parallel pass), then only the tiles whose max reaches the global lower bound.
For those pairs the per-pair bound decides: certainly within eps, certainly
not, or undecided — the undecided band (~20 % of the true pairs at eps 0.35 for
int8 cosine) is re-checked in float64 as ``1 - a·b/(|a||b|) <= eps`` (cosine)
or ``|x - y| <= eps`` (euclidean). So the neighbour sets are those of float64
brute force; the filter is never the decision.

Why not a PCA projection + low-dimensional radius search (measured on the
benchmark data, 100k × 512, eps 0.35): the spectrum is nearly flat, so the
exact Cauchy–Schwarz bound on the top-k projection (``cos <= Pa·Pb + |Ra||Rb|``)
prunes 14 % / 39 % of the pairs at k = 64 / 128 (0 % / 1 % on random vectors).
Only k = 256 prunes ~all of them, and that saves half of the product at best
while ~3e-4 of all pairs survive and must be verified by gathering rows — more
work than the int8 product of the remaining half. Brute force in int8 costs the
same whatever the spectrum.

Engines: ``"int8"`` (cosine only) needs kernels.int8_matmul to pass its
self-test; otherwise — and for euclidean — ``"float32"`` is used.
"""

from __future__ import annotations

import time
from typing import Any, Literal

import numpy as np
from scipy import sparse

from app.neighbors import filters
from app.neighbors.kernels import int8_available, int8_matmul
from app.neighbors.validate import Metric, as_matrix, validate_params

Engine = Literal["auto", "int8", "float32"]

#: Rows × columns of one score block (int32/float32 → 4 bytes each: 128 MiB).
DEFAULT_BLOCK_ROWS = 4096
DEFAULT_BLOCK_COLS = 8192
#: Upper bound on undirected neighbour pairs (i < j) kept in the graph. The graph
#: and sklearn's copies of it take ~150 bytes per pair at peak (measured: 10M pairs
#: → +1.45 GB, 12 s), so this caps the clustering at ~1.5 GB; an eps too large for
#: the data is refused with a ValueError instead of exhausting memory.
DEFAULT_MAX_PAIRS = 10_000_000

_TILE = 64  # width of the tiles whose maxima are scanned first
_VERIFY_BATCH = 4096  # band pairs re-checked in float64 per batch (2 × 4096 × D × 8 bytes)


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
    validate_params(eps, 1, metric)
    X = vectors if _validated else as_matrix(vectors, metric)
    if block_rows < 1 or block_cols < 1:
        raise ValueError("block sizes must be >= 1")
    n = X.shape[0]
    t0 = time.perf_counter()
    if engine == "auto":
        engine = "int8" if (metric == "cosine" and int8_available()) else "float32"
    elif engine == "int8" and (metric != "cosine" or not int8_available()):
        engine = "float32"
    tile = min(_TILE, block_cols, n)
    npad = -(-n // tile) * tile  # matrices get whole tiles of rows; padding never pairs (filtered)
    if metric == "cosine":
        prep = filters.cosine_int8(X, eps, npad) if engine == "int8" else filters.cosine_float32(X, eps, npad)
    else:
        engine = "float32"
        prep = filters.euclidean_float32(X, eps, npad)
    t_prep = time.perf_counter() - t0
    ei, ej, ed, scan = _scan(prep, X, eps, metric, n, tile, block_rows, block_cols, max_pairs)
    t_scan = time.perf_counter() - t0 - t_prep
    graph = _to_csr(n, ei, ej, ed, eps)
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
                int8_matmul(A, cols_mat[c0:c1].T, out=S)
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
        k, col = np.nonzero(tiles >= lo)
        ft = ti[k]
        yield ft // nt, (ft % nt) * tile + col, tiles[k, col]


def _exact_dist(X: np.ndarray, prep: dict[str, Any], bi: np.ndarray, bj: np.ndarray, metric: str) -> np.ndarray:
    """float64 distances of the pairs (bi[k], bj[k]): 1 - a·b/(|a||b|) or |a - b|."""
    out = np.empty(bi.size, dtype=np.float64)
    step = _VERIFY_BATCH
    a = np.empty((min(step, bi.size), X.shape[1]), dtype=np.float64)
    b = np.empty_like(a)
    for s, e in filters.chunks(bi.size, step):
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


def _to_csr(n: int, ei: np.ndarray, ej: np.ndarray, r32: np.ndarray, eps: float) -> sparse.csr_matrix:
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
