"""BRISQUE and NIQE: model loaders, agreement with their reference implementations, and
their response to real degradations of real photos.

(a) Loaders run on tiny models that the tests write in the real on-disk formats, so they
    need no shared weights.
(b) Accuracy tests use the real published weights in ../shared/weights (skipped with the
    reason when absent):
    * BRISQUE is compared with the `brisque` PyPI package (the reference the weights come
      from) to 1e-6. The package's `score()` does rgb2gray -> features at 2 scales -> libsvm;
      the oracle below runs exactly those steps on the same grey image the adapter gets
      (the package's rgb2gray is a different luma, and its float rounding of a grey pixel
      differs by 1 ulp between numpy code paths). 1e-6 is justified because the
      implementation reproduces the reference's arithmetic, down to the sign of the rounding
      noise scipy's convolve2d leaves in flat windows (which alone moves the reference's
      score by up to 0.3 between 1-ulp-different inputs): the observed difference is <1e-10.
    * NIQE is compared with pyiqa's port of the MATLAB release; see the NIQE tests.
    * Both get worse (higher) along ladders of Gaussian blur, noise and JPEG compression.
      Ladders start at clearly visible strength: very mild noise lowers BRISQUE (e.g. sigma 4
      noise on `chelsea`: 3.5 -> -10.2) and a very mild blur lowers NIQE on `rocket` (7.0 ->
      5.8): known behaviour of both metrics, not checked here.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import pickle
from collections import OrderedDict
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
import scipy.io

from app.core.config import Settings
from app.models import brisque as B
from app.models import niqe as N
from app.models.base import ModelNotFound
from app.models.brisque import BrisqueAdapter, brisque_features
from app.models.niqe import NiqeAdapter, imresize_half, niqe_features
from app.models.nss import grid_alpha, solve_alpha
from app.models.svr import read_libsvm_model
from tests.helpers import (
    PHOTO_NAMES,
    add_noise,
    decoded,
    gaussian_blur,
    jpeg_roundtrip,
    load_adapter,
    photo,
    require_weights,
)

BRISQUE_ORACLE_TOL = 1e-6

LADDERS = {
    "gaussian_blur": (gaussian_blur, (1.5, 3.0, 6.0)),
    "noise": (add_noise, (10, 20, 40)),
    "jpeg": (jpeg_roundtrip, (30, 15, 5)),
}


# --------------------------------------------------------------------------- helpers
def grey(rgb: np.ndarray) -> np.ndarray:
    return decoded(rgb).gray_max(1024)


def degraded_set(rgb: np.ndarray) -> dict[str, np.ndarray]:
    return {
        "original": rgb,
        "blur_1.5": gaussian_blur(rgb, 1.5),
        "blur_4": gaussian_blur(rgb, 4.0),
        "noise_20": add_noise(rgb, 20),
        "jpeg_30": jpeg_roundtrip(rgb, 30),
        "jpeg_8": jpeg_roundtrip(rgb, 8),
    }


def write_libsvm(path: Path, sv: np.ndarray, coef: np.ndarray, rho: float, gamma: float,
                 svm_type: str = "epsilon_svr", kernel: str = "rbf", total: int | None = None) -> None:
    """libsvm's text model format; zero features are omitted, as svm_save_model does."""
    lines = [f"svm_type {svm_type}", f"kernel_type {kernel}", f"gamma {gamma!r}", "nr_class 2",
             f"total_sv {len(sv) if total is None else total}", f"rho {rho!r}", "probA 0.5", "SV"]
    for c, row in zip(coef, sv):
        nodes = " ".join(f"{j + 1}:{float(v)!r}" for j, v in enumerate(row) if v != 0)
        lines.append(f"{float(c)!r} {nodes} ")
    path.write_text("\n".join(lines) + "\n")


