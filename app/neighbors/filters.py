"""The filters of the radius scan: a cheap product of every pair, with a proven error bound.

Each function turns the validated float64 vectors into one matrix whose row·row
products estimate the pair's similarity, together with a bound on that
estimate's error. The scan (radius.py) keeps a pair for sure when
``estimate - bound`` already clears the threshold, drops it when
``estimate + bound`` cannot, and re-checks only the band in between in float64 —
so a filter decides speed, never membership.

Cosine, int8 (the default)
--------------------------
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
   The products themselves are exact (kernels.int8_matmul).

Cosine, float32: unit vectors in float32; the bound is the float32 dot-product
error γ_d plus input rounding. Euclidean, float32: augmented vectors
(``[2x, -|x|², -1]·[x, 1, |x|²] = -|x-y|²``, after centring and an exact
power-of-two rescaling) with a rigorous float32 error bound.

Each returns a dict: "mat" (and "mat_cols" when columns differ), "lo" (entries
below it are certainly no pair), "est"/"pair_margin"/"thr"/"to_dist" (the
per-pair decision), "margin" (the largest bound, reported in the stats) and,
for cosine, "norms" for the float64 re-check. Rows ``n..npad`` are zero padding
that never pairs.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from app.neighbors.validate import row_norms

_ROT_BLOCK = 256  # size of the diagonal blocks of the random rotation
_ROT_SEED = 0x10_09E


def chunks(n: int, size: int):
    for s in range(0, n, size):
        yield s, min(n, s + size)


def row_chunk(d: int, nbytes: int = 8 << 20) -> int:
    """Rows per chunk so that a float64 (rows, d) temporary is about `nbytes`."""
    return max(1, nbytes // (8 * d))


def rotation_blocks(d: int) -> list[tuple[int, int, np.ndarray]]:
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


def rotate_unit(X: np.ndarray, norms: np.ndarray, blocks) -> np.ndarray:
    """float32 rotated unit rows: (X / |X|) · R."""
    A = (X / norms[:, None]).astype(np.float32)
    out = np.empty_like(A)
    for s, e, h in blocks:
        np.matmul(A[:, s:e], h, out=out[:, s:e])
    return out


def cosine_int8(X: np.ndarray, eps: float, npad: int) -> dict[str, Any]:
    import torch

    n, d = X.shape
    dp = -(-d // 8) * 8  # pad the dimension to a multiple of 8 (zeros change no dot product)
    norms = row_norms(X)
    blocks = rotation_blocks(d)
    chunk = row_chunk(d)
    # One global scale: 127 / the largest rotated coordinate of a fixed sample of rows.
    # Rarer, larger coordinates are clipped; that only enlarges those vectors' measured
    # error e (so their pairs' margins), never the correctness — and saves a pass.
    sample = np.sort(np.random.default_rng(0).choice(n, 8192, replace=False)) if n > 8192 else np.arange(n)
    amax = float(np.abs(rotate_unit(X[sample], norms[sample], blocks)).max())
    scale = np.float32(127.0 / max(amax, 1e-30))
    inv = np.float32(1.0) / scale
    # quantise, and measure each vector's quantisation error e = |u - q/s|
    q = np.zeros((npad, dp), dtype=np.int8)
    err = np.empty(n, dtype=np.float64)
    for s, e in chunks(n, chunk):
        U = rotate_unit(X[s:e], norms[s:e], blocks)
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


def cosine_float32(X: np.ndarray, eps: float, npad: int) -> dict[str, Any]:
    import torch

    n, d = X.shape
    norms = row_norms(X)
    A = np.zeros((npad, d), dtype=np.float32)
    for s, e in chunks(n, row_chunk(d)):
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


def euclidean_float32(X: np.ndarray, eps: float, npad: int) -> dict[str, Any]:
    import torch

    n, d = X.shape
    chunk = row_chunk(d)
    mean = X.mean(axis=0)
    nrm2 = np.empty(n)
    for s, e in chunks(n, chunk):
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
    for s, e in chunks(n, chunk):
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
