"""Ray benchmark: images/s of `loupe score` in-process vs `--engine ray` on the same photos, in the same run.

N real photos (skimage's astronaut, coffee, chelsea, rocket, motorcycle, each resized to 640-2048 px on the
longest side, some cropped, JPEG quality 70-95) are written to a temporary folder and scored twice with the
default analyses (blur, exposure, quality: BRISQUE and NIQE from ../shared/weights when MODEL_DIR is not set):

* in-process: `loupe score DIR` (the app in this process, --batch-size 8, --concurrency 2);
* Ray: a local Ray with every CPU of this machine (`ray.init(num_cpus=os.cpu_count())`, its start timed on its
  own), then `loupe score DIR --engine ray --batch-size 8` (actor start and model loading included: a job
  pays them once).

Printed: images/s of each, and the overhead ratio (in-process images/s / Ray images/s; above 1: Ray is slower
here). On one machine Ray cannot be faster than the in-process engine, which already uses the CPUs; the
figure is the price of the Ray plumbing (object store, read tasks, actor start) per image, what N nodes must
amortise. Run: python scripts/bench.py ray [--ray-images N].
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

NAMES = ("astronaut", "coffee", "chelsea", "rocket", "motorcycle_left")


def write_photos(folder: Path, n: int) -> None:
    import numpy as np
    from PIL import Image

    from tests.helpers import encode, photo

    rng = np.random.default_rng(0)
    for i in range(n):
        rgb = photo(NAMES[i % len(NAMES)])
        h, w = rgb.shape[:2]
        if i % 3 == 1:  # a crop
            y, x = int(rng.integers(0, h // 6)), int(rng.integers(0, w // 6))
            rgb = rgb[y:y + h * 4 // 5, x:x + w * 4 // 5]
        side = int(rng.integers(640, 2049))
        scale = side / max(rgb.shape[:2])
        im = Image.fromarray(np.ascontiguousarray(rgb)).resize(
            (max(1, round(rgb.shape[1] * scale)), max(1, round(rgb.shape[0] * scale))), Image.Resampling.LANCZOS)
        (folder / f"{i:04d}_{NAMES[i % len(NAMES)]}.jpg").write_bytes(encode(np.asarray(im), quality=int(rng.integers(70, 96))))


def model_dir(tmp: Path) -> str | None:
    """MODEL_DIR as set, else BRISQUE + NIQE from ../shared/weights (None: neither)."""
    if os.environ.get("MODEL_DIR"):
        return os.environ["MODEL_DIR"]
    from tests.helpers import SHARED_WEIGHTS

    md = tmp / "models"
    for sub, src in (("brisque", "brisque_libsvm_live"), ("niqe", "niqe_live")):
        if (SHARED_WEIGHTS / src).is_dir():
            shutil.copytree(SHARED_WEIGHTS / src, md / sub)
    return str(md) if md.is_dir() else None


def timed_score(argv: list[str]) -> tuple[float, int, str]:
    from app.cli import main

    out = io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(out):
        code = main(argv)
    return time.perf_counter() - t0, code, out.getvalue().strip()


def bench_ray(args: Any) -> dict[str, Any]:
    n = int(getattr(args, "ray_images", 256))
    cpus = os.cpu_count() or 1
    print(f"\n## ray: `loupe score` of {n} photos (640-2048 px JPEGs), in-process vs --engine ray on this machine "
          f"({cpus} CPUs)")
    with tempfile.TemporaryDirectory(prefix="loupe-bench-ray-") as tmp_name:
        tmp = Path(tmp_name)
        folder = tmp / "photos"
        folder.mkdir()
        write_photos(folder, n)
        md = model_dir(tmp)
        if md:
            os.environ["MODEL_DIR"] = md
        common = [str(folder), "--no-progress", "--batch-size", "8"]
        dt_in, code_in, line_in = timed_score(["score", *common, "--out", str(tmp / "inproc")])
        import ray

        t0 = time.perf_counter()
        ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
        dt_init = time.perf_counter() - t0
        try:
            dt_ray, code_ray, line_ray = timed_score(["score", *common, "--engine", "ray", "--out", str(tmp / "ray")])
        finally:
            ray.shutdown()
    rate_in, rate_ray = n / dt_in, n / dt_ray
    res = {"images": n, "cpus": cpus, "model_dir": md, "inprocess_s": dt_in, "inprocess_images_per_s": rate_in,
           "ray_init_s": dt_init, "ray_s": dt_ray, "ray_images_per_s": rate_ray, "overhead_ratio": rate_in / rate_ray,
           "exit_codes": [code_in, code_ray]}
    print(f"  models: {'BRISQUE + NIQE from ' + md if md else 'none (blur, exposure, quality from those)'}")
    print(f"  in-process : {dt_in:6.1f} s  {rate_in:6.2f} images/s   ({line_in})")
    print(f"  ray        : {dt_ray:6.1f} s  {rate_ray:6.2f} images/s   (+ {dt_init:.1f} s ray.init; {line_ray})")
    print(f"  overhead ratio (in-process / Ray images/s): {rate_in / rate_ray:.2f}")
    return res


if __name__ == "__main__":
    import argparse

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ray-images", type=int, default=256)
    bench_ray(p.parse_args())