def hand_rbf(features: np.ndarray, sv: np.ndarray, coef: np.ndarray, rho: float, gamma: float,
             lo: np.ndarray, hi: np.ndarray) -> float:
    """The epsilon-SVR decision value with libsvm scaling, one term at a time."""
    x = [-1.0 + 2.0 * (float(f) - float(a)) / (float(b) - float(a)) for f, a, b in zip(features, lo, hi)]
    total = 0.0
    for c, row in zip(coef, sv):
        total += float(c) * math.exp(-gamma * sum((xi - float(si)) ** 2 for xi, si in zip(x, row)))
    return total - rho


@pytest.fixture(scope="module")
def tiny_brisque(tmp_path_factory) -> tuple[Path, dict]:
    """A 36-feature RBF epsilon-SVR with 5 support vectors (some features zero) on disk."""
    rng = np.random.default_rng(7)
    sv = np.round(rng.uniform(-1, 1, (5, 36)), 6)
    sv[1, [0, 5, 17, 35]] = 0.0  # written sparse: these indices are absent from the file
    coef = np.array([12.5, -3.25, 40.0, -18.0, 7.75])
    lo, hi = np.full(36, -0.5), np.full(36, 2.5)
    folder = tmp_path_factory.mktemp("brisque")
    write_libsvm(folder / "svm.txt", sv, coef, rho=-4.5, gamma=0.05)
    (folder / "normalize.json").write_text(json.dumps({"min_": lo.tolist(), "max_": hi.tolist()}, indent=1))
    return folder, {"sv": sv, "coef": coef, "rho": -4.5, "gamma": 0.05, "lo": lo, "hi": hi}


# ===================================================================== (a) loaders
def test_libsvm_reader_densifies_sparse_support_vectors(tiny_brisque):
    folder, m = tiny_brisque
    sv, coef, rho, gamma = read_libsvm_model(folder / "svm.txt", n_features=36)
    assert sv.shape == (5, 36)
    np.testing.assert_array_equal(sv, m["sv"])
    np.testing.assert_array_equal(coef, m["coef"])
    assert (rho, gamma) == (m["rho"], m["gamma"])
    second_sv = (folder / "svm.txt").read_text().splitlines()[9]
    assert " 1:" not in second_sv and " 36:" not in second_sv and " 2:" in second_sv


def test_svr_predict_equals_hand_computed_rbf_sum(tiny_brisque):
    folder, m = tiny_brisque
    model, variant = B.load_brisque_model(folder)
    assert variant == "rehanguha"
    feats = np.random.default_rng(3).uniform(-0.5, 2.5, (4, 36))
    got = model.predict(feats)
    want = [hand_rbf(f, m["sv"], m["coef"], m["rho"], m["gamma"], m["lo"], m["hi"]) for f in feats]
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    assert len(set(np.round(got, 6))) == 4  # the inputs really move the output


def test_adapter_scores_a_photo_with_the_loaded_model(tiny_brisque):
    folder, m = tiny_brisque
    adapter = load_adapter(BrisqueAdapter, brisque_path=str(folder))
    images = [decoded(photo("chelsea")), decoded(gaussian_blur(photo("coffee"), 2.0))]
    prepared = [adapter.prepare(im) for im in images]
    assert all(p.dtype == np.uint8 and p.ndim == 2 for p in prepared)
    got = adapter.predict(prepared)
    want = [hand_rbf(brisque_features(p), m["sv"], m["coef"], m["rho"], m["gamma"], m["lo"], m["hi"]) for p in prepared]
    assert got == pytest.approx(want, rel=1e-12, abs=1e-12)
    # a setting that points at the svm.txt file itself works too
    adapter2 = BrisqueAdapter(Settings(brisque_path=str(folder / "svm.txt")))
    adapter2.load(adapter2.resolve_path(), "cpu")
    assert adapter2.predict(prepared) == got


