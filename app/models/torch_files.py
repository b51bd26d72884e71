"""Read a PyTorch weights file (`torch.save` of a state dict) into numpy, without torch.

The service runs on ONNX Runtime / OpenVINO without importing torch (its import alone costs
about 400 MiB of resident memory), yet a few published weights come only as `.pth` files: the
LAION aesthetic heads, DeepFace's emotion CNN. This module reads torch's zip format
(torch >= 1.6, what every current `torch.save` writes):

* `<archive>/data.pkl`: the pickled object, whose tensors are
  `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)` calls and whose storages are
  persistent ids `("storage", torch.<Type>Storage, key, location, numel)`;
* `<archive>/data/<key>`: each storage's raw bytes (little-endian unless `<archive>/byteorder` says
  otherwise).

Like `torch.load(weights_only=True)`, the unpickler resolves only the names a state dict needs
(an ordered dict, tensors, parameters, the storage types) and refuses every other global, so a
weights file cannot run code. Tensors come back as numpy arrays with their sizes and strides
applied (a view of a larger storage, e.g. a slice that was saved, gives just the view).
tests/unit/test_torch_files.py checks it against torch.load on the real LAION files and on
tensors of every dtype, offset and stride.
"""

from __future__ import annotations

import collections
import pickle
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

#: torch's legacy storage class names (what torch.save pickles) → numpy dtype
STORAGE_DTYPES: dict[str, Any] = {
    "DoubleStorage": np.float64, "FloatStorage": np.float32, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16, "CharStorage": np.int8,
    "ByteStorage": np.uint8, "BoolStorage": np.bool_,
    "BFloat16Storage": "bfloat16",  # no numpy dtype: widened to float32 on read
}


class WeightsFileError(ValueError):
    """Not a torch zip-format state dict this reader can read safely."""


class _StorageType:
    def __init__(self, name: str):
        self.name = name
        self.dtype = STORAGE_DTYPES[name]


def _bfloat16_to_float32(raw: np.ndarray) -> np.ndarray:
    """bfloat16 is the upper half of a float32: shift the 16 bits into place."""
    return (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32)


def _rebuild_tensor(storage: np.ndarray, offset: int, size: tuple[int, ...], stride: tuple[int, ...],
                    *_rest: Any) -> np.ndarray:
    if not size:
        return np.array(storage[offset])
    end = offset + sum((s - 1) * st for s, st in zip(size, stride)) + 1
    if min(size) == 0:
        return np.zeros(size, storage.dtype)
    if offset < 0 or end > storage.shape[0] or min(stride) < 0:
        raise WeightsFileError(f"a tensor of size {size}, stride {stride} at {offset} overruns its storage")
    view = np.lib.stride_tricks.as_strided(storage[offset:], shape=size,
                                           strides=[st * storage.itemsize for st in stride], writeable=False)
    return np.ascontiguousarray(view)


def _rebuild_parameter(data: np.ndarray, *_rest: Any) -> np.ndarray:
    return data


class _Unpickler(pickle.Unpickler):
    def __init__(self, file: Any, archive: zipfile.ZipFile, prefix: str, byteorder: str):
        super().__init__(file)
        self.archive, self.prefix, self.byteorder = archive, prefix, byteorder
        self.storages: dict[str, np.ndarray] = {}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if (module, name) == ("torch._utils", "_rebuild_parameter"):
            return _rebuild_parameter
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(name)
        raise WeightsFileError(f"{module}.{name} is not allowed in a weights file (only tensors in dicts are)")

    def persistent_load(self, pid: Any) -> np.ndarray:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], _StorageType)):
            raise WeightsFileError(f"unsupported storage reference {pid!r:.80}")
        _, kind, key, _location, numel = pid
        if key not in self.storages:
            raw = self.archive.read(f"{self.prefix}data/{key}")
            if kind.dtype == "bfloat16":
                arr = _bfloat16_to_float32(np.frombuffer(raw, np.dtype("<u2" if self.byteorder == "little" else ">u2")))
            else:
                dtype = np.dtype(kind.dtype).newbyteorder("<" if self.byteorder == "little" else ">")
                arr = np.frombuffer(raw, dtype).astype(np.dtype(kind.dtype), copy=False)
            if arr.shape[0] < int(numel):
                raise WeightsFileError(f"storage {key} holds {arr.shape[0]} elements, the file says {numel}")
            self.storages[key] = arr
        return self.storages[key]


def read_state_dict(path: Path) -> dict[str, np.ndarray]:
    """The tensors of a `torch.save`d state dict (or of a dict nested in it under one key, e.g. `state_dict`),
    as numpy arrays by their keys. Raises WeightsFileError for anything else (the legacy pre-1.6 format, a
    pickled module, a global outside the allowlist)."""
    path = Path(path)
    if not zipfile.is_zipfile(path):
        raise WeightsFileError(f"{path} is not a torch zip-format weights file (re-save it with torch >= 1.6)")
    with zipfile.ZipFile(path) as archive:
        pkl = [n for n in archive.namelist() if n.endswith("data.pkl") and n.count("/") == 1]
        if len(pkl) != 1:
            raise WeightsFileError(f"{path}: expected one <archive>/data.pkl, found {len(pkl)}")
        prefix = pkl[0][: -len("data.pkl")]
        byteorder = "little"
        if f"{prefix}byteorder" in archive.namelist():
            byteorder = archive.read(f"{prefix}byteorder").decode().strip() or "little"
        with archive.open(pkl[0]) as f:
            obj = _Unpickler(f, archive, prefix, byteorder).load()
    if isinstance(obj, dict) and len(obj) == 1 and isinstance(next(iter(obj.values())), dict):
        obj = next(iter(obj.values()))
    if not isinstance(obj, dict) or not all(isinstance(v, np.ndarray) for v in obj.values()):
        raise WeightsFileError(f"{path} does not hold a state dict of tensors")
    return {str(k): v for k, v in obj.items()}
