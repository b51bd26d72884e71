"""BRISQUE no-reference image quality, in numpy + OpenCV (no libsvm at run time).

Reference implementation: the `brisque` PyPI package by rehanguha (v0.2.0,
github.com/rehanguha/brisque), whose LIVE-trained epsilon-SVR (`svm.txt`) and
feature scaling (`normalize.pickle`, stored here as `normalize.json`) are the
weights this adapter loads. Features are computed exactly as it does:

* grey image as v * (1/255) (skimage's img_as_float), float64;
* MSCN coefficients with its 7x7 Gaussian window (sigma 7/6), zero padding
  (scipy "same" convolution), C = 1/255;
* per scale, an AGGD fit of the MSCN map ([alpha, (sigma_l^2 + sigma_r^2) / 2])
  and of its horizontal, vertical, main- and secondary-diagonal neighbour
  products ([alpha, mean, sigma_l^2, sigma_r^2]) -> 18 features; left = x < 0,
  right = x >= 0; alpha solves phi(alpha) = R_hat exactly (table + Newton, where
  the package calls scipy.optimize.root);
* two scales, the second made by `cv2.resize(fx=0.5, INTER_CUBIC)` -> 36 features.

Where a pixel equals its window's weighted mean (flat areas, symmetric ramps) the
reference's MSCN is rounding noise whose sign still counts (see `ref_mscn`); those
pixels are recomputed in the reference's exact arithmetic, so scores agree with the
package to ~1e-10 (tests/unit/test_brisque_niqe.py), flat-heavy images included.

Score = SVR(-1 + 2 (x - min) / (max - min)). Lower is better; about 0..100 on
LIVE-like photos, but the SVR is unbounded: clean photos with mild noise can go
below 0 (e.g. -10) and extreme damage above 100. The score is `None` when it is
undefined (a flat image: no local contrast to fit, or a side under 4 px).

Optional: an OpenCV `cv2.quality` model folder (`brisque_model_live.yml` +
`brisque_range_live.yml`) is used when the libsvm files are absent. That model
was trained on OpenCV's own feature variant (float32, replicate borders,
grid-searched alpha, zero-filled neighbour products), which
`brisque_features(..., variant="opencv")` computes (agrees with OpenCV to ~1e-3 on
images without flat areas; not clamped to 0..100 as OpenCV does).

The window and the AGGD fit shared with NIQE are in nss.py; the SVR and its readers in svr.py.
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import cv2
import numpy as np
from scipy import special

from app.imaging.decode import DecodedImage
from app.models import outputs
from app.models.base import ModelAdapter, ModelNotFound
from app.models.download import fetch
from app.models.nss import KERNEL_SIGMA, KERNEL_SIZE, aggd_ratio, grid_alpha, solve_alpha
from app.models.outputs import Output
from app.models.svr import SvrModel, read_libsvm_model, read_normalize_json, read_opencv_model

Variant = Literal["rehanguha", "opencv"]

N_FEATURES = 36

# --- public sources (raw GitHub) and the sha256 of the files as this project uses them ---------
SVM_URL = "https://raw.githubusercontent.com/rehanguha/brisque/HEAD/brisque/models/svm.txt"
NORMALIZE_PICKLE_URL = "https://raw.githubusercontent.com/rehanguha/brisque/HEAD/brisque/models/normalize.pickle"
SVM_SHA256 = "19526fb799c4c7992ccc109fcfecddb25976ba024b194cd3ee275d27e8909c8d"
#: normalize.json = json.dumps({"min_": [...], "max_": [...]}, indent=1) of the upstream pickle
NORMALIZE_JSON_SHA256 = "09b4a4a1289853a803b6163038de889c9c7c29d53497db62d9a2d71b09eddd00"


# ============================================================================ features
def _pair_products(m: np.ndarray) -> tuple[np.ndarray, ...]:
    """MSCN map and its H, V, main-diagonal and secondary-diagonal neighbour products (cropped)."""
    return (
        m,
        m[:, :-1] * m[:, 1:],
        m[:-1, :] * m[1:, :],
        m[:-1, :-1] * m[1:, 1:],
        m[1:, :-1] * m[:-1, 1:],
    )


def _pair_products_zero_fill(m: np.ndarray) -> tuple[np.ndarray, ...]:
    """OpenCV's products: full size, neighbour outside the image = 0 (shifts (0,1) (1,0) (1,1) (-1,1))."""
    out = [m]
    for dy, dx in ((0, 1), (1, 0), (1, 1), (-1, 1)):
        p = np.zeros_like(m)
        h, w = m.shape
        ys, yd = (slice(dy, h), slice(0, h - dy)) if dy >= 0 else (slice(0, h + dy), slice(-dy, h))
        p[yd, : w - dx] = m[yd, : w - dx] * m[ys, dx:]
        out.append(p)
    return tuple(out)


