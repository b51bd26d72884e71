"""Pure helpers for tuning thresholds from a sample of measurements (scripts/tune_blur.py).

Nothing here reads images: the tuner measures with the service's own code
(decode → grey at ANALYSIS_MAX_DIM → Laplacian variance / exposure stats) and
hands the numbers to these functions.

- `otsu_threshold`: Otsu's method on a 1-D sample, exact (every split point of
  the sorted sample is tried; no histogram binning), returning the midpoint
  between the two values around the best split and the separability η.
- `suggest_blur_threshold`: Otsu on log10 of the Laplacian variances (blur is
  multiplicative: a defocused copy has its variance divided by a factor, so the
  two populations are closer to normal, and of similar spread, on a log scale).
- `percentiles`, `brightness_bounds`: percentile summaries and BRIGHT_MIN /
  BRIGHT_MAX suggested as low / high percentiles of the mean brightness.
- `evaluate_threshold`, `best_threshold`: accuracy and per-class recall of a
  threshold on labelled samples (blurry = value < threshold, as in the service).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

DEFAULT_PERCENTILES: tuple[float, ...] = (1, 5, 10, 25, 50, 75, 90, 95, 99)
#: log10 floor for a zero variance (a flat image): 1e-3 is far below any real photo
LOG_FLOOR = 1e-3


@dataclass(frozen=True)
class OtsuResult:
    threshold: float  # midpoint between the last value of the low class and the first of the high class
    separability: float  # η = between-class variance / total variance, 0..1 (1 = two perfectly tight clusters)
    n_low: int
    n_high: int
    mean_low: float
    mean_high: float


def _clean(values: Iterable[float]) -> np.ndarray:
    arr = np.asarray(list(values), dtype=np.float64).ravel()
    return arr[np.isfinite(arr)]


def otsu_threshold(values: Iterable[float]) -> OtsuResult:
    """Otsu's threshold of a 1-D sample: the split that maximises the between-class variance.

    Exact on the sample (no binning): for every split of the sorted values into a
    low part and a high part, w0·w1·(μ1 − μ0)² is computed with cumulative sums,
    and the best split's threshold is the midpoint of the two values around it.
    Ties in the sample are never split. Needs at least two distinct finite values.
    """
    x = np.sort(_clean(values))
    n = x.size
    if n < 2 or x[0] == x[-1]:
        raise ValueError("Otsu's method needs at least two distinct finite values")
    csum = np.cumsum(x)
    k = np.arange(1, n)  # size of the low class
    w0 = k / n
    w1 = 1.0 - w0
    mu0 = csum[:-1] / k
    mu1 = (csum[-1] - csum[:-1]) / (n - k)
    between = w0 * w1 * (mu1 - mu0) ** 2
    valid = x[1:] > x[:-1]  # a split between equal values is not a split
    between = np.where(valid, between, -1.0)
    i = int(np.argmax(between))  # first maximum: deterministic
    total = float(x.var())
    return OtsuResult(
        threshold=float((x[i] + x[i + 1]) / 2.0),
        separability=float(between[i] / total) if total > 0 else 0.0,
        n_low=i + 1, n_high=n - i - 1, mean_low=float(mu0[i]), mean_high=float(mu1[i]),
    )


def log10_safe(values: Iterable[float]) -> np.ndarray:
    return np.log10(np.maximum(_clean(values), LOG_FLOOR))


@dataclass(frozen=True)
class BlurSuggestion:
    threshold: float  # BLUR_THRESHOLD (Laplacian variance units)
    log10_threshold: float
    separability: float
    n_below: int  # images that would be blurry at this threshold
    n_above: int


def suggest_blur_threshold(variances: Iterable[float]) -> BlurSuggestion:
    """BLUR_THRESHOLD by Otsu's method on log10 of the Laplacian variances."""
    logs = log10_safe(variances)
    res = otsu_threshold(logs)
    thr = 10.0 ** res.threshold
    return BlurSuggestion(threshold=float(thr), log10_threshold=res.threshold, separability=res.separability,
                          n_below=int((logs < res.threshold).sum()), n_above=int((logs >= res.threshold).sum()))


