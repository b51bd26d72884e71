"""Benchmark of app.neighbors.dbscan on synthetic CLIP-like embeddings.

    python scripts/bench_cluster.py                 # 10k and 100k × 512, cosine, eps 0.35
    python scripts/bench_cluster.py 20000 --dim 768 --no-baseline

Each size runs in a fresh subprocess so that the peak RSS reported
(resource.getrusage ru_maxrss) belongs to that run alone. Before the clock starts
the data are generated and one warm-up call on 512 vectors imports torch/sklearn
(as in a running service); "base MB" is the RSS at that point (interpreter,
libraries, the float64 vectors), so peak − base is what the clustering added.
The baseline is plain ``sklearn.cluster.DBSCAN(metric="cosine", algorithm="brute")``
(N ≤ 10k only: it materialises big distance blocks), and its labels are compared
with ours (identical up to renumbering).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

BASELINE_MAX_N = 10_000


def make_embeddings(
    n: int,
    dim: int = 512,
    *,
    kind: str = "clustered",
    frac_isolated: float = 0.3,
    mean_cluster_size: float = 20.0,
    seed: int = 0,
) -> np.ndarray:
    """Synthetic unit embeddings (float32, like a CLIP model's output).

    kind="clustered": (1 - frac_isolated)·n points in bursts around n/mean_size
    centres drawn uniformly on the sphere (thousands of centres at 100k). Each
    burst has its own spread σ ∈ [0.35, 0.8] (noise norm relative to the centre),
    so pairwise cosine distances inside a burst are ≈ σ²/(1+σ²) ∈ [0.11, 0.39]:
    tight bursts are fully linked at eps=0.35, loose ones only partly — many pairs
    lie close to eps on both sides. The rest are isolated random directions
    (cosine distance ≈ 1 to everything). kind="random": all points isolated.
    Rows are shuffled.
    """
    rng = np.random.default_rng(seed)
    n_iso = n if kind == "random" else round(n * frac_isolated)
    n_cl = n - n_iso
    parts = []
    if n_cl:
        n_centres = max(1, round(n_cl / mean_cluster_size))
        centres = rng.standard_normal((n_centres, dim)).astype(np.float32)
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)
        # burst sizes: geometric-ish (many small bursts, a few big ones)
        member = rng.choice(n_centres, size=n_cl, p=_zipf_weights(n_centres, rng))
        sigma = rng.uniform(0.35, 0.8, n_centres).astype(np.float32)[member]
        pts = centres[member] + (sigma / np.sqrt(dim))[:, None] * rng.standard_normal((n_cl, dim), dtype=np.float32)
        parts.append(pts)
    if n_iso:
        parts.append(rng.standard_normal((n_iso, dim), dtype=np.float32))
    X = np.concatenate(parts)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    return X[rng.permutation(n)]


def _zipf_weights(k: int, rng: np.random.Generator) -> np.ndarray:
    w = 1.0 / (1.0 + rng.permutation(k)) ** 0.5
    return w / w.sum()


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Labels equal up to renumbering of clusters (noise -1 must match exactly)."""
    a = np.asarray(a)
    b = np.asarray(b)
    if a.shape != b.shape or not np.array_equal(a < 0, b < 0):
        return False
    m = a >= 0
    pairs = np.unique(np.stack([a[m], b[m]], axis=1), axis=0)
    return len(np.unique(pairs[:, 0])) == len(pairs) == len(np.unique(pairs[:, 1]))


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _one(n: int, dim: int, kind: str, eps: float, min_samples: int, which: str, repeat: int,
         engine: str = "auto") -> dict:
    """Run in a child process: generate, time `which` ("loupe" or "sklearn"), report."""
    X = make_embeddings(n, dim, kind=kind).astype(np.float64)
    # warm-up on a small set (imports torch/sklearn, oneDNN kernels), as in a running service
    W = make_embeddings(512, dim, kind=kind, seed=1).astype(np.float64)
    if which == "loupe":
        from app.neighbors import dbscan

        dbscan(W, eps, min_samples, "cosine", engine=engine)
    else:
        from sklearn.cluster import DBSCAN

        DBSCAN(eps=eps, min_samples=min_samples, metric="cosine", algorithm="brute").fit(W)
    rss_data = _peak_rss_mb()
    best = float("inf")
    out: dict = {}
    for _ in range(repeat):
        t0 = time.perf_counter()
        if which == "loupe":
            r = dbscan(X, eps, min_samples, "cosine", engine=engine)
            labels = r.labels
            out = {"clusters": r.n_clusters, "noise": r.n_noise, "pairs": r.n_pairs,
                   "engine": r.params["engine"], "band": r.stats.get("n_band"),
                   "t_prep": r.stats["t_prep_s"], "t_scan": r.stats["t_scan_s"], "t_graph": r.stats["t_graph_s"]}
        else:
            labels = DBSCAN(eps=eps, min_samples=min_samples, metric="cosine", algorithm="brute").fit(X).labels_
            out = {"clusters": int(labels.max() + 1), "noise": int((labels < 0).sum())}
        best = min(best, time.perf_counter() - t0)
    np.save(os.environ["BENCH_LABELS"], labels)
    return {"n": n, "dim": dim, "kind": kind, "which": which, "seconds": best,
            "peak_rss_mb": _peak_rss_mb(), "data_rss_mb": rss_data, **out}


def _child(n: int, dim: int, kind: str, eps: float, min_samples: int, which: str, repeat: int,
           labels_path: str, engine: str = "auto") -> dict:
    env = dict(os.environ, BENCH_LABELS=labels_path, PYTHONPATH=str(ROOT))
    code = ("import json,sys; from scripts.bench_cluster import _one; "
            f"print(json.dumps(_one({n},{dim},{kind!r},{eps},{min_samples},{which!r},{repeat},{engine!r})))")
    res = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, env=env,
                         cwd=ROOT)
    if res.returncode != 0:
        raise RuntimeError(res.stderr[-3000:])
    return json.loads(res.stdout.strip().splitlines()[-1])


