"""Natural-scene statistics shared by BRISQUE and NIQE: the local window and the AGGD fit.

Both metrics describe an image by asymmetric generalized Gaussian (AGGD) fits to its
MSCN coefficients and their neighbour products, over the same 7x7 Gaussian window
(sigma 7/6). They differ in everything around that (borders, the constant C, which
neighbour products, per image or per 96x96 block, how alpha is solved), so each keeps
its own MSCN and moments; what is truly common lives here, in one place:

* `aggd_ratio`: from the moments of the left (x < 0) and right sides, the side
  deviations and the ratio R that fixes the AGGD shape alpha through
  phi(alpha) = Gamma(2/a)^2 / (Gamma(1/a) Gamma(3/a));
* two ways to invert phi: `solve_alpha` (exact root, what the `brisque` package
  computes with scipy.optimize.root) and `grid_alpha` (the nearest point of
  0.2:0.001:10, what the MATLAB releases, OpenCV and NIQE use).

The separable window is not shared: BRISQUE factors it out of the 2-D kernel and NIQE
normalises the 1-D taps, which differ in the last bits, and each reproduces its own
reference to that precision.
"""

from __future__ import annotations

import numpy as np
from scipy import special

KERNEL_SIZE = 7
KERNEL_SIGMA = 7.0 / 6.0


# phi(a) = Gamma(2/a)^2 / (Gamma(1/a) Gamma(3/a)), increasing from 0 (a -> 0) to 3/4 (a -> inf)
def log_phi(a: np.ndarray) -> np.ndarray:
    return 2.0 * special.gammaln(2.0 / a) - special.gammaln(1.0 / a) - special.gammaln(3.0 / a)


_A_MIN, _A_MAX = 0.02, 50.0
_A_TABLE = np.geomspace(_A_MIN, _A_MAX, 4096)
_LOGPHI_TABLE = log_phi(_A_TABLE)

# MATLAB / OpenCV grid: gam = 0.2:0.001:10 and the nearest r_gam
_GRID = np.round(np.arange(0.2, 10.0 + 0.0005, 0.001), 6)
_GRID_R = np.exp(log_phi(_GRID))


def solve_alpha(r: np.ndarray) -> np.ndarray:
    """Exact root of phi(alpha) = r (vectorised): table lookup, then Newton on log phi.

    Matches the reference's `scipy.optimize.root` to ~1e-12. Clipped to [0.02, 50]
    where no root exists (r outside phi's range)."""
    r = np.asarray(r, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        target = np.log(r)
        a = np.interp(target, _LOGPHI_TABLE, _A_TABLE)  # NaN stays NaN
        for _ in range(5):
            f = log_phi(a) - target
            inv = 1.0 / a
            df = -(inv * inv) * (
                4.0 * special.digamma(2.0 * inv) - special.digamma(inv) - 3.0 * special.digamma(3.0 * inv)
            )
            a = np.clip(a - f / df, _A_MIN, _A_MAX)
    return a


def grid_alpha(r: np.ndarray) -> np.ndarray:
    """MATLAB's estimator: the alpha of 0.2:0.001:10 whose phi is nearest r (first on ties)."""
    r = np.asarray(r, dtype=np.float64)
    i = np.clip(np.searchsorted(_GRID_R, r), 1, _GRID_R.size - 1)
    below = np.abs(_GRID_R[i - 1] - r) <= np.abs(_GRID_R[i] - r)
    out = _GRID[np.where(below, i - 1, i)]
    return np.where(np.isfinite(r), out, np.nan)


def aggd_ratio(
    n: np.ndarray | float, sabs: np.ndarray, s2: np.ndarray, s2n: np.ndarray, nneg: np.ndarray, nright: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """AGGD moment estimate → (sigma_l, sigma_r, R); alpha is phi's inverse of R.

    From n values: sum |x|, sum x^2, sum x^2 over the left side, the left count and the
    right count (the caller decides whether 0 counts as right). NaN / inf where a side
    is empty or the values are all 0, as the references leave them."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        sl = np.sqrt(s2n / nneg)
        sr = np.sqrt((s2 - s2n) / nright)
        g = sl / sr
        r_hat = (sabs / n) ** 2 / (s2 / n)
        big_r = r_hat * (g**3 + 1.0) * (g + 1.0) / (g**2 + 1.0) ** 2
    return sl, sr, big_r
