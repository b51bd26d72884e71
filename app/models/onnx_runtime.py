"""ONNX Runtime / OpenVINO for the neural models: the exported graph, cached next to its source, and one session.

`INFERENCE_RUNTIME` picks the runtime: `onnxruntime` (default), `openvino`, or `torch` (eager PyTorch, the
reference). An adapter that supports the first two keeps its torch module only to export it:

1. `ensure_onnx(source, dest, export)`: `dest` (e.g. `NIMA_koniq-250367ae.nima_technical.onnx` beside the `.pth`) is used
   when its metadata names the SHA-256 of `source` (the published weights) and the adapter; otherwise `export(tmp)` writes
   it again (torch is imported for this step only), the hash is stamped into the model's metadata and the
   file is moved into place atomically. A changed source is therefore re-exported on its next load;
   `scripts/download_models.py` exports right after downloading, so a server never pays for it.
2. `Session(path, runtime, threads)`: one inference session, its intra-op threads set so that the analysis
   pool's workers and the runtime do not oversubscribe the cores (`torch_threads_for`: cores / workers).

The graphs are exported in fp32 from the same modules the torch runtime runs, with a dynamic batch axis;
tests/unit/test_onnx_runtime.py checks each model's outputs against torch on real photos.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from app.models.download import sha256_file

log = logging.getLogger("loupe.models")

RUNTIMES = ("onnxruntime", "openvino", "torch")
SOURCE_KEY = "loupe.source_sha256"
OPSET = 17

_export_lock = threading.Lock()
_sha_cache: dict[tuple[str, int, int], str] = {}


def sha256_of(path: Path) -> str:
    """The SHA-256 of a file, or of a folder's files (each one's relative name and SHA-256, sorted; the exports
    and their temporary files left out), cached by path, size and mtime."""
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file() and ".onnx" not in p.name) if path.is_dir() else [path]
    stat_key = (str(path), sum(p.stat().st_size for p in files), max((p.stat().st_mtime_ns for p in files), default=0))
    if stat_key not in _sha_cache:
        if path.is_dir():
            listing = "".join(f"{p.relative_to(path).as_posix()}\0{sha256_file(p)}\n" for p in files)
            _sha_cache[stat_key] = hashlib.sha256(listing.encode()).hexdigest()
        else:
            _sha_cache[stat_key] = sha256_file(path)
    return _sha_cache[stat_key]


def _varint(f: Any) -> int | None:
    """One protobuf varint from file-like `f` (None at the end of the input)."""
    result = shift = 0
    while True:
        b = f.read(1)
        if not b:
            return None
        result |= (b[0] & 0x7F) << shift
        if b[0] < 0x80:
            return result
        shift += 7
        if shift > 63:
            raise ValueError("malformed varint")


def _fields(f: Any, wanted: int) -> Iterator[bytes]:
    """The payloads of length-delimited field `wanted` at the top level of a protobuf message read from `f`,
    skipping every other field by its length (so a graph's weights are never read)."""
    while (tag := _varint(f)) is not None:
        field, wire = tag >> 3, tag & 7
        if wire == 0:
            _varint(f)
        elif wire == 1:
            f.seek(8, io.SEEK_CUR)
        elif wire == 5:
            f.seek(4, io.SEEK_CUR)
        elif wire == 2:
            size = _varint(f) or 0
            if field == wanted:
                payload = f.read(size)
                if len(payload) < size:
                    return  # truncated file
                yield payload
            else:
                f.seek(size, io.SEEK_CUR)
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")


def metadata_props(onnx_file: Path) -> dict[str, str]:
    """An ONNX file's `metadata_props` (ModelProto field 14: key 1, value 2) read from the protobuf wire format
    directly: a few hundred bytes are read and the graph is skipped by its length, where `onnx.load` would parse
    the whole file (hundreds of MB of weights, resident until the allocator returns them)."""
    props: dict[str, str] = {}
    with open(onnx_file, "rb") as f:
        for entry in _fields(f, 14):
            key = b"".join(_fields(io.BytesIO(entry), 1)).decode("utf-8")
            props[key] = b"".join(_fields(io.BytesIO(entry), 2)).decode("utf-8")
    return props


def stamped_source(onnx_file: Path) -> str | None:
    """The source hash stamped into an exported graph's metadata (None: absent or unreadable)."""
    try:
        return metadata_props(onnx_file).get(SOURCE_KEY)
    except (OSError, ValueError):  # a truncated or foreign file is re-exported
        return None


def ensure_onnx(source: Path, dest: Path, export: Callable[[Path], None], what: str) -> Path:
    """`dest`, exported from `source` by `export(path)` unless it already holds this source's export as `what`
    (the adapter: one file may be exported by two adapters, and a checkpoint of the wrong kind must still be
    refused by the export's own checks)."""
    sha = f"{sha256_of(source)} {what}"
    with _export_lock:
        if dest.is_file() and stamped_source(dest) == sha:
            return dest
        import onnx

        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
        log.info("exporting %s to ONNX (%s)", source, dest.name)
        try:
            export(tmp)
            model = onnx.load(str(tmp))
            del model.metadata_props[:]
            entry = model.metadata_props.add()
            entry.key, entry.value = SOURCE_KEY, sha
            onnx.save(model, str(tmp))
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)
        return dest


