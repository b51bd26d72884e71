"""Process-wide memory tuning, applied once when the `app` package is imported.

Each thread that allocates gets its own glibc malloc arena (up to 8 x cores). Model inference
runs on several pool threads, and the large, short-lived activation buffers of each batched
forward pass then stay mapped in separate arenas. Two arenas keep peak RSS about 7 % lower with
every model loaded (scripts/bench.py models: 3171 → 2930 MiB) at no measurable speed cost.
MALLOC_ARENA_MAX in the environment, if set, wins.

What made RSS climb under sustained load was not the allocator but reference cycles that kept
every request's images alive until the cyclic GC ran (see `app.core.errors.detached`). A fixed
mmap threshold (glibc's MALLOC_MMAP_THRESHOLD_=262144) also returns image buffers to the OS at
once, but costs about a third of /v1/analyze throughput here (page faults of fresh mappings:
scripts/soak.py --mix analyze, 40 vs 62 requests/s) for no gain once the cycles are gone, so it
is left to the operator's environment.
"""

from __future__ import annotations

import ctypes
import os
import sys

M_ARENA_MAX = -8  # from glibc's malloc.h


def limit_malloc_arenas(n: int = 2) -> bool:
    if not sys.platform.startswith("linux") or os.environ.get("MALLOC_ARENA_MAX"):
        return False
    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(M_ARENA_MAX, n))
    except (OSError, AttributeError):  # musl or another libc: nothing to tune
        return False


def release_free_memory() -> bool:
    """Give the heap's free pages back to the OS (glibc `malloc_trim`). Loading a model parses its file and
    builds its weights; the parse buffers (hundreds of MB for NIMA or CLIP) are freed but stay in the heap,
    resident, until reused. Called after each model load (scripts/bench.py models: fp32 ONNX Runtime's peak
    RSS with every model loaded and a batch of 16 in flight, 2143 → see README)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0))
    except (OSError, AttributeError):  # musl or another libc
        return False