def test_adapter_gives_none_for_a_flat_image(tiny_brisque):
    folder, _ = tiny_brisque
    adapter = BrisqueAdapter(Settings(brisque_path=str(folder)))
    adapter.load(folder, "cpu")
    flat = np.full((64, 64), 128, np.uint8)
    assert adapter.predict([flat, grey(photo("chelsea"))])[0] is None
    assert isinstance(adapter.predict([grey(photo("chelsea"))])[0], float)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"svm_type": "c_svc"}, "not a regression model"),
        ({"kernel": "linear"}, "rbf only"),
        ({"total": 9}, "support vectors"),
    ],
)
def test_libsvm_reader_rejects_what_it_cannot_run(tmp_path, change, message):
    write_libsvm(tmp_path / "svm.txt", np.ones((2, 36)), np.array([1.0, -1.0]), 0.0, 0.05, **change)
    with pytest.raises(ValueError, match=message):
        read_libsvm_model(tmp_path / "svm.txt")


def test_missing_model_folders_raise_model_not_found(tmp_path):
    settings = Settings(model_dir=tmp_path)
    b, n = BrisqueAdapter(settings), NiqeAdapter(settings)
    assert b.resolve_path() == tmp_path / "brisque" and n.resolve_path() == tmp_path / "niqe"
    with pytest.raises(ModelNotFound):
        b.load(b.resolve_path(), "cpu")
    with pytest.raises(ModelNotFound):
        n.load(n.resolve_path(), "cpu")
    assert BrisqueAdapter.files == ("svm.txt", "normalize.json")
    assert NiqeAdapter.files == ("niqe_image_params.mat",)


def _random_spd(rng: np.random.Generator) -> np.ndarray:
    a = rng.normal(size=(36, 36))
    return a @ a.T / 36 + np.eye(36)


@pytest.mark.parametrize("keys", [("pop_mu", "pop_cov"), ("mu_prisparam", "cov_prisparam")])
def test_niqe_loader_reads_both_key_conventions(tmp_path, keys):
    rng = np.random.default_rng(1)
    mu, cov = rng.normal(size=(1, 36)), _random_spd(rng)
    scipy.io.savemat(tmp_path / "niqe_image_params.mat", {keys[0]: mu, keys[1]: cov})
    adapter = load_adapter(NiqeAdapter, niqe_path=str(tmp_path))
    np.testing.assert_array_equal(adapter.mu, mu.ravel())
    np.testing.assert_array_equal(adapter.cov, cov)
    # the score is the Mahalanobis-type distance of the image's block statistics
    g = grey(photo("coffee"))
    feats = niqe_features(g)
    d = mu.ravel() - feats.mean(axis=0)
    want = math.sqrt(d @ np.linalg.pinv((cov + np.cov(feats, rowvar=False)) / 2) @ d)
    assert adapter.predict([g])[0] == pytest.approx(want, rel=1e-10)


def test_niqe_loader_rejects_wrong_shapes(tmp_path):
    scipy.io.savemat(tmp_path / "niqe_image_params.mat", {"pop_mu": np.zeros((1, 18)), "pop_cov": np.eye(18)})
    with pytest.raises(ValueError, match="36"):
        N.load_niqe_params(tmp_path)


def test_niqe_is_none_when_fewer_than_two_blocks(tmp_path):
    scipy.io.savemat(tmp_path / "p.mat", {"pop_mu": np.zeros((1, 36)), "pop_cov": np.eye(36)})
    adapter = load_adapter(NiqeAdapter, niqe_path=str(tmp_path / "p.mat"))
    g = grey(photo("coffee"))  # 400 x 600
    small, one_block, flat = g[:95, :300], g[:150, :150], np.full((300, 300), 77, np.uint8)
    assert niqe_features(small).shape == (0, 36)
    assert adapter.predict([small, one_block, flat]) == [None, None, None]
    assert isinstance(adapter.predict([g[:192, :96]])[0], float)


# ===================================================================== numerics
def test_alpha_solver_inverts_phi_exactly():
    from scipy import special

    r = np.linspace(0.05, 0.74, 300)
    a = solve_alpha(r)
    phi = special.gamma(2 / a) ** 2 / (special.gamma(1 / a) * special.gamma(3 / a))
    np.testing.assert_allclose(phi, r, rtol=1e-12)
    assert np.all(np.diff(a) > 0)