def _moments(x: np.ndarray, strict_right: bool) -> tuple[float, ...]:
    """n, sum|x|, sum x^2, sum x^2 over x < 0, count(x < 0), count on the right side.

    The right side is x >= 0 for the reference package, x > 0 for OpenCV and MATLAB."""
    v = x.reshape(-1).astype(np.float64, copy=False)
    neg = np.minimum(v, 0.0)
    s2 = float(np.square(v).sum())
    s2n = float(np.square(neg).sum())
    sabs = float(v.sum(dtype=np.float64)) - 2.0 * float(neg.sum(dtype=np.float64))
    nneg = float(np.count_nonzero(neg))
    nright = float(np.count_nonzero(v > 0)) if strict_right else v.size - nneg
    return float(v.size), sabs, s2, s2n, nneg, nright


_CHUNK_ROWS = 48  # rows per pass: the products and temporaries stay in L2 cache


def _ref_moments(m: np.ndarray) -> np.ndarray:
    """`_moments` of the MSCN map and its 4 cropped neighbour products, in row chunks.

    Same numbers as `[_moments(p, False) for p in _pair_products(m)]` (up to summation
    order) without materialising five full-size arrays."""
    h, w = m.shape
    acc = np.zeros((5, 4))  # per array: sum x, sum min(x, 0), sum x^2, sum min(x, 0)^2
    cnt = np.zeros(5)  # count(x < 0)
    neg_buf, sq_buf = np.empty(_CHUNK_ROWS * w), np.empty(_CHUNK_ROWS * w)
    for r0 in range(0, h, _CHUNK_ROWS):
        r1 = min(r0 + _CHUNK_ROWS, h)
        a = m[r0:r1]
        parts = [a, a[:, :-1] * a[:, 1:]]
        if r0 < h - 1:
            r1b = min(r1, h - 1)  # products with the next row exist for rows < h - 1
            top, bot = m[r0:r1b], m[r0 + 1 : r1b + 1]
            parts += [top * bot, top[:, :-1] * bot[:, 1:], bot[:, :-1] * top[:, 1:]]
        for i, x in enumerate(parts):
            v = x.reshape(-1)
            neg = np.minimum(v, 0.0, out=neg_buf[: v.size])
            sq = sq_buf[: v.size]
            acc[i, 0] += v.sum()
            acc[i, 1] += neg.sum()
            acc[i, 2] += np.multiply(v, v, out=sq).sum()  # not np.dot: threaded BLAS stalls
            acc[i, 3] += np.multiply(neg, neg, out=sq).sum()
            cnt[i] += np.count_nonzero(neg)
    n = np.array([h * w, h * (w - 1), (h - 1) * w, (h - 1) * (w - 1), (h - 1) * (w - 1)], dtype=np.float64)
    sabs = acc[:, 0] - 2.0 * acc[:, 1]
    return np.stack([n, sabs, acc[:, 2], acc[:, 3], cnt, n - cnt], axis=1)


def _aggd_features(mom: np.ndarray, variant: Variant) -> np.ndarray:
    """(k, 6) moments of k arrays → (k, 4) [alpha, mean, sigma_l^2, sigma_r^2]."""
    sl, sr, big_r = aggd_ratio(*mom.T)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        alpha = solve_alpha(big_r) if variant == "rehanguha" else grid_alpha(big_r)
        g1, g2, g3 = special.gamma(1.0 / alpha), special.gamma(2.0 / alpha), special.gamma(3.0 / alpha)
        mean = (sr - sl) * np.sqrt(g1 / g3) * (g2 / g1)
    return np.stack([alpha, mean, sl * sl, sr * sr], axis=1)


