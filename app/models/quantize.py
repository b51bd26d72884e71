"""QUANTIZE=int8: static int8 versions of the exported graphs, used only where they score like fp32.

For NIMA (both), CLIP's image tower and DINOv2 (the models where int8 pays: on the 2-core AMD EPYC
with AVX512-VNNI here, InceptionResNetV2 at 299 px went from 121 to 35 ms per image and CLIP ViT-B/32's
image tower from 44 to 15; DeepFace's emotion CNN, 0.5 ms, stays fp32):

1. **Quantize** (once per fp32 graph, cached beside it as `<graph>.int8.onnx`): ONNX Runtime's static
   quantization in QDQ format, weights int8 per channel, activations uint8 per tensor with MinMax ranges
   calibrated on real photos through the adapter's own preprocessing. The photos are
   QUANTIZE_CALIBRATION_DIR's (the operator's own, best: like what the service will see), else
   scikit-image's bundled photos (astronaut, coffee, …) and a blurred and a darkened copy of each.
2. **Measure** on photos the calibration did not see (the other half of the set, with their copies): each
   model's deviation from its fp32 graph in the unit that matters for it: NIMA, the mean absolute difference
   of its score as a share of the score's range; CLIP and DINOv2, one minus the lowest cosine between the
   int8 and fp32 embeddings. The deviation is stamped into the int8 graph with the fp32 graph's stamp and
   the calibration set's digest, so it is measured once.
3. **Decide** at every load: the int8 graph is used when its deviation is within the model's limit
   (`Int8Check.limit`), otherwise the fp32 graph runs and the log says why. /health shows, per model,
   the precision in use, the deviation, the metric and the limit.

Quantization imports onnxruntime.quantization (and onnx); neither torch nor transformers.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from app.models.onnx_runtime import SOURCE_KEY, Session, metadata_props, stamped_source

log = logging.getLogger("loupe.models")

#: bump when the recipe below changes: every int8 graph is quantized again
RECIPE = "ortopt-qdq-s8w-perchannel-u8a-minmax-v3"
DEVIATION_KEY = "loupe.int8_deviation"
#: scikit-image's bundled photos (no download), colour and grey, faces, animals, textures, night sky
CALIBRATION_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "immunohistochemistry",
                      "hubble_deep_field", "retina", "grass", "gravel", "brick", "moon", "coins", "clock",
                      "stereo_motorcycle", "colorwheel")
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp", ".heic", ".heif", ".avif")
_lock = threading.Lock()


@dataclass(frozen=True)
class Int8Check:
    """How far a model's int8 graph may be from its fp32 graph. `measure(fp32_outputs, int8_outputs)` gets the
    graph's first output on the same inputs and returns the deviation, in `metric`'s unit."""

    metric: str
    limit: float
    measure: Callable[[np.ndarray, np.ndarray], float]
    #: the operators quantized (None: every one ONNX Runtime can); transformers keep LayerNorm, Softmax and GELU
    #: in fp32, where int8 ranges lose the most, and quantize their matrix products only
    op_types: tuple[str, ...] | None = None


def embedding_check(limit: float = 0.01) -> Int8Check:
    """For embeddings: 1 − the lowest cosine similarity between int8 and fp32 vectors of the same photo."""

    def measure(ref: np.ndarray, out: np.ndarray) -> float:
        a = ref / np.linalg.norm(ref, axis=1, keepdims=True)
        b = out / np.linalg.norm(out, axis=1, keepdims=True)
        return float(1.0 - (a * b).sum(axis=1).min())

    return Int8Check("1 - min cosine to fp32", limit, measure, op_types=("MatMul", "Gemm", "Conv"))


def score_check(score: Callable[[np.ndarray], np.ndarray], span: float, limit: float = 0.02) -> Int8Check:
    """For scores: the mean absolute difference of `score(outputs)` as a share of the score's range `span`."""

    def measure(ref: np.ndarray, out: np.ndarray) -> float:
        return float(np.mean(np.abs(score(out) - score(ref))) / span)

    return Int8Check("mean |score difference| / score range", limit, measure)


