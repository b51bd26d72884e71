"""Nearest-neighbour engine: which vectors are within eps of each other, exactly, at scale.

Not an image analysis: vectors in (CLIP or any embedding), neighbour sets and
clusters out. Used by /v1/cluster, by photo-set grouping and by the benchmarks.

    validate.py    input checks (ValueError → 422) and the row-norm formula
    kernels.py     int8_matmul: the one wrapper of torch's private int8 GEMM + its self-test
    filters.py     the per-engine product with a proven error bound (int8 / float32 cosine, euclidean)
    radius.py      the blockwise scan → exact sparse radius graph (float64 re-check of the band)
    dbscan.py      scikit-learn's DBSCAN on that graph; labels renumbered by first member
    union_find.py  connected components of transitive links
"""

from app.neighbors.dbscan import ClusterResult, dbscan
from app.neighbors.kernels import Int8MatmulUnavailable, int8_available, int8_matmul
from app.neighbors.radius import DEFAULT_BLOCK_COLS, DEFAULT_BLOCK_ROWS, DEFAULT_MAX_PAIRS, Engine, radius_graph
from app.neighbors.union_find import UnionFind
from app.neighbors.validate import (
    MAX_ABS_VALUE,
    METRICS,
    Metric,
    as_matrix,
    validate_cluster_input,
    validate_ids,
    validate_metric,
    validate_params,
)

__all__ = [
    "DEFAULT_BLOCK_COLS", "DEFAULT_BLOCK_ROWS", "DEFAULT_MAX_PAIRS", "MAX_ABS_VALUE", "METRICS",
    "ClusterResult", "Engine", "Int8MatmulUnavailable", "Metric", "UnionFind",
    "as_matrix", "dbscan", "int8_available", "int8_matmul", "radius_graph",
    "validate_cluster_input", "validate_ids", "validate_metric", "validate_params",
]