def percentiles(values: Iterable[float], qs: Sequence[float] = DEFAULT_PERCENTILES) -> dict[float, float]:
    """{q: value} with linear interpolation (numpy's default); empty sample → {}."""
    arr = _clean(values)
    if arr.size == 0:
        return {}
    return {float(q): float(v) for q, v in zip(qs, np.percentile(arr, list(qs)))}


def brightness_bounds(means: Iterable[float], low_pct: float = 2.0, high_pct: float = 98.0) -> tuple[float, float]:
    """(BRIGHT_MIN, BRIGHT_MAX) suggested as the `low_pct`-th and `high_pct`-th percentiles of the mean
    brightness: on a collection that is mostly well exposed, about low_pct % of it is then flagged as
    underexposed and (100 − high_pct) % as overexposed. Clamped to 0..255 and kept in order."""
    if not 0 <= low_pct < high_pct <= 100:
        raise ValueError("need 0 <= low_pct < high_pct <= 100")
    arr = _clean(means)
    if arr.size == 0:
        raise ValueError("no brightness values")
    lo, hi = (float(v) for v in np.percentile(arr, [low_pct, high_pct]))
    lo, hi = max(0.0, min(255.0, lo)), max(0.0, min(255.0, hi))
    if hi <= lo:  # a constant sample: keep BRIGHT_MAX > BRIGHT_MIN as Settings requires
        hi = min(255.0, lo + 1.0)
        lo = hi - 1.0
    return lo, hi


@dataclass(frozen=True)
class Evaluation:
    threshold: float
    accuracy: float  # share of all labelled images classified right
    balanced_accuracy: float  # mean of the per-class recalls
    recall: dict[str, float]  # per class: share of its images classified right
    counts: dict[str, int]
    correct: dict[str, int]


def evaluate_threshold(classes: Mapping[str, Iterable[float]], threshold: float,
                       sharp_label: str = "sharp") -> Evaluation:
    """Accuracy of `value < threshold ⇒ blurry` on labelled samples.

    `classes` maps a label to its values; `sharp_label` is the class that should
    be at or above the threshold, every other class should be below it.
    """
    counts: dict[str, int] = {}
    correct: dict[str, int] = {}
    for label, vals in classes.items():
        arr = _clean(vals)
        counts[label] = int(arr.size)
        ok = arr >= threshold if label == sharp_label else arr < threshold
        correct[label] = int(ok.sum())
    total = sum(counts.values())
    if total == 0:
        raise ValueError("no labelled values")
    recall = {k: (correct[k] / counts[k]) for k in counts if counts[k]}
    return Evaluation(threshold=float(threshold), accuracy=sum(correct.values()) / total,
                      balanced_accuracy=float(np.mean(list(recall.values()))), recall=recall,
                      counts=counts, correct=correct)


def best_threshold(classes: Mapping[str, Iterable[float]], sharp_label: str = "sharp") -> Evaluation:
    """The threshold with the highest accuracy on these labels (ties: the highest balanced accuracy, then
    the lowest threshold), to compare with the unsupervised suggestion. Candidates are the geometric
    midpoints between consecutive distinct values, plus one below and one above them all."""
    values = np.unique(np.concatenate([_clean(v) for v in classes.values()] or [np.empty(0)]))
    if values.size == 0:
        raise ValueError("no labelled values")
    pos = np.maximum(values, LOG_FLOOR)
    mids = np.sqrt(pos[:-1] * pos[1:]) if values.size > 1 else np.empty(0)
    candidates = [float(values[0]) * 0.5 if values[0] > 0 else -1.0, *mids.tolist(), float(values[-1]) * 2 + 1]
    best: Evaluation | None = None
    for t in candidates:
        ev = evaluate_threshold(classes, t, sharp_label)
        if best is None or (ev.accuracy, ev.balanced_accuracy) > (best.accuracy, best.balanced_accuracy):
            best = ev
    assert best is not None
    return best


def histogram_bins(log_values: Sequence[float], n: int = 40) -> np.ndarray:
    """Shared bin edges for per-class histograms of log10 values."""
    arr = _clean(log_values)
    lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 1.0)
    if hi - lo < 1e-9:
        lo, hi = lo - 0.5, hi + 0.5
    pad = (hi - lo) * 0.05
    return np.linspace(math.floor((lo - pad) * 10) / 10, math.ceil((hi + pad) * 10) / 10, n + 1)