def test_grid_alpha_is_matlabs_nearest_grid_point():
    from scipy import special

    gam = np.arange(0.2, 10.0005, 0.001)
    r_gam = special.gamma(2 / gam) ** 2 / (special.gamma(1 / gam) * special.gamma(3 / gam))
    r = np.random.default_rng(0).uniform(0.1, 0.74, 500)
    brute = gam[np.argmin((r_gam[None, :] - r[:, None]) ** 2, axis=1)]
    np.testing.assert_allclose(grid_alpha(r), brute, atol=1e-9)


@pytest.mark.parametrize("shape", [(5, 9), (48, 33), (97, 130), (200, 301)])
def test_chunked_moments_equal_the_plain_definition(shape):
    m = np.random.default_rng(shape[0]).normal(size=shape)
    m[0, :3] = 0.0  # exact zeros count on the right, as in the reference
    want = np.array([B._moments(p, strict_right=False) for p in B._pair_products(m)])
    np.testing.assert_allclose(B._ref_moments(m), want, rtol=1e-12, atol=1e-12)


def _reference_mscn(unit: np.ndarray) -> np.ndarray:
    """The reference package's own MSCN code path (scipy.signal.convolve2d, "same")."""
    from scipy import signal

    k = B._ref_kernel()
    mu = signal.convolve2d(unit, k, "same")
    sigma = np.sqrt(np.abs(mu**2 - signal.convolve2d(unit**2, k, "same")))
    return (unit - mu) / (sigma + 1 / 255)


@pytest.mark.parametrize("flat_pixels", ["few", "many"])
def test_mscn_reproduces_the_reference_down_to_rounding_noise(flat_pixels):
    """Flat areas and symmetric ramps give MSCN = rounding noise; its sign (which side of the
    AGGD fit a pixel counts on) must be the reference's too."""
    rng = np.random.default_rng(5)
    img = rng.integers(0, 256, (120, 160)).astype(np.uint8)
    img[40:60, 30:50] = 200  # a flat patch: 14 x 14 pixels have a constant window
    img[80:100, 100:140] = np.arange(40, dtype=np.uint8)[None, :] + 10  # a ramp: exact cancellation
    if flat_pixels == "many":
        img[:, :70] = 255  # clipped highlight: thousands of flat windows (the lookup path)
    unit = img * (1 / 255)
    ours = B.ref_mscn(unit, img)
    ref = _reference_mscn(unit)
    tiny = np.abs(ref) < 1e-9
    assert tiny.sum() > (2000 if flat_pixels == "many" else 300)
    np.testing.assert_array_equal(np.sign(ours), np.sign(ref))
    np.testing.assert_array_equal(ours[tiny], ref[tiny])
    np.testing.assert_allclose(ours, ref, rtol=1e-9, atol=1e-12)
    # the float path (no uint8 copy) agrees too
    np.testing.assert_array_equal(np.sign(B.ref_mscn(unit)), np.sign(ref))