# --- MSCN, as the reference computes it -------------------------------------------------------
# The reference convolves with scipy.signal.convolve2d ("same", zero fill). Where the centre
# pixel equals the window's weighted mean (flat windows: clipped skies, black borders, JPEG
# blocks; symmetric ramps) its MSCN is 0 plus rounding noise, and the sign of that noise still
# decides the AGGD left/right split (x < 0 vs x >= 0): enough to move the score by several
# points on flat-heavy images. So the bulk is filtered fast with OpenCV, and the pixels whose
# |x - mu| is within rounding noise are recomputed with convolve2d's exact summation order
# (per kernel row: ((k0 x0 + k1 x1) + k2 x2) + k3 x3, then + k4 x4, + k5 x5, + k6 x6).
_REF_C = 1.0 / 255.0
_SUSPECT = 1e-12  # |x - mu| on the 0..1 scale below which the sign is rounding noise
_DIRECT_MAX = 2000  # up to this many such pixels, recompute each; above, look up flat windows


def _ref_kernel() -> np.ndarray:
    y, x = np.indices((KERNEL_SIZE, KERNEL_SIZE)) - int(KERNEL_SIZE / 2)
    k = 1 / (2 * np.pi * KERNEL_SIGMA**2) * np.exp(-(x**2 + y**2) / (2 * KERNEL_SIGMA**2))
    return k / np.sum(k)


_K_REF = _ref_kernel()
_G7 = _K_REF.sum(axis=0)  # separable factor of the same window (for the fast pass)


def _ref_conv(window: Any) -> np.ndarray:
    """convolve2d's sum: kernel[j, k] pairs with the pixel at offset (3 - j, 3 - k); `window(j, k)`
    returns those pixels (an array over the pixels computed). Same order, same rounding."""
    k = _K_REF
    acc: np.ndarray | None = None
    for j in range(KERNEL_SIZE):
        s = k[j, 0] * window(j, 0) + k[j, 1] * window(j, 1)
        s = s + k[j, 2] * window(j, 2)
        s = s + k[j, 3] * window(j, 3)
        acc = s if acc is None else acc + s
        for c in range(4, KERNEL_SIZE):
            acc = acc + k[j, c] * window(j, c)
    assert acc is not None  # KERNEL_SIZE rows were added
    return acc


def _ref_mscn_exact(mu: np.ndarray, sq: np.ndarray, x: np.ndarray) -> np.ndarray:
    return (x - mu) / (np.sqrt(np.abs(mu**2 - sq)) + _REF_C)


def _ref_mscn_const(values: np.ndarray) -> np.ndarray:
    """The reference's MSCN at pixels whose whole 7x7 window equals `values`."""
    v = np.asarray(values, dtype=np.float64)
    v2 = v**2
    return _ref_mscn_exact(_ref_conv(lambda j, c: v), _ref_conv(lambda j, c: v2), v)


