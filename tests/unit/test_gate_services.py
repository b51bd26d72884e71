"""Blur and exposure measurements on real photos and degraded copies."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from app.imaging.decode import decode_image
from app.services import blur
from app.services.blur import is_blurry, laplacian_variance, sharpness_score
from app.services.exposure import exposure_score, exposure_stats, is_overexposed, is_underexposed
from tests.helpers import PHOTO_NAMES, clock_motion, encode, exposure, gaussian_blur, motion_blur, photo, upscale

MAXDIM = 1024


def lapvar(rgb: np.ndarray) -> float:
    return laplacian_variance(decode_image(encode(rgb, "PNG"), max_pixels=10**9).gray_max(MAXDIM))


@pytest.mark.parametrize("name", PHOTO_NAMES)
def test_more_blur_means_lower_variance(name):
    values = [lapvar(gaussian_blur(photo(name), s)) if s else lapvar(photo(name)) for s in (0, 1, 2, 4)]
    assert all(a > b for a, b in zip(values, values[1:])), values
    assert values[-1] < values[0] / 10


@pytest.mark.parametrize("name", PHOTO_NAMES)
def test_sharp_photos_pass_and_blurred_fail_default_threshold(name):
    assert not is_blurry(lapvar(photo(name)), 100.0)
    assert is_blurry(lapvar(gaussian_blur(photo(name), 4)), 100.0)
    assert is_blurry(lapvar(motion_blur(photo(name), 25)), 100.0)


def test_real_motion_blur_photo_scores_lower_than_sharp_photos():
    clock = clock_motion()
    assert lapvar(clock) < min(lapvar(photo(n)) for n in PHOTO_NAMES)


def test_score_does_not_depend_on_upload_size():
    """A 3000-px copy scores like the photo itself, because both are measured at ANALYSIS_MAX_DIM."""
    base = upscale(photo("coffee"), 1024)
    big = upscale(photo("coffee"), 3000)
    a, b = lapvar(base), lapvar(big)
    assert abs(a - b) / a < 0.25, (a, b)


def test_sharpness_score_is_monotone_and_saturates():
    t = 100.0
    xs = [1, 10, 25, 50, 100, 200, 400, 1000, 10_000]
    ys = [sharpness_score(x, t) for x in xs]
    assert ys == sorted(ys)
    assert ys[0] == 0.0 and abs(sharpness_score(t, t) - 0.5) < 1e-9 and ys[-1] == 1.0


def test_exposure_flags_dark_and_bright_copies():
    rgb = photo("chelsea")
    ok = exposure_stats(decode_image(encode(rgb), max_pixels=10**9).gray_max(MAXDIM))
    dark = exposure_stats(decode_image(encode(exposure(rgb, 0.25)), max_pixels=10**9).gray_max(MAXDIM))
    bright = exposure_stats(decode_image(encode(exposure(rgb, 2.6)), max_pixels=10**9).gray_max(MAXDIM))
    assert not is_underexposed(ok, 50, 0.3) and not is_overexposed(ok, 205, 0.15)
    assert is_underexposed(dark, 50, 0.3) and not is_overexposed(dark, 205, 0.15)
    assert is_overexposed(bright, 205, 0.15) and not is_underexposed(bright, 50, 0.3)
    assert bright.highlight_clip_fraction > ok.highlight_clip_fraction
    assert dark.mean_brightness < ok.mean_brightness < bright.mean_brightness


@pytest.mark.parametrize("name", PHOTO_NAMES)
def test_exposure_score_falls_with_exposure_error(name):
    rgb = photo(name)

    def s(gain):
        st = exposure_stats(decode_image(encode(exposure(rgb, gain)), max_pixels=10**9).gray_max(MAXDIM))
        return exposure_score(st, 50, 205, 0.3, 0.15)

    darker = [s(g) for g in (1.0, 0.6, 0.35, 0.2, 0.1)]
    assert all(a >= b - 1e-9 for a, b in zip(darker, darker[1:])), darker
    assert darker[-1] < 0.3
    if name == "rocket":
        # rocket is a dusk shot with crushed shadows: brightening it first *corrects* its
        # exposure, so only the darkening direction is an exposure error for it
        assert darker[0] < 0.9
        return
    brighter = [s(g) for g in (1.0, 1.6, 2.2, 3.0, 4.0)]
    assert all(a >= b - 1e-9 for a, b in zip(brighter, brighter[1:])), brighter
    assert brighter[-1] < 0.3


def test_histogram_stats_match_numpy():
    gray = decode_image(encode(photo("rocket")), max_pixels=10**9).gray_max(MAXDIM)
    st = exposure_stats(gray)
    assert abs(st.mean_brightness - gray.mean()) < 1e-6
    assert abs(st.contrast - gray.std()) < 1e-6
    small = cv2.resize(gray, (256, round(gray.shape[0] * 256 / gray.shape[1])), interpolation=cv2.INTER_AREA)
    assert abs(st.shadow_clip_fraction - (small <= 8).mean()) < 1e-9
    assert abs(st.highlight_clip_fraction - (small >= 247).mean()) < 1e-9


@pytest.mark.parametrize("name", PHOTO_NAMES)
def test_noise_does_not_unclip_shadows(name):
    """Noise scatters crushed pixels above the clip level; regions stay crushed."""
    from tests.helpers import add_noise

    def clip(rgb):
        return exposure_stats(decode_image(encode(rgb, "PNG"), max_pixels=10**9).gray_max(MAXDIM)).shadow_clip_fraction

    base = clip(photo(name))
    for sigma in (3, 6, 10):
        assert abs(clip(add_noise(photo(name), sigma)) - base) <= 0.02 + 0.1 * base, (name, sigma)


SOFT = ("astronaut", "coffee", "chelsea", "rocket", "motorcycle_left")


def test_noise_sigma_reads_added_noise_at_the_analysis_scale():
    """Gaussian noise of std 2–50 added to soft real photos at the analysis size: noise_sigma within ±20 %
    for at least 95 % of (photo, std) pairs (texture of crisp photos reads as noise at std 2; clipping at 0
    and 255 really removes noise at std 50, hence soft, well-exposed photos)."""
    rng = np.random.default_rng(3)
    errors = []
    for name in SOFT:
        g0 = cv2.GaussianBlur(cv2.cvtColor(photo(name), cv2.COLOR_RGB2GRAY), (0, 0), 1.5)
        assert blur.noise_sigma(g0) < 1.0
        for sigma in (2, 5, 10, 25, 50):
            g = np.clip(g0 + rng.normal(0, sigma, g0.shape), 0, 255).round().astype(np.uint8)
            errors.append(blur.noise_sigma(g) / sigma - 1)
    errors = np.abs(np.array(errors))
    assert (errors <= 0.2).mean() >= 0.95, errors.round(2)


def test_grain_is_not_detail_on_a_large_soft_photo():
    """A soft 3000-px photo with noise added at full size (then JPEG'd, decoded reduced and resized to
    ANALYSIS_MAX_DIM, where the noise is no longer white): the Laplacian's own noise part is taken out, so
    the detail the score uses stays where the clean photo's is (it used to rise with the noise)."""
    rng = np.random.default_rng(4)
    for name in ("astronaut", "coffee", "chelsea"):
        big = cv2.GaussianBlur(upscale(photo(name), 3000), (0, 0), 2)
        details = []
        for sigma in (0, 10, 25, 50):
            noisy = np.clip(big + rng.normal(0, sigma, big.shape), 0, 255).astype(np.uint8)
            g = decode_image(encode(noisy, quality=95), max_pixels=10**8, min_dim=1024, gray=True).gray_max(1024)
            var = blur.laplacian_variance(g)
            details.append(blur.noise_compensated_variance(var, blur.laplacian_noise_variance(g)))
            if sigma:
                assert var > 2 * details[0]  # the raw variance does rise with the grain
        assert max(details[1:]) <= max(2.0 * details[0], details[0] + 40), (name, details)
        assert blur.sharpness_score(max(details[1:]), 100) <= blur.sharpness_score(details[0], 100) + 0.25