def _matlab_imresize_half_1d(n: int) -> np.ndarray:
    """MATLAB imresize's contributions() for scale 0.5, bicubic, antialiasing, as an (n/2, n) matrix."""
    scale, width = 0.5, 4.0 / 0.5

    def cubic(x):
        ax = np.abs(x)
        return ((1.5 * ax**3 - 2.5 * ax**2 + 1) * (ax <= 1)
                + (-0.5 * ax**3 + 2.5 * ax**2 - 4 * ax + 2) * ((ax > 1) & (ax <= 2)))

    out = np.zeros((n // 2, n))
    aux = np.concatenate([np.arange(n), np.arange(n - 1, -1, -1)])
    for i in range(1, n // 2 + 1):  # 1-based as in MATLAB
        u = i / scale + 0.5 * (1 - 1 / scale)
        left = math.floor(u - width / 2)
        idx = left + np.arange(1, math.ceil(width) + 3)
        w = scale * cubic(scale * (u - idx))
        w /= w.sum()
        for j, wt in zip(idx, w):
            out[i - 1, aux[(j - 1) % (2 * n)]] += wt
    return out


def test_imresize_half_is_matlabs():
    img = np.random.default_rng(2).uniform(0, 255, (48, 72))
    want = _matlab_imresize_half_1d(48) @ img @ _matlab_imresize_half_1d(72).T
    np.testing.assert_allclose(imresize_half(img), want, rtol=0, atol=1e-10)


# ===================================================================== download
def _mock_client(payloads: dict[str, bytes]) -> httpx.Client:
    def handler(request: httpx.Request) -> httpx.Response:
        body = payloads.get(str(request.url))
        return httpx.Response(200, content=body) if body is not None else httpx.Response(404)

    return httpx.Client(transport=httpx.MockTransport(handler))


def test_download_rejects_a_file_whose_sha256_differs(tmp_path):
    client = _mock_client({N.PARAMS_URL: b"not the NIQE parameters"})
    with pytest.raises(RuntimeError, match="sha256 .* does not match"):
        NiqeAdapter.download(tmp_path, client=client)
    assert list(tmp_path.iterdir()) == []  # nothing half-written is left behind


def test_download_refuses_pickles_that_reference_code(tmp_path, monkeypatch):
    evil = pickle.dumps({"min_": [0.0], "max_": [1.0], "x": OrderedDict()})  # needs a global
    svm = b"svm_type epsilon_svr\n"
    client = _mock_client({B.SVM_URL: svm, B.NORMALIZE_PICKLE_URL: evil})
    monkeypatch.setattr(B, "SVM_SHA256", hashlib.sha256(svm).hexdigest())
    with pytest.raises(pickle.UnpicklingError):
        BrisqueAdapter.download(tmp_path, client=client)
    assert not (tmp_path / "normalize.json").exists()
    assert not any(p.name.endswith((".part", ".download")) for p in tmp_path.iterdir())


def test_download_writes_the_published_files(tmp_path):
    brisque_dir, niqe_dir = require_weights("brisque_libsvm_live"), require_weights("niqe_live")
    norm = json.loads((brisque_dir / "normalize.json").read_text())
    upstream_pickle = pickle.dumps({"min_": norm["min_"], "max_": norm["max_"]}, protocol=4)
    client = _mock_client({
        B.SVM_URL: (brisque_dir / "svm.txt").read_bytes(),
        B.NORMALIZE_PICKLE_URL: upstream_pickle,
        N.PARAMS_URL: (niqe_dir / "niqe_image_params.mat").read_bytes(),
    })
    BrisqueAdapter.download(tmp_path / "brisque", client=client)
    NiqeAdapter.download(tmp_path / "niqe", client=client)
    for folder, cls, src in ((tmp_path / "brisque", BrisqueAdapter, brisque_dir), (tmp_path / "niqe", NiqeAdapter, niqe_dir)):
        assert sorted(p.name for p in folder.iterdir()) == sorted(cls.files)
        for name in cls.files:
            assert (folder / name).read_bytes() == (src / name).read_bytes()


# ===================================================================== (b) accuracy, real weights
@pytest.fixture(scope="module")
def brisque_adapter() -> BrisqueAdapter:
    folder = require_weights("brisque_libsvm_live")
    adapter = load_adapter(BrisqueAdapter, brisque_path=str(folder))
    return adapter


@pytest.fixture(scope="module")
def niqe_adapter() -> NiqeAdapter:
    folder = require_weights("niqe_live")
    adapter = load_adapter(NiqeAdapter, niqe_path=str(folder))
    return adapter


@pytest.fixture(scope="module")
def brisque_oracle():
    """The `brisque` package, run step by step on a grey image (see the module docstring)."""
    pytest.importorskip("libsvm")
    brisque = pytest.importorskip("brisque")
    folder = require_weights("brisque_libsvm_live")

    class Oracle(brisque.BRISQUE):
        def scale_features(self, features):
            # the package's own formula; its float(1-element array) fails on numpy >= 2.? only
            flat = np.array([np.asarray(f, dtype=np.float64).reshape(-1)[0] for f in features])
            lo = np.asarray(self.scale_params["min_"], dtype=np.float64)
            hi = np.asarray(self.scale_params["max_"], dtype=np.float64)
            return -1 + 2.0 / (hi - lo) * (flat - lo)

        def score_grey(self, grey_u8: np.ndarray) -> float:
            image = grey_u8 * (1 / 255)  # what skimage's img_as_float gives
            f1 = self.calculate_brisque_features(image, kernel_size=7, sigma=7 / 6)
            half = cv2.resize(image, None, fx=1 / 2, fy=1 / 2, interpolation=cv2.INTER_CUBIC)
            f2 = self.calculate_brisque_features(half, kernel_size=7, sigma=7 / 6)
            return float(self.calculate_image_quality_score(np.concatenate((f1, f2))))

    oracle = Oracle(url=False)
    # the package's bundled model must be the one in shared/weights
    assert Path(brisque.__file__).parent.joinpath("models", "svm.txt").read_bytes() == (folder / "svm.txt").read_bytes()
    return oracle


@pytest.mark.parametrize("name", PHOTO_NAMES)
def test_brisque_matches_the_reference_package(name, brisque_adapter, brisque_oracle):
    for label, rgb in degraded_set(photo(name)).items():
        g = brisque_adapter.prepare(decoded(rgb))
        ours = brisque_adapter.predict([g])[0]
        want = brisque_oracle.score_grey(g)
        assert ours == pytest.approx(want, abs=BRISQUE_ORACLE_TOL), f"{name} {label}"


def _ladder_scores(adapter, rgb, fn, levels) -> list[float]:
    images = [rgb] + [fn(rgb, level) for level in levels]
    return adapter.predict([adapter.prepare(decoded(im)) for im in images])


@pytest.mark.parametrize("ladder", list(LADDERS))
@pytest.mark.parametrize("name", PHOTO_NAMES)
def test_brisque_gets_worse_with_stronger_degradation(name, ladder, brisque_adapter):
    fn, levels = LADDERS[ladder]
    scores = _ladder_scores(brisque_adapter, photo(name), fn, levels)
    assert all(b > a for a, b in itertools.pairwise(scores)), f"{name} {ladder}: {scores}"
    assert scores[-1] - scores[0] > 25, f"{name} {ladder}: {scores}"


@pytest.mark.parametrize("ladder", list(LADDERS))
@pytest.mark.parametrize("name", PHOTO_NAMES)
def test_niqe_gets_worse_with_stronger_degradation(name, ladder, niqe_adapter):
    fn, levels = LADDERS[ladder]
    scores = _ladder_scores(niqe_adapter, photo(name), fn, levels)
    assert all(b > a for a, b in itertools.pairwise(scores)), f"{name} {ladder}: {scores}"
    assert scores[-1] - scores[0] > 2.5, f"{name} {ladder}: {scores}"


def test_pristine_photos_score_in_the_published_ranges(brisque_adapter, niqe_adapter):
    g = [grey(photo(n)) for n in PHOTO_NAMES]
    assert all(-10 < s < 30 for s in brisque_adapter.predict(g))
    assert all(1.5 < s < 8 for s in niqe_adapter.predict(g))


# ----------------------------------------------------------------- NIQE vs pyiqa (MATLAB port)
@pytest.fixture(scope="module")
def pyiqa_niqe():
    torch = pytest.importorskip("torch")
    arch = pytest.importorskip("pyiqa.archs.niqe_arch")

    def run(g: np.ndarray, mu: np.ndarray, cov: np.ndarray) -> float:
        t = torch.from_numpy(g.astype(np.float64))[None, None]
        return float(arch.niqe(t, torch.from_numpy(mu)[None], torch.from_numpy(cov)[None]))

    return torch, arch, run


@pytest.mark.slow
@pytest.mark.parametrize("name", PHOTO_NAMES)
def test_niqe_matches_pyiqa_run_at_matlab_precision(name, niqe_adapter, pyiqa_niqe, monkeypatch):
    """pyiqa's port differs from MATLAB in two float32 roundings (its Gaussian window and its
    imresize weights) and in leaving rounding noise where a pixel equals its window mean
    (flat areas: JPEG blocks, clipped or blurred skies), whose sign then decides the AGGD
    left/right split arbitrarily. With MATLAB's float64 window, MATLAB's imresize weights in
    float64 (the port above) and that exact zero, it must agree to 1e-5 (observed <= 1e-6:
    summation order; NIQE's grid-searched shape parameter makes it discontinuous, so a
    looser tolerance would not buy robustness, only hide differences)."""
    torch, arch, run = pyiqa_niqe

    def normalize_exact(img, kernel_size=7, sigma=7.0 / 6, C=1, padding="same"):
        r = (kernel_size - 1) / 2.0
        y, x = np.ogrid[-r : r + 1, -r : r + 1]
        h = np.exp(-(x * x + y * y) / (2.0 * sigma * sigma))
        kernel = torch.from_numpy(h / h.sum())[None, None].to(img)  # fspecial, float64
        mu = arch.imfilter(img, kernel, padding=padding)
        s = torch.sqrt((arch.imfilter(img**2, kernel, padding=padding) - mu**2).abs())
        d = img - mu
        return torch.where(d.abs() <= 1e-9, torch.zeros_like(d), d) / (s + C)

    def imresize_matlab(img, scale=None, antialiasing=True):
        assert scale == 0.5 and antialiasing
        x = img[0, 0].numpy()
        out = _matlab_imresize_half_1d(x.shape[0]) @ x @ _matlab_imresize_half_1d(x.shape[1]).T
        return torch.from_numpy(out)[None, None]

    monkeypatch.setattr(arch, "normalize_img_with_gauss", normalize_exact)
    monkeypatch.setattr(arch, "imresize", imresize_matlab)
    for label, rgb in degraded_set(photo(name)).items():
        g = grey(rgb)
        assert niqe_adapter.predict([g])[0] == pytest.approx(run(g, niqe_adapter.mu, niqe_adapter.cov), abs=1e-5), label


@pytest.mark.slow
@pytest.mark.parametrize("name", PHOTO_NAMES)
def test_niqe_is_close_to_unmodified_pyiqa_without_flat_areas(name, niqe_adapter, pyiqa_niqe):
    """Noisy photos have no flat windows, so unmodified pyiqa differs only by its float32
    weights (~1e-7 relative): enough to move an AGGD shape parameter by one step of the
    0.001 grid now and then, which moves NIQE by ~1e-3. Tolerance 1e-2."""
    _, _, run = pyiqa_niqe
    for sigma in (20,):
        g = grey(add_noise(photo(name), sigma))
        assert niqe_adapter.predict([g])[0] == pytest.approx(run(g, niqe_adapter.mu, niqe_adapter.cov), abs=1e-2)


# ----------------------------------------------------------------- optional OpenCV model
@pytest.mark.parametrize("name", PHOTO_NAMES)
def test_opencv_model_folder_matches_cv2_quality(name, tmp_path):
    """The OpenCV model is used when the libsvm files are absent. Compared with OpenCV's own
    QualityBRISQUE on noisy photos (no flat windows): its float32 arithmetic leaves ~1e-3."""
    folder = require_weights("brisque_opencv_live")
    if not hasattr(cv2, "quality"):
        pytest.skip("cv2.quality (opencv-contrib) is not installed")
    adapter = load_adapter(BrisqueAdapter, brisque_path=str(folder))
    assert adapter.variant == "opencv"
    ref = cv2.quality.QualityBRISQUE_create(str(folder / "brisque_model_live.yml"), str(folder / "brisque_range_live.yml"))
    for sigma in (10, 25):
        g = grey(add_noise(photo(name), sigma))
        want = ref.compute(g)[0]
        assert 0 < want < 100  # OpenCV clamps to 0..100; the adapter does not
        assert adapter.predict([g])[0] == pytest.approx(want, abs=5e-3)
