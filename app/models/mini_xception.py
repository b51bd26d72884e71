"""The FER2013 mini-Xception: the "emotion" adapter's ``mini_xception`` backend (emotion.py).

Faces come from YuNet (faces.py), emotions from the FER2013 mini-Xception of
oarriaga/face_classification: a Keras 2 HDF5 file, read with h5py into a torch
re-implementation of the network (`load_keras_mini_xception`), so neither Keras nor
TensorFlow is needed. Kept apart from the adapter because the network, the Keras
weight layout and the face crop are this backend's alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import cv2
import numpy as np

from app.core.config import Settings
from app.models.base import ModelNotFound
from app.models.download import weights_file
from app.models.faces import FaceInput, YunetAdapter, emotion_result, map_box

MINI_XCEPTION_FILE = "fer2013_mini_XCEPTION.102-0.66.hdf5"
MINI_XCEPTION_URLS = (
    (
        "https://github.com/oarriaga/face_classification/raw/master/trained_models/emotion_models/"
        "fer2013_mini_XCEPTION.102-0.66.hdf5"
    ),
)
MINI_XCEPTION_SHA256 = "59534287fdfb125e30a94400296c25ea9f5d706fca93dd8adbbbed916799ea0e"


def _build_mini_xception(num_classes: int = 7):
    import torch
    import torch.nn.functional as F
    from torch import nn

    def bn(c: int) -> nn.BatchNorm2d:
        return nn.BatchNorm2d(c, eps=1e-3)  # Keras' default epsilon

    class SeparableConv(nn.Module):
        def __init__(self, cin: int, cout: int):
            super().__init__()
            self.depthwise = nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False)
            self.pointwise = nn.Conv2d(cin, cout, 1, bias=False)

        def forward(self, x):
            return self.pointwise(self.depthwise(x))

    class Block(nn.Module):
        def __init__(self, cin: int, cout: int):
            super().__init__()
            self.sep1, self.bn1 = SeparableConv(cin, cout), bn(cout)
            self.sep2, self.bn2 = SeparableConv(cout, cout), bn(cout)
            self.res_conv, self.res_bn = nn.Conv2d(cin, cout, 1, stride=2, bias=False), bn(cout)

        def forward(self, x):
            residual = self.res_bn(self.res_conv(x))
            y = self.bn2(self.sep2(F.relu(self.bn1(self.sep1(x)))))
            # Keras MaxPooling2D((3,3), strides 2, padding="same"): TF pads bottom/right first
            h, w = y.shape[-2:]
            ph, pw = max((-(-h // 2) - 1) * 2 + 3 - h, 0), max((-(-w // 2) - 1) * 2 + 3 - w, 0)
            y = F.pad(y, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), value=float("-inf"))
            return F.max_pool2d(y, 3, stride=2) + residual

    class MiniXception(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.bn1 = nn.Conv2d(1, 8, 3, bias=False), bn(8)
            self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, bias=False), bn(8)
            self.blocks = nn.ModuleList(
                [Block(8, 16), Block(16, 32), Block(32, 64), Block(64, 128)]
            )
            self.head = nn.Conv2d(128, num_classes, 3, padding=1)

        def forward(self, x):  # (n, 1, 64, 64) in [-1, 1]
            x = F.relu(self.bn1(self.conv1(x)))
            x = F.relu(self.bn2(self.conv2(x)))
            for block in self.blocks:
                x = block(x)
            return torch.softmax(self.head(x).mean(dim=(2, 3)), dim=1)

        def keras_order(self) -> list[nn.Module]:
            """Weighted layers in the order the Keras model config lists them."""
            mods: list[nn.Module] = [self.conv1, self.bn1, self.conv2, self.bn2]
            for b in self.blocks:
                mods += [b.sep1, b.bn1, b.sep2, b.bn2, b.res_conv, b.res_bn]
            return mods + [self.head]

    return MiniXception()


def load_keras_mini_xception(path: Path):
    """Read the Keras 2 full-model HDF5 into the torch mini-Xception (eval mode)."""
    import json

    import h5py
    import torch

    model = _build_mini_xception()
    with h5py.File(path, "r") as f:
        config = f.attrs["model_config"]
        config = json.loads(config.decode() if isinstance(config, bytes) else config)
        group = f.get("model_weights", f)
        layers = []
        for layer in config["config"]["layers"]:
            g = group.get(layer["config"]["name"])
            names = (
                [n.decode() if isinstance(n, bytes) else n for n in g.attrs.get("weight_names", [])]
                if g
                else []
            )
            if names:
                weights = {n.split("/")[-1].split(":")[0]: np.asarray(g[n]) for n in names}
                layers.append((layer["class_name"], layer["config"]["name"], weights))
    targets = model.keras_order()
    if len(layers) != len(targets):
        raise ValueError(
            f"{path}: {len(layers)} weighted layers, the mini-Xception has {len(targets)}"
        )

    def put(param: torch.Tensor, value: np.ndarray, what: str) -> None:
        t = torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32))
        if tuple(t.shape) != tuple(param.shape):
            raise ValueError(
                f"{path}: {what} has shape {tuple(t.shape)}, expected {tuple(param.shape)}"
            )
        param.data.copy_(t)

    for (kind, name, w), mod in zip(layers, targets):
        if kind == "Conv2D":
            put(mod.weight, w["kernel"].transpose(3, 2, 0, 1), name)
            if "bias" in w:
                put(mod.bias, w["bias"], name)
        elif kind == "SeparableConv2D":
            put(mod.depthwise.weight, w["depthwise_kernel"].transpose(2, 3, 0, 1), name)
            put(mod.pointwise.weight, w["pointwise_kernel"].transpose(3, 2, 0, 1), name)
        elif kind == "BatchNormalization":
            put(mod.weight, w["gamma"], name)
            put(mod.bias, w["beta"], name)
            put(mod.running_mean, w["moving_mean"], name)
            put(mod.running_var, w["moving_variance"], name)
        else:
            raise ValueError(f"{path}: unexpected weighted layer {kind} {name}")
    return model.eval()


class MiniXceptionEmotion:
    """YuNet faces + FER2013 mini-Xception (64x64 gray, (x/255 - 0.5) * 2)."""

    #: the face box is widened by this fraction of its size on each side before the
    #: square crop (FER2013 faces include the forehead and a little of the background)
    MARGIN: ClassVar[float] = 0.1

    def __init__(self, settings: Settings, path: Path, device: str):
        model_file = weights_file(path, MINI_XCEPTION_FILE, (".hdf5", ".h5"))
        if not model_file.is_file():
            raise ModelNotFound(
                f"FER2013 mini-Xception weights not found: {model_file} does not exist. Put "
                f"{MINI_XCEPTION_FILE} there (scripts/download_models.py fetches it from "
                f"{MINI_XCEPTION_URLS[0]}) or point EMOTION_MINI_XCEPTION_PATH at it."
            )
        try:
            import h5py  # noqa: F401
        except ImportError as exc:
            raise RuntimeError("EMOTION_MODEL=mini_xception needs h5py (pip install h5py)") from exc
        import torch

        self.torch = torch
        self.device = torch.device(device)
        self.model = load_keras_mini_xception(model_file).to(self.device)
        self.yunet = YunetAdapter(settings)
        self.yunet.load(self.yunet.resolve_path(), "cpu")

    def crop(self, gray: np.ndarray, row: np.ndarray) -> np.ndarray:
        x, y, w, h = (float(v) for v in row[:4])
        side = max(w, h) * (1 + 2 * self.MARGIN)
        cx, cy = x + w / 2, y + h / 2
        x0, y0 = round(cx - side / 2), round(cy - side / 2)
        s = max(1, round(side))
        # pad with edge pixels where the square leaves the image
        pad = max(0, -x0, -y0, x0 + s - gray.shape[1], y0 + s - gray.shape[0])
        if pad:
            gray = cv2.copyMakeBorder(gray, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
            x0, y0 = x0 + pad, y0 + pad
        face = gray[y0 : y0 + s, x0 : x0 + s]
        interp = cv2.INTER_AREA if s > 64 else cv2.INTER_LINEAR
        return cv2.resize(face, (64, 64), interpolation=interp)

    def analyze(self, batch: Sequence[FaceInput]) -> list[list[dict[str, Any]]]:
        crops, metas = [], []
        for idx, inp in enumerate(batch):
            gray = None
            for row in self.yunet.detect_raw(inp.bgr):
                box = map_box(row[0], row[1], row[2], row[3], inp)
                if box is None:
                    continue
                if gray is None:
                    gray = cv2.cvtColor(inp.bgr, cv2.COLOR_BGR2GRAY)
                crops.append(self.crop(gray, row))
                metas.append((idx, box, float(row[14])))
        out: list[list[dict[str, Any]]] = [[] for _ in batch]
        if not crops:
            return out
        x = (np.stack(crops).astype(np.float32) / 255.0 - 0.5) * 2.0
        with self.torch.inference_mode():
            probs = self.model(self.torch.from_numpy(x[:, None]).to(self.device)).cpu().numpy()
        for (idx, box, conf), p in zip(metas, probs):
            out[idx].append(emotion_result(box, conf, p))
        return out