def _ref_mscn_at(unit: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """The reference's MSCN at the given pixels (their windows gathered, zero outside)."""
    h, w = unit.shape
    half = KERNEL_SIZE // 2
    offsets = half - np.arange(KERNEL_SIZE)  # kernel index j <-> image offset half - j
    rr, cc = rows[:, None] + offsets, cols[:, None] + offsets  # (n, 7) each
    rok, cok = (rr >= 0) & (rr < h), (cc >= 0) & (cc < w)
    rr, cc = np.clip(rr, 0, h - 1), np.clip(cc, 0, w - 1)
    win = unit[rr[:, :, None], cc[:, None, :]] * (rok[:, :, None] & cok[:, None, :])  # (n, 7, 7)
    win_sq = win * win
    mu = _ref_conv(lambda j, k: win[:, j, k])
    sq = _ref_conv(lambda j, k: win_sq[:, j, k])
    return _ref_mscn_exact(mu, sq, unit[rows, cols])


_U8_TO_UNIT = np.arange(256, dtype=np.float64) * (1 / 255)  # skimage img_as_float
_FLAT_U8 = _ref_mscn_const(_U8_TO_UNIT)
_BOX = np.ones((KERNEL_SIZE, KERNEL_SIZE), np.uint8)


def _constant_windows(img: np.ndarray) -> np.ndarray:
    """Pixels whose 7x7 window (zeros outside the image) holds a single value."""
    lo = cv2.erode(img, _BOX, borderType=cv2.BORDER_CONSTANT, borderValue=0)
    hi = cv2.dilate(img, _BOX, borderType=cv2.BORDER_CONSTANT, borderValue=0)
    return lo == hi


def ref_mscn(unit: np.ndarray, u8: np.ndarray | None = None) -> np.ndarray:
    """MSCN of a 0..1 float64 image exactly as the reference computes it (C = 1/255).

    `u8`: the same image as uint8 when it is one (a faster flat-window lookup).
    Windows reach outside the image as zeros, as in the reference's "same" convolution."""
    tmp = np.multiply(unit, unit)  # buffers are reused: fresh 8 MB arrays cost page faults
    mu = cv2.sepFilter2D(unit, cv2.CV_64F, _G7, _G7, borderType=cv2.BORDER_CONSTANT)
    var = cv2.sepFilter2D(tmp, cv2.CV_64F, _G7, _G7, borderType=cv2.BORDER_CONSTANT)
    var -= np.multiply(mu, mu, out=tmp)
    sigma = np.sqrt(np.abs(var, out=var), out=var)
    sigma += _REF_C
    d = np.subtract(unit, mu, out=mu)
    suspect = np.abs(d, out=tmp) <= _SUSPECT
    m = np.divide(d, sigma, out=d)
    idx = np.flatnonzero(suspect)
    if idx.size > _DIRECT_MAX:  # many: flat windows by value, then the rest one by one
        if u8 is not None:
            # a window of one value has variance 0 (+ rounding noise ~1e-16, sigma - C < 1e-7);
            # any other window of 8-bit levels has >= 2e-9 (sigma - C >= 4e-5)
            flat = sigma.ravel()[idx] <= _REF_C + 1e-6
            m.ravel()[idx[flat]] = _FLAT_U8[u8.ravel()[idx[flat]]]
        else:
            flat = _constant_windows(unit).ravel()[idx]
            levels, inverse = np.unique(unit.ravel()[idx[flat]], return_inverse=True)
            m.ravel()[idx[flat]] = _ref_mscn_const(levels)[inverse]
        idx = idx[~flat]
    if idx.size:
        rows, cols = np.divmod(idx, unit.shape[1])
        m.ravel()[idx] = _ref_mscn_at(unit, rows, cols)
    return m


def _scale_features(img: np.ndarray, variant: Variant, u8: np.ndarray | None = None) -> list[float]:
    if variant == "rehanguha":
        mom = _ref_moments(ref_mscn(img, u8))
    else:  # OpenCV quality module: float32, replicate borders, C = 1/255 on a 0..1 image
        mu = cv2.GaussianBlur(img, (KERNEL_SIZE, KERNEL_SIZE), KERNEL_SIGMA, borderType=cv2.BORDER_REPLICATE)
        var = cv2.GaussianBlur(img * img, (KERNEL_SIZE, KERNEL_SIZE), KERNEL_SIGMA, borderType=cv2.BORDER_REPLICATE)
        sigma = np.sqrt(np.abs(var - mu * mu)) + np.float32(1.0 / 255.0)
        mom = np.array([_moments(p, strict_right=True) for p in _pair_products_zero_fill((img - mu) / sigma)])
    f = _aggd_features(mom, variant)
    out = [f[0, 0], (f[0, 2] + f[0, 3]) / 2.0]
    for row in f[1:]:
        out.extend(row)
    return out


def brisque_features(gray: np.ndarray, variant: Variant = "rehanguha") -> np.ndarray:
    """The 36 BRISQUE features of a 2-D grey image (uint8, or float on the 0..255 scale).

    `variant="rehanguha"` (default) reproduces the `brisque` package for `svm.txt`;
    `"opencv"` reproduces `cv2.quality.QualityBRISQUE` for the OpenCV model.
    NaN where undefined (flat image, or a side under 4 px)."""
    if gray.ndim != 2:
        raise ValueError(f"brisque_features wants a 2-D grey image, got shape {gray.shape}")
    if variant not in ("rehanguha", "opencv"):
        raise ValueError(f"unknown BRISQUE variant {variant!r}")
    if min(gray.shape) < 4:
        return np.full(N_FEATURES, np.nan)
    if variant == "rehanguha":
        if gray.dtype == np.uint8:
            u8, img = gray, _U8_TO_UNIT[gray]
        else:
            u8, img = None, np.asarray(gray, dtype=np.float64) * (1 / 255)
        feats = _scale_features(img, variant, u8)
        half = cv2.resize(img, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_CUBIC)
    else:
        img = np.asarray(gray, dtype=np.float32) * np.float32(1.0 / 255.0)
        feats = _scale_features(img, variant)
        h, w = img.shape
        half = cv2.resize(img, (w // 2, h // 2), interpolation=cv2.INTER_CUBIC)
    feats += _scale_features(half, variant)
    return np.asarray(feats, dtype=np.float64)


# ============================================================================ download helpers
class _NoGlobalsUnpickler(pickle.Unpickler):
    """Unpickles plain containers and floats only: nothing in the file can run code."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a downloaded pickle")


def _write_verified(dest: Path, data: bytes, sha256: str) -> None:
    got = hashlib.sha256(data).hexdigest()
    if got != sha256:
        raise ValueError(f"sha256 mismatch for {dest.name}: got {got}, expected {sha256}")
    tmp = dest.with_name(dest.name + ".part")
    tmp.write_bytes(data)
    tmp.replace(dest)


# ============================================================================ adapter
def _model_dir(path: Path) -> Path:
    path = Path(path).expanduser()
    return path.parent if path.is_file() else path


def load_brisque_model(path: Path) -> tuple[SvrModel, Variant]:
    """Load `svm.txt` + `normalize.json` from a folder, else the OpenCV YAML pair."""
    folder = _model_dir(path)
    svm, norm = folder / "svm.txt", folder / "normalize.json"
    if svm.is_file() and norm.is_file():
        lo, hi = read_normalize_json(norm)
        sv, coef, rho, gamma = read_libsvm_model(svm, n_features=lo.size)
        if sv.shape[1] != lo.size:
            raise ValueError(f"{svm}: {sv.shape[1]} features but normalize.json has {lo.size}")
        return SvrModel(sv, coef, rho, gamma, lo, hi), "rehanguha"
    yml, rng = folder / "brisque_model_live.yml", folder / "brisque_range_live.yml"
    if yml.is_file() and rng.is_file():
        return read_opencv_model(yml, rng), "opencv"
    raise ModelNotFound(
        f"BRISQUE model not found in {folder}: expected svm.txt + normalize.json "
        "(or brisque_model_live.yml + brisque_range_live.yml)"
    )


class BrisqueAdapter(ModelAdapter):
    name: ClassVar[str] = "brisque"
    title: ClassVar[str] = "BRISQUE no-reference quality (LIVE-trained SVR; lower is better, ~0..100)"
    path_setting: ClassVar[str | None] = "brisque_path"
    default_subdir: ClassVar[str] = "brisque"
    source: ClassVar[str] = "github.com/rehanguha/brisque brisque/models/{svm.txt,normalize.pickle}"
    #: what a complete model folder holds
    files: ClassVar[tuple[str, ...]] = ("svm.txt", "normalize.json")
    sha256: ClassVar[dict[str, str]] = {"svm.txt": SVM_SHA256, "normalize.json": NORMALIZE_JSON_SHA256}
    output: ClassVar[Output | None] = outputs.BRISQUE
    #: an accepted alternative folder content (OpenCV's model), used when `files` are absent
    alt_files: ClassVar[tuple[str, ...]] = ("brisque_model_live.yml", "brisque_range_live.yml")

    model: SvrModel | None = None
    variant: Variant = "rehanguha"

    def load(self, path: Path, device: str) -> None:  # numpy on the cpu whatever `device` says
        self.model, self.variant = load_brisque_model(path)

    def prepare(self, image: DecodedImage) -> np.ndarray:
        return image.gray_max(self.settings.analysis_max_dim)

    def features(self, gray: np.ndarray) -> np.ndarray:
        return brisque_features(gray, self.variant)

    def predict(self, batch: Sequence[np.ndarray]) -> list[float | None]:
        """BRISQUE per grey image; None where undefined (flat image)."""
        if self.model is None:
            raise RuntimeError("BRISQUE model is not loaded")
        if not batch:
            return []
        feats = np.stack([self.features(g) for g in batch])
        ok = np.isfinite(feats).all(axis=1)
        out: list[float | None] = [None] * len(batch)
        if ok.any():
            scores = self.model.predict(feats[ok])
            for i, s in zip(np.flatnonzero(ok), scores):
                out[i] = float(s)
        return out

    @classmethod
    def download(cls, dest: Path, *, client: Any = None) -> None:
        """Fetch svm.txt and normalize.pickle from rehanguha/brisque; write svm.txt + normalize.json."""
        dest = Path(dest)
        fetch(SVM_URL, dest / "svm.txt", SVM_SHA256, client=client)
        pkl = fetch(NORMALIZE_PICKLE_URL, dest / "normalize.pickle.download", None, client=client)
        try:
            params = _NoGlobalsUnpickler(io.BytesIO(pkl.read_bytes())).load()
        finally:
            pkl.unlink(missing_ok=True)
        text = json.dumps({k: [float(v) for v in params[k]] for k in ("min_", "max_")}, indent=1)
        _write_verified(dest / "normalize.json", text.encode(), NORMALIZE_JSON_SHA256)