def test_grain_never_buys_detail_on_a_soft_photo_at_native_scale():
    """On a soft photo at its own size, noise of std 5–25 makes the Laplacian's variance a small difference
    of two large numbers (918 − 879 for motorcycle at std 10): the noise share is taken at the top of what
    the integer-valued median allows, so the detail left is never more than the clean photo's."""
    rng = np.random.default_rng(5)
    for name in SOFT:
        g0 = cv2.GaussianBlur(cv2.cvtColor(photo(name), cv2.COLOR_RGB2GRAY), (0, 0), 1.5)
        clean = blur.noise_compensated_variance(blur.laplacian_variance(g0), blur.laplacian_noise_variance(g0))
        for sigma in (5, 10, 25):
            g = np.clip(g0 + rng.normal(0, sigma, g0.shape), 0, 255).round().astype(np.uint8)
            noisy = blur.noise_compensated_variance(blur.laplacian_variance(g), blur.laplacian_noise_variance(g))
            assert noisy <= max(clean, 25.0), (name, sigma, clean, noisy)  # 25 = threshold/4: sharpness 0


def test_noise_allowance_runs_from_soft_to_sharp():
    """The σ that still scores as clean: 0.5 without detail, 2 for a sharp photo, monotone between; the
    noise term and the BRISQUE cap use it, and BRISQUE never counts for more than the noise term squared."""
    from app.services import score

    levels = [score.noise_allowance(d, 100.0) for d in (0.0, 25.0, 50.0, 100.0, 200.0, 400.0, 4000.0)]
    assert levels[0] == levels[1] == 0.5 and levels[-1] == levels[-2] == 2.0
    assert all(a < b for a, b in zip(levels[1:-2], levels[2:-1]))
    assert score.noise_to_unit(1.5, 2.0) == 1.0 and score.noise_to_unit(1.5, 0.5) < 0.7
    for sigma in (1.0, 3.0, 6.0, 12.0, 30.0):
        n = score.noise_to_unit(sigma, 0.5)
        assert score.brisque_component(10.0, sigma, 0.5) == pytest.approx(min(1.0, n * n))
    assert score.brisque_component(10.0, 0.4, 0.5) == 1.0  # a clean image keeps BRISQUE's verdict


def test_pixel_doubling_is_not_jpeg_blocking():
    """skimage's moon is enlarged 2x by repeating pixels: steps at every other column. That is not an 8x8
    grid (it read as a ratio of millions); a real JPEG grid on a crisp photo still reads as blocking."""
    from app.services.compression import blockiness

    from skimage import data

    moon = data.moon()
    assert blockiness(moon).ratio < 1.15
    g = cv2.cvtColor(photo("astronaut"), cv2.COLOR_RGB2GRAY)
    low = decode_image(encode(photo("astronaut"), quality=15), max_pixels=10**8, gray=True).gray_max(1024)
    assert blockiness(g).ratio < 1.15 and blockiness(low).ratio > 1.3