def run(sizes=(10_000, 100_000), dim: int = 512, *, kind: str = "clustered", eps: float = 0.35,
        min_samples: int = 2, baseline: bool = True, repeat: int = 1, engine: str = "auto") -> list[dict]:
    """One row per size: Loupe's dbscan and, for N ≤ 10k, sklearn brute force + the speed ratio."""
    import tempfile

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            ours_path = os.path.join(tmp, f"ours{n}.npy")
            row = _child(n, dim, kind, eps, min_samples, "loupe", repeat, ours_path, engine)
            row.pop("which")
            if baseline and n <= BASELINE_MAX_N:
                ref_path = os.path.join(tmp, f"ref{n}.npy")
                ref = _child(n, dim, kind, eps, min_samples, "sklearn", repeat, ref_path)
                row["baseline_seconds"] = ref["seconds"]
                row["baseline_peak_rss_mb"] = ref["peak_rss_mb"]
                row["speedup"] = ref["seconds"] / row["seconds"]
                row["labels_equal"] = same_partition(np.load(ours_path), np.load(ref_path))
            rows.append(row)
    return rows


def _table(rows: list[dict]) -> str:
    head = (f"{'N':>8} {'dim':>4} {'kind':>9} {'engine':>6} {'seconds':>8} {'peakRSS MB':>10} {'base MB':>8} "
            f"{'clusters':>8} {'noise':>7} {'pairs':>9} {'band':>8} | {'sklearn s':>9} {'RSS MB':>7} {'speedup':>7} {'equal':>5}")
    lines = [head, "-" * len(head)]
    for r in rows:
        base = (f"{r['baseline_seconds']:9.2f} {r['baseline_peak_rss_mb']:7.0f} {r['speedup']:6.1f}x "
                f"{r['labels_equal']!s:>5}" if "baseline_seconds" in r else f"{'-':>9} {'-':>7} {'-':>7} {'-':>5}")
        lines.append(f"{r['n']:>8} {r['dim']:>4} {r['kind']:>9} {r['engine']:>6} {r['seconds']:8.2f} "
                     f"{r['peak_rss_mb']:10.0f} {r['data_rss_mb']:8.0f} {r['clusters']:>8} {r['noise']:>7} "
                     f"{r['pairs']:>9} {r['band']:>8} | {base}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sizes", nargs="*", type=int, default=[10_000, 100_000])
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--kind", choices=["clustered", "random"], default="clustered")
    ap.add_argument("--eps", type=float, default=0.35)
    ap.add_argument("--min-samples", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=1, help="best of R runs (same process)")
    ap.add_argument("--no-baseline", action="store_true")
    ap.add_argument("--engine", choices=["auto", "int8", "float32"], default="auto")
    a = ap.parse_args(argv)
    rows = run(tuple(a.sizes), a.dim, kind=a.kind, eps=a.eps, min_samples=a.min_samples,
               baseline=not a.no_baseline, repeat=a.repeat, engine=a.engine)
    print(f"cosine DBSCAN, eps={a.eps}, min_samples={a.min_samples}, {os.cpu_count()} CPUs")
    print(_table(rows))


if __name__ == "__main__":
    main()
