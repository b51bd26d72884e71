"""app.services.tuning: Otsu on a 1-D sample, percentiles, brightness bounds, threshold evaluation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from app.core.config import Settings
from app.imaging.decode import decode_image
from app.services import tuning
from app.services.blur import laplacian_variance
from tests.helpers import PHOTO_NAMES, encode, gaussian_blur, motion_blur, photo


def brute_force_otsu(x: np.ndarray) -> tuple[float, float]:
    """Reference: try every split of the sorted sample with plain Python sums."""
    x = sorted(float(v) for v in x)
    n = len(x)
    mean = sum(x) / n
    total = sum((v - mean) ** 2 for v in x) / n
    best, best_t = -1.0, None
    for k in range(1, n):
        if x[k] == x[k - 1]:
            continue
        lo, hi = x[:k], x[k:]
        m0, m1 = sum(lo) / len(lo), sum(hi) / len(hi)
        between = (len(lo) / n) * (len(hi) / n) * (m1 - m0) ** 2
        if between > best + 1e-12:
            best, best_t = between, (x[k - 1] + x[k]) / 2
    return best_t, best / total


@pytest.mark.parametrize("seed", range(6))
def test_otsu_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    x = np.concatenate([rng.normal(0, 1 + seed % 3, 40 + seed * 7), rng.normal(6, 1.5, 25 + seed * 3),
                        rng.uniform(-3, 9, seed * 5)])
    res = tuning.otsu_threshold(x)
    ref_t, ref_eta = brute_force_otsu(x)
    assert res.threshold == pytest.approx(ref_t, abs=1e-9)
    assert res.separability == pytest.approx(ref_eta, rel=1e-9)
    assert res.n_low + res.n_high == x.size
    assert res.n_low == int((x < res.threshold).sum())
    # the threshold lies strictly between two sample values, so no value sits on it
    assert not np.any(x == res.threshold)
    # order does not matter
    assert tuning.otsu_threshold(rng.permutation(x)).threshold == res.threshold


def test_otsu_two_tight_groups_split_in_the_gap():
    res = tuning.otsu_threshold([1.0, 1.1, 0.9, 1.05, 10.0, 10.2, 9.9])
    assert 1.1 < res.threshold < 9.9
    assert res.threshold == pytest.approx((1.1 + 9.9) / 2)
    assert res.separability > 0.99
    assert (res.n_low, res.n_high) == (4, 3)
    assert res.mean_low == pytest.approx(np.mean([1.0, 1.1, 0.9, 1.05]))


def test_otsu_separability_is_low_for_a_single_group():
    x = np.random.default_rng(1).normal(0, 1, 2000)
    assert tuning.otsu_threshold(x).separability < 0.7  # a normal sample: η = 2/π ≈ 0.64
    two = np.concatenate([x, x + 12])
    assert tuning.otsu_threshold(two).separability > 0.95


def test_otsu_never_splits_ties_and_ignores_nan():
    res = tuning.otsu_threshold([2, 2, 2, 2, 5, float("nan"), float("inf")])
    assert res.threshold == 3.5
    assert (res.n_low, res.n_high) == (4, 1)


@pytest.mark.parametrize("bad", [[], [3.0], [4.0, 4.0, 4.0], [float("nan"), 1.0]])
def test_otsu_needs_two_distinct_values(bad):
    with pytest.raises(ValueError):
        tuning.otsu_threshold(bad)


def test_percentiles_are_numpys():
    x = np.random.default_rng(3).lognormal(4, 1.2, 500)
    p = tuning.percentiles(x)
    assert list(p) == [float(q) for q in tuning.DEFAULT_PERCENTILES]
    for q, v in p.items():
        assert v == pytest.approx(float(np.percentile(x, q)))
    assert list(p.values()) == sorted(p.values())
    assert tuning.percentiles([]) == {}
    assert tuning.percentiles([1, 2, 3], (50,)) == {50.0: 2.0}


def test_brightness_bounds():
    x = np.linspace(0, 255, 1001)
    lo, hi = tuning.brightness_bounds(x, 2, 98)
    assert lo == pytest.approx(255 * 0.02) and hi == pytest.approx(255 * 0.98)
    lo, hi = tuning.brightness_bounds([120.0] * 10)
    assert lo < hi and hi - lo == pytest.approx(1.0)
    lo, hi = tuning.brightness_bounds([255.0] * 3)
    assert (lo, hi) == (254.0, 255.0)
    # the pair is always accepted by Settings (BRIGHT_MAX > BRIGHT_MIN)
    Settings(_env_file=None, bright_min=lo, bright_max=hi)
    with pytest.raises(ValueError):
        tuning.brightness_bounds([1, 2], 60, 40)
    with pytest.raises(ValueError):
        tuning.brightness_bounds([])


def test_suggest_blur_threshold_is_otsu_on_log10():
    v = [5, 7, 9, 12, 400, 800, 1500, 2500]
    s = tuning.suggest_blur_threshold(v)
    assert s.log10_threshold == pytest.approx(tuning.otsu_threshold(np.log10(v)).threshold)
    assert s.threshold == pytest.approx(10 ** s.log10_threshold)
    assert 12 < s.threshold < 400
    assert (s.n_below, s.n_above) == (4, 4)
    # a zero variance (flat image) is floored, not -inf
    assert math.isfinite(tuning.suggest_blur_threshold([0.0, 0.0, 500.0]).threshold)


def test_evaluate_and_best_threshold():
    classes = {"sharp": [300, 500, 80], "blur_defocus": [3, 10, 20], "blur_motion": [40, 120]}
    ev = tuning.evaluate_threshold(classes, 100)
    assert ev.counts == {"sharp": 3, "blur_defocus": 3, "blur_motion": 2}
    assert ev.correct == {"sharp": 2, "blur_defocus": 3, "blur_motion": 1}
    assert ev.accuracy == pytest.approx(6 / 8)
    assert ev.recall["sharp"] == pytest.approx(2 / 3)
    assert ev.balanced_accuracy == pytest.approx((2 / 3 + 1 + 0.5) / 3)
    best = tuning.best_threshold(classes)
    assert best.accuracy == pytest.approx(7 / 8)  # 80 (sharp) < 120 (motion): one of them is always wrong
    sep = tuning.best_threshold({"sharp": [300, 500], "blur": [3, 10]})
    assert sep.accuracy == 1.0 and 10 < sep.threshold < 300
    assert sep.threshold == pytest.approx(math.sqrt(10 * 300))


def test_histogram_bins_cover_the_sample():
    bins = tuning.histogram_bins([0.3, 1.2, 3.1], n=20)
    assert len(bins) == 21 and bins[0] <= 0.3 and bins[-1] >= 3.1
    assert len(tuning.histogram_bins([2.0, 2.0])) == 41


def test_real_photos_and_their_blurred_copies_are_split_by_the_suggestion():
    """Measured with the service's own code: sharp photos vs defocused and motion-blurred copies."""
    s = Settings(_env_file=None)

    def lv(rgb):
        img = decode_image(encode(rgb), max_pixels=s.max_image_pixels, min_dim=s.analysis_max_dim, gray=True)
        return laplacian_variance(img.gray_max(s.analysis_max_dim))

    sharp = [lv(photo(n)) for n in PHOTO_NAMES]
    blurred = [lv(gaussian_blur(photo(n), 3)) for n in PHOTO_NAMES] + [lv(motion_blur(photo(n), 25)) for n in PHOTO_NAMES]
    sug = tuning.suggest_blur_threshold(sharp + blurred)
    assert max(blurred) < sug.threshold < min(sharp)
    ev = tuning.evaluate_threshold({"sharp": sharp, "blur": blurred}, sug.threshold)
    assert ev.accuracy == 1.0