@dataclass(frozen=True)
class Precision:
    """What a model runs at, for /health."""

    precision: str  # "fp32" | "int8"
    int8_deviation: float | None = None
    int8_metric: str | None = None
    int8_limit: float | None = None

    def public(self) -> dict[str, Any]:
        return {"precision": self.precision, "int8_deviation": self.int8_deviation,
                "int8_metric": self.int8_metric, "int8_limit": self.int8_limit}


def calibration_photos(folder: str | os.PathLike | None) -> tuple[list[np.ndarray], str]:
    """(RGB uint8 photos, a digest naming the set). `folder`: QUANTIZE_CALIBRATION_DIR (its images, sorted, at
    most 64); else scikit-image's photos. Each photo comes with a blurred and a darkened copy (quality spans)."""
    import cv2

    from app.imaging.decode import decode_image, resize_max

    photos: list[np.ndarray] = []
    if folder:
        files = _folder_images(folder)
        photos = [as_rgb(decode_image(f.read_bytes(), max_pixels=50_000_000).pixels) for f in files]
        name = folder_digest(files)
    else:
        try:
            from importlib.metadata import version

            import skimage.data as samples
        except ImportError as exc:
            raise ValueError("QUANTIZE=int8 needs calibration photos: set QUANTIZE_CALIBRATION_DIR to a folder of "
                             "your own photos, or install scikit-image (its bundled photos are the default)") from exc
        for n in CALIBRATION_PHOTOS:
            img = getattr(samples, n)()
            img = img[0] if isinstance(img, tuple) else img
            photos.append(as_rgb(img.astype(np.uint8)))
        name = f"skimage-{version('scikit-image')}"
    out = []
    for rgb in (resize_max(p, 1024) for p in photos):  # the models see a few hundred pixels: calibrate cheaply
        out += [rgb, cv2.GaussianBlur(rgb, (0, 0), 3.0), (rgb.astype(np.float32) * 0.35).astype(np.uint8)]
    return out, name


def as_rgb(pixels: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.stack([pixels] * 3, axis=-1) if pixels.ndim == 2 else pixels[..., :3])


def as_decoded(rgb: np.ndarray) -> Any:
    """A calibration photo as the DecodedImage an adapter's `prepare` takes."""
    from app.imaging.decode import DecodedImage

    return DecodedImage(pixels=rgb, width=rgb.shape[1], height=rgb.shape[0], sha256="", format="CALIBRATION",
                        n_bytes=0)


def int8_file_for(graph: Path) -> Path:
    return graph.with_name(graph.stem + ".int8.onnx")


class _QuietQuantizer(logging.Filter):
    """ONNX Runtime's quantizer logs a warning per LayerNorm bias and a tip on the root logger: not ours to show."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "onnxruntime/quantization" not in record.pathname.replace(os.sep, "/")


def _quantize(graph: Path, dest: Path, input_name: str, calibration: Sequence[np.ndarray],
              op_types: Sequence[str] | None) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(calibration)

        def get_next(self) -> dict[str, np.ndarray] | None:
            x = next(self.items, None)
            return None if x is None else {input_name: x[None]}

    from onnxruntime.quantization.shape_inference import quant_pre_process

    quiet = _QuietQuantizer()
    logging.getLogger().addFilter(quiet)
    optimized = dest.with_name(dest.name + ".pre")
    try:
        # ONNX Runtime's own graph optimisations first (BatchNorm folded into the convolutions, …), so that what
        # gets quantized is what runs; shape inference from the graph (not symbolic: the shapes are static)
        quant_pre_process(str(graph), str(optimized), skip_symbolic_shape=True)
        quantize_static(str(optimized), str(dest), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        op_types_to_quantize=list(op_types) if op_types else None)
    finally:
        logging.getLogger().removeFilter(quiet)
        optimized.unlink(missing_ok=True)


def _stamp(path: Path, props: dict[str, str]) -> None:
    import onnx

    model = onnx.load(str(path))
    del model.metadata_props[:]
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(path))


def _run(session: Session, input_name: str, inputs: Sequence[np.ndarray]) -> np.ndarray:
    """One input at a time: a model whose input follows the photo's shape (DINOv2 without a crop) cannot stack."""
    return np.concatenate([session.run(**{input_name: x[None]})[0] for x in inputs])


