"""The one door to torch's private int8 GEMM: `int8_matmul`, and its exactness self-test.

Why wrapped: the int8 filter of the radius scan needs an exact int8 × int8 →
int32 matrix product (oneDNN VNNI: ~650 GOPS on 2 AVX-512 cores, ~3× float32),
and torch offers it only as the private ``torch._int_mm``, which a torch upgrade
may rename, remove or change. Every call goes through `int8_matmul`, so such a
change shows up in one place: tests/unit/test_cluster.py compares it with an
exact numpy product and fails loudly, and at run time

- `int8_matmul` raises `Int8MatmulUnavailable` (naming the torch version) when
  the function is gone, and
- `int8_available()` runs a one-time self-test (edge values ±127, a transposed
  operand, as the scan uses it) and answers False on any failure or mismatch,
  logging why; the engine then uses its float32 path, which gives the same
  labels, only slower.
"""

from __future__ import annotations

import logging
import threading

import numpy as np

log = logging.getLogger("loupe.neighbors")

_INT8_STATE: dict[str, bool] = {}  # "ok": the self-test's verdict, once per process
_INT8_LOCK = threading.Lock()


class Int8MatmulUnavailable(RuntimeError):
    """This torch has no usable ``torch._int_mm``."""


def int8_matmul(a, b, out=None):
    """Exact ``a @ b`` of int8 torch tensors a (m, k) and b (k, n), as int32 (m, n).

    `out`, when given, is an int32 (m, n) tensor that receives the product (no
    allocation per block). Raises Int8MatmulUnavailable when this torch lacks the
    kernel; callers that can do without it check `int8_available()` first.
    """
    import torch

    mm = getattr(torch, "_int_mm", None)
    if mm is None:
        raise Int8MatmulUnavailable(
            f"torch {torch.__version__} has no torch._int_mm (the private int8 GEMM behind "
            "app.neighbors.kernels.int8_matmul); use the float32 engine or adapt int8_matmul."
        )
    return mm(a, b) if out is None else mm(a, b, out=out)


def int8_available() -> bool:
    """Whether torch's int8 GEMM is present and exact here (checked once per process)."""
    with _INT8_LOCK:
        if "ok" not in _INT8_STATE:
            try:
                import torch

                rng = np.random.default_rng(1)
                a = rng.integers(-127, 128, (67, 520), dtype=np.int8)
                b = rng.integers(-127, 128, (131, 520), dtype=np.int8)
                a[0] = 127
                b[0] = -127
                b[1] = 127
                got = int8_matmul(torch.from_numpy(a), torch.from_numpy(b).T).numpy()
                want = a.astype(np.int64) @ b.astype(np.int64).T
                _INT8_STATE["ok"] = bool(np.array_equal(got, want))
                if not _INT8_STATE["ok"]:
                    log.warning("int8_matmul is not exact with this torch: the float32 engine is used")
            except Exception as exc:  # noqa: BLE001 - any failure means: use float32
                log.warning("int8_matmul unavailable (%s): the float32 engine is used", exc)
                _INT8_STATE["ok"] = False
        return _INT8_STATE["ok"]
