"""Input checks for the neighbour engine: every bad input is a ValueError with a reason.

Why a module of its own: the API turns these ValueErrors into 422 responses, so
their wording is part of the contract, and both entry points (`dbscan` and
`radius_graph`, and the /v1/cluster endpoint before them) must apply exactly
the same checks. They run in row chunks (temporaries stay ~8 MB) so a 100k × 512
request is checked without a second copy of it.

`row_norms` lives here because the zero-vector check must use the very formula
the cosine filters later divide by (sklearn's `row_norms`): a vector that passes
here can always be normalised there.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np

Metric = Literal["cosine", "euclidean"]
METRICS: tuple[str, ...] = ("cosine", "euclidean")

#: Largest absolute coordinate accepted (squared distances must not overflow).
MAX_ABS_VALUE = 1e100


def row_norms(X: np.ndarray) -> np.ndarray:
    # The formula of sklearn.utils.extmath.row_norms.
    return np.sqrt(np.einsum("ij,ij->i", X, X))


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
            zero = ~(row_norms(part) > 0)
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