def onnx_file_for(source: Path, what: str) -> Path:
    """Where a source's export for adapter `what` is cached: beside it (`weights.pth` → `weights.<what>.onnx`; a
    folder → `folder/<what>.onnx`), or under the user's cache folder when that place is read-only (a mounted
    model volume)."""
    source = Path(source)
    beside = source / f"{what}.onnx" if source.is_dir() else source.with_name(f"{source.stem}.{what}.onnx")
    if os.access(beside.parent, os.W_OK):
        return beside
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "loupe" / "onnx"
    return cache / f"{hashlib.sha256(str(source.resolve()).encode()).hexdigest()[:16]}-{beside.name}"


def export_module(module: Any, example: Sequence[Any], dest: Path, input_names: Sequence[str],
                  output_names: Sequence[str], dynamic: dict[str, dict[int, str]] | None = None) -> None:
    """torch.onnx export of `module` (eval, fp32, the TorchScript exporter at opset 17). Every input and output
    gets a dynamic batch axis; `dynamic` adds others (a text's sequence, an image's height and width)."""
    import torch

    axes = {name: {0: "batch"} for name in (*input_names, *output_names)}
    for name, more in (dynamic or {}).items():
        axes[name] = {**axes.get(name, {}), **more}
    with torch.inference_mode():
        torch.onnx.export(module, tuple(example), str(dest), input_names=list(input_names),
                          output_names=list(output_names), dynamic_axes=axes, opset_version=OPSET, dynamo=False)


class Session:
    """One exported graph on ONNX Runtime or OpenVINO (CPU), run with named numpy inputs."""

    def __init__(self, path: Path, runtime: str, threads: int):
        if runtime not in ("onnxruntime", "openvino"):
            raise ValueError(f"not an ONNX runtime: {runtime!r}")
        self.path, self.runtime, self.threads = Path(path), runtime, max(1, int(threads))
        if runtime == "onnxruntime":
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.intra_op_num_threads = self.threads
            options.inter_op_num_threads = 1
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            # no arena: it keeps each session's largest batch's activations for ever (NIMA at batch 16: 919 MiB
            # peak held after the batch, against 716 peak and back to 547 without; the same speed, 241 vs 245 ms/img)
            options.enable_cpu_mem_arena = False
            self._ort = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            self.input_names = [i.name for i in self._ort.get_inputs()]
            self.output_names = [o.name for o in self._ort.get_outputs()]
        else:
            import openvino as ov

            core = ov.Core()
            model = core.read_model(str(path))
            # f32: OpenVINO would pick bf16 by itself on CPUs with AVX512-BF16/AMX (outputs then move by ~1e-4)
            self._ov = core.compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": self.threads,
                                                         "PERFORMANCE_HINT": "LATENCY",
                                                         "INFERENCE_PRECISION_HINT": "f32"})
            self.input_names = [i.get_any_name() for i in self._ov.inputs]
            self.output_names = [o.get_any_name() for o in self._ov.outputs]

    def input_shape(self, name: str) -> list[int | None]:
        """An input's shape as the graph declares it (None: a dynamic axis, e.g. the batch)."""
        return self._shape(name, inputs=True)

    def output_shape(self, name: str) -> list[int | None]:
        """An output's shape as the graph declares it (None: a dynamic axis)."""
        return self._shape(name, inputs=False)

    def _shape(self, name: str, inputs: bool) -> list[int | None]:
        if self.runtime == "onnxruntime":
            nodes = self._ort.get_inputs() if inputs else self._ort.get_outputs()
            node = next(n for n in nodes if n.name == name)
            return [d if isinstance(d, int) else None for d in node.shape]
        ports = self._ov.inputs if inputs else self._ov.outputs
        port = next(p for p in ports if name in p.get_names())
        return [d.get_length() if d.is_static else None for d in port.get_partial_shape()]

    def run(self, **inputs: np.ndarray) -> list[np.ndarray]:
        """The outputs, in the graph's order. Thread-safe (OpenVINO: one infer request per call)."""
        if self.runtime == "onnxruntime":
            return [np.asarray(o) for o in self._ort.run(None, inputs)]
        request = self._ov.create_infer_request()
        result = request.infer(inputs)
        return [np.asarray(result[out]) for out in self._ov.outputs]