def _folder_images(folder: str | os.PathLike) -> list[Path]:
    files = sorted(p for p in Path(folder).expanduser().rglob("*") if p.suffix.lower() in _IMAGE_SUFFIXES)[:64]
    if len(files) < 4:
        raise ValueError(f"QUANTIZE_CALIBRATION_DIR={folder} holds {len(files)} images; int8 needs at least 4")
    return files


def folder_digest(files: Sequence[Path]) -> str:
    digest = hashlib.sha256()
    for f in files:
        digest.update(hashlib.sha256(f.read_bytes()).digest())
    return "dir:" + digest.hexdigest()[:16]


def ensure_int8(graph: Path, input_name: str, prepare: Callable[[Any], np.ndarray], check: Int8Check,
                calibration_dir: str | None) -> tuple[Path, float]:
    """The int8 graph of `graph` and its measured deviation: quantized and measured unless a cached one was made
    from this graph with this recipe — and, when QUANTIZE_CALIBRATION_DIR is set, from that folder's photos (without
    it, any measured int8 graph of this graph serves: one quantized where scikit-image is installed runs where it is
    not). `prepare` is the adapter's own (DecodedImage → input)."""
    prefix = f"{stamped_source(graph)} {RECIPE} "
    dest = int8_file_for(graph)
    with _lock:
        if dest.is_file():
            props = metadata_props(dest)
            stamp = props.get(SOURCE_KEY, "")
            if stamp.startswith(prefix) and DEVIATION_KEY in props and (
                    not calibration_dir or stamp[len(prefix):] == folder_digest(_folder_images(calibration_dir))):
                return dest, float(props[DEVIATION_KEY])
        photos, calib_name = calibration_photos(calibration_dir)
        key = prefix + calib_name
        inputs = [prepare(as_decoded(rgb)) for rgb in photos]
        # every other photo (with its two copies) calibrates; the rest measure
        calibrate = [x for i, x in enumerate(inputs) if (i // 3) % 2 == 0]
        evaluate = [x for i, x in enumerate(inputs) if (i // 3) % 2 == 1]
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
        log.info("quantizing %s to int8 (calibration: %s, %d inputs)", graph.name, calib_name, len(calibrate))
        try:
            _quantize(graph, tmp, input_name, calibrate, check.op_types)
            ref = _run(Session(graph, "onnxruntime", 2), input_name, evaluate)
            out = _run(Session(tmp, "onnxruntime", 2), input_name, evaluate)
            deviation = check.measure(ref.astype(np.float64), out.astype(np.float64))
            _stamp(tmp, {SOURCE_KEY: key, DEVIATION_KEY: repr(deviation)})
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)
        log.info("%s int8: %s = %.4g on %d held-out inputs", graph.name, check.metric, deviation, len(evaluate))
        return dest, deviation


def open_session(graph: Path, settings: Any, threads: int, *, name: str, input_name: str,
                 prepare: Callable[[Any], np.ndarray], check: Int8Check) -> tuple[Session, Precision]:
    """The model's session on INFERENCE_RUNTIME: on its int8 graph when QUANTIZE=int8 and the deviation is within
    `check.limit`, else on the fp32 graph (with the reason logged)."""
    runtime = settings.inference_runtime
    if getattr(settings, "quantize", "none") != "int8":
        return Session(graph, runtime, threads), Precision("fp32")
    int8, deviation = ensure_int8(graph, input_name, prepare, check, settings.quantize_calibration_dir or None)
    if deviation <= check.limit:
        return Session(int8, runtime, threads), Precision("int8", deviation, check.metric, check.limit)
    log.warning("%s stays fp32 under QUANTIZE=int8: its int8 graph deviates by %.4g (%s), over the limit %.4g",
                name, deviation, check.metric, check.limit)
    return Session(graph, runtime, threads), Precision("fp32", deviation, check.metric, check.limit)
