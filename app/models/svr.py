"""An RBF epsilon-SVR evaluated in numpy, and readers for the files it comes in.

BRISQUE's score is a support-vector regression over its 36 features. The model ships as a
libsvm text file (`svm.txt`, the `brisque` package's) or as OpenCV ml::SVM YAML
(`cv2.quality`'s); both are read here into one `SvrModel` whose decision function is a
few lines of numpy, so neither libsvm nor a trained OpenCV object is needed at run time.
Kept apart from the features (brisque.py) because it is a different concern: a generic
regressor and its file formats, testable on hand-written models.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np


@dataclass(frozen=True)
class SvrModel:
    """An RBF epsilon-SVR (libsvm decision function) plus libsvm min/max feature scaling."""

    support_vectors: np.ndarray  # (n_sv, d)
    coef: np.ndarray  # (n_sv,)
    rho: float
    gamma: float
    feat_min: np.ndarray  # (d,)
    feat_max: np.ndarray  # (d,)

    def scale(self, x: np.ndarray) -> np.ndarray:
        span = self.feat_max - self.feat_min
        with np.errstate(divide="ignore", invalid="ignore"):
            out = -1.0 + 2.0 * (x - self.feat_min) / span
        return np.where(span != 0, out, 0.0)

    def decision(self, x_scaled: np.ndarray) -> np.ndarray:
        """sum_i coef_i * exp(-gamma * |sv_i - x|^2) - rho for each row of (n, d) input."""
        x = np.atleast_2d(np.asarray(x_scaled, dtype=np.float64))
        d2 = np.square(x[:, None, :] - self.support_vectors[None, :, :]).sum(axis=-1)
        return (np.exp(-self.gamma * d2) * self.coef).sum(axis=1) - self.rho  # per row: batch-independent

    def predict(self, features: np.ndarray) -> np.ndarray:
        return self.decision(self.scale(np.atleast_2d(features)))


def read_libsvm_model(path: Path, n_features: int = 0) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Parse a libsvm text model (epsilon/nu-SVR, RBF) → (support_vectors, coef, rho, gamma).

    Support vectors are stored sparse (`index:value`, 1-based, zeros omitted); they are
    densified to max(largest index, n_features) columns."""
    header: dict[str, str] = {}
    rows: list[tuple[float, list[tuple[int, float]]]] = []
    with open(path, encoding="ascii") as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            if line == "SV":
                break
            key, _, value = line.partition(" ")
            header[key] = value.strip()
        for lineno, line in enumerate(fh, start=len(header) + 2):
            parts = line.split()
            if not parts:
                continue
            try:
                nodes = [(int(i), float(v)) for i, _, v in (p.partition(":") for p in parts[1:])]
                rows.append((float(parts[0]), nodes))
            except ValueError as exc:
                raise ValueError(f"{path}:{lineno}: not a support-vector line ({exc})") from exc
    svm_type, kernel = header.get("svm_type"), header.get("kernel_type")
    if svm_type not in ("epsilon_svr", "nu_svr"):
        raise ValueError(f"{path}: svm_type {svm_type!r} is not a regression model")
    if kernel != "rbf":
        raise ValueError(f"{path}: kernel_type {kernel!r} is not supported (rbf only)")
    try:
        gamma, rho = float(header["gamma"]), float(header["rho"].split()[0])
    except (KeyError, ValueError, IndexError) as exc:
        raise ValueError(f"{path}: missing or bad gamma/rho in the header") from exc
    total = int(header.get("total_sv", len(rows)))
    if total != len(rows) or not rows:
        raise ValueError(f"{path}: header says {total} support vectors, file has {len(rows)}")
    dim = max([n_features] + [i for _, nodes in rows for i, _ in nodes])
    sv = np.zeros((len(rows), dim), dtype=np.float64)
    coef = np.empty(len(rows), dtype=np.float64)
    for k, (c, nodes) in enumerate(rows):
        coef[k] = c
        for i, v in nodes:
            if i < 1:
                raise ValueError(f"{path}: feature index {i} < 1")
            sv[k, i - 1] = v
    return sv, coef, rho, gamma


def read_normalize_json(path: Path) -> tuple[np.ndarray, np.ndarray]:
    data = json.loads(Path(path).read_text())
    lo, hi = np.asarray(data["min_"], dtype=np.float64), np.asarray(data["max_"], dtype=np.float64)
    if lo.shape != hi.shape or lo.ndim != 1:
        raise ValueError(f"{path}: min_ and max_ must be equal-length lists")
    return lo, hi


def read_opencv_model(model_yml: Path, range_yml: Path) -> SvrModel:
    """OpenCV ml::SVM (EPS_SVR, RBF) FileStorage YAML + the 2x36 range matrix (min row, max row)."""
    svm = cv2.ml.SVM.load(str(model_yml))
    if svm.getType() != cv2.ml.SVM_EPS_SVR or svm.getKernelType() != cv2.ml.SVM_RBF:
        raise ValueError(f"{model_yml}: not an EPS_SVR model with an RBF kernel")
    sv = svm.getSupportVectors().astype(np.float64)
    rho, alpha, idx = svm.getDecisionFunction(0)
    fs = cv2.FileStorage(str(range_yml), cv2.FILE_STORAGE_READ)
    try:
        rng = fs.getNode("range").mat()
    finally:
        fs.release()
    if rng is None or rng.shape != (2, sv.shape[1]):
        raise ValueError(f"{range_yml}: expected a 2x{sv.shape[1]} 'range' matrix")
    rng = rng.astype(np.float64)
    # decision value = sum_i alpha_i K(sv_i, x) - rho, the libsvm convention
    return SvrModel(sv[idx.ravel()], alpha.ravel().astype(np.float64), float(rho), float(svm.getGamma()), rng[0], rng[1])
