"""What every torch adapter (NIMA, CLIP) shares: device, threads, precision and input tensors.

These are the runtime's rules, not any one model's: which device a model runs on, how
many intra-op threads one forward may use next to the other pool workers, when bf16
autocast is on, and how decoded pixels become a tensor. Keeping them here means the
NIMA and CLIP adapters import the runtime, never each other, and a future runtime
(LiteRT, ONNX) gets a sibling module with the same shape.

torch is imported inside each function: importing this module costs nothing, so an
adapter that is never loaded never pays for torch.
"""

from __future__ import annotations

import logging
import os
from contextlib import nullcontext

import numpy as np

from app.core.config import Settings
from app.imaging.decode import DecodedImage

log = logging.getLogger("loupe.models")


# --------------------------------------------------------------------------------------
# Device
# --------------------------------------------------------------------------------------


def cuda_available() -> bool:
    """True when torch imports and sees a CUDA device."""
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # noqa: BLE001 - no torch, no CUDA
        return False


def resolve_device(requested: str, *, as_given: bool = False) -> str:
    """The torch device for `requested` ("auto", "cpu", "cuda", or a torch device string).

    "cpu" is "cpu" and "auto" is "cuda" when CUDA is available, else "cpu". The DEVICE
    setting's "cuda" (any other value) becomes "cuda" when available, else "cpu" with a
    warning, so a server configured for a GPU still starts on a machine without one.

    `as_given=True` is for an adapter's `load(path, device)`: the registry has already
    resolved the device, and a caller that names one explicitly gets exactly that, so
    only "auto" is resolved there.
    """
    if requested == "cpu":
        return "cpu"
    if as_given and requested != "auto":
        return requested
    has_cuda = cuda_available()
    if requested == "cuda" and not has_cuda:
        log.warning("DEVICE=cuda but no CUDA device is available; using cpu")
    return "cuda" if has_cuda else "cpu"


# --------------------------------------------------------------------------------------
# Threads
# --------------------------------------------------------------------------------------


def torch_threads_for(settings: Settings) -> int:
    """Intra-op threads per forward: the cores divided by the analysis pool's workers.

    The registry runs models concurrently on `settings.threads` pool workers, so
    each forward gets `cpu_count // threads` (default: 1) and the cores are never
    oversubscribed. Measured on a busy 2-core machine: the two NIMAs one after
    the other with 2 threads each took 2.1-2.5 s per image, side by side with one
    thread each 0.94-1.0 s (OpenMP teams stall when a core is taken). Set
    ANALYSIS_THREADS=1 to give a lone forward every core instead.
    """
    cpus = os.cpu_count() or 1
    return max(1, cpus // max(1, min(settings.threads, cpus)))


def configure_torch_threads(settings: Settings) -> int:
    """Apply `torch_threads_for(settings)` in the calling thread.

    Called before every forward: torch's OpenMP thread count is per thread once a
    thread has run a parallel op, so setting it once at load time does not reach
    pool threads that already ran torch code. Cheap when nothing changes.
    """
    import torch

    n = torch_threads_for(settings)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


# --------------------------------------------------------------------------------------
# Precision
# --------------------------------------------------------------------------------------


def bf16_wanted(settings: Settings, device: str) -> bool:
    """bf16 autocast when the (optional) `torch_bf16` setting asks for it and the hardware has it.

    On a CPU with AVX512-BF16 / AMX it halves NIMA and CLIP time; features move by
    about 0.4 % (relative L2, measured with random weights). Off by default.
    """
    if not settings.torch_bf16:
        return False
    import torch

    if device == "cpu":
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except Exception:  # noqa: BLE001
            return False
    return device.startswith("cuda") and torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def autocast(device: str, bf16: bool):
    """bf16 autocast on `device` when `bf16`, else a no-op context."""
    import torch

    if not bf16:
        return nullcontext()
    return torch.autocast("cpu" if device == "cpu" else "cuda", dtype=torch.bfloat16)


# --------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------


def uint8_chw_tensor(rgb: np.ndarray):
    """HxWx3 uint8 → contiguous (3, H, W) uint8 tensor (read-only arrays are copied, not warned about)."""
    import torch

    arr = np.require(rgb, dtype=np.uint8, requirements=["C", "W"])
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def source_rgb(image: DecodedImage, short_target: int, max_dim: int) -> np.ndarray:
    """The shared reduced copy (`rgb_max(max_dim)`) when its short side still covers
    `short_target`, else the decoded pixels as they are."""
    h, w = image.rgb.shape[:2]
    short, long = min(h, w), max(h, w)
    if long > max_dim and short * max_dim / long >= short_target:
        return image.rgb_max(max_dim)
    return image.rgb


def l2_normalize(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Each vector divided by its L2 norm (zero vectors stay zero), float32: the embeddings' unit form."""
    x = np.asarray(x, dtype=np.float32)
    norm = np.linalg.norm(x, axis=axis, keepdims=True)
    return (x / np.maximum(norm, 1e-12)).astype(np.float32, copy=False)
