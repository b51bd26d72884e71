"""Formats benchmark: ms per image to read a 12 MP photo in each format Loupe accepts, at the analysis size.

One real photo (skimage's coffee, 600x400) is enlarged to 4000x3000 (12 MP, Lanczos) and written as JPEG
(q 90), PNG, WebP (q 90), HEIC (q 90, pillow-heif/libheif + x265), AVIF (q 80, Pillow/libavif), and as a
DNG camera RAW (12-bit RGGB Bayer mosaic of the same pixels, uncompressed) twice: without a preview (Loupe
demosaics it at half size with LibRaw) and with the 1620x1080 embedded JPEG preview cameras write (Loupe
decodes that). The DNGs are written by tests/factories/formats.py, the writer the tests use.

Each file goes through `app.imaging.decode.decode_image` exactly as /v1/analyze reads it: RGB with the
longest side kept >= ANALYSIS_MAX_DIM (1024), and grey as the gate (/v1/quality) reads it. Median of
`--rounds` runs after one warm-up, single thread; the ratio is against the JPEG of the same photo in the
same run. Also printed: the file size, and the decode's memory estimate (`probe().cost_bytes`, what the
decode budget reserves).
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SIZE = (4000, 3000)
ANALYSIS_DIM = 1024


def photo_12mp() -> Any:
    import numpy as np
    from PIL import Image
    from skimage import data

    return np.asarray(Image.fromarray(data.coffee()).resize(SIZE, Image.Resampling.LANCZOS))


def encoded(rgb: Any) -> dict[str, bytes]:
    import io

    from PIL import Image

    from tests.factories.formats import avif_bytes, dng_bytes, heic_bytes

    def pil(fmt: str, **kw: Any) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, format=fmt, **kw)
        return buf.getvalue()

    preview = Image.fromarray(rgb).resize((1620, 1080), Image.Resampling.LANCZOS)
    import numpy as np

    return {
        "JPEG q90": pil("JPEG", quality=90),
        "PNG": pil("PNG"),
        "WebP q90": pil("WEBP", quality=90),
        "HEIC q90": heic_bytes(rgb, quality=90),
        "AVIF q80": avif_bytes(rgb, quality=80),
        "DNG, no preview (demosaic)": dng_bytes(rgb, bits=12),
        "DNG + 1620 px preview": dng_bytes(rgb, bits=12, preview=np.asarray(preview)),
    }


def timed(fn: Any, rounds: int) -> float:
    fn()  # warm-up
    runs = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        runs.append((time.perf_counter() - t0) * 1000)
    return statistics.median(runs)


def bench_formats(args: Any) -> dict[str, Any]:
    import cv2

    from app.imaging.decode import decode_image, probe

    cv2.setNumThreads(1)
    rounds = max(1, int(getattr(args, "rounds", 5) or 5))
    rgb = photo_12mp()
    files = encoded(rgb)
    print(f"\n## formats: reading a {SIZE[0]}x{SIZE[1]} photo (skimage coffee, enlarged) at the analysis size "
          f"({ANALYSIS_DIM}), median of {rounds}, 1 thread")
    print("| format | file MB | decoded from | RGB ms | ratio | grey ms | ratio | memory estimate MB |")
    print("|---|---|---|---|---|---|---|---|")
    out: dict[str, Any] = {}
    base_rgb = base_gray = None
    for name, data in files.items():
        def rgb_read(data: bytes = data) -> Any:
            return decode_image(data, max_pixels=100_000_000, min_dim=ANALYSIS_DIM)

        def gray_read(data: bytes = data) -> Any:
            return decode_image(data, max_pixels=100_000_000, min_dim=ANALYSIS_DIM, gray=True)

        img = rgb_read()
        ms_rgb, ms_gray = timed(rgb_read, rounds), timed(gray_read, rounds)
        base_rgb, base_gray = base_rgb or ms_rgb, base_gray or ms_gray
        cost = probe(data, max_pixels=100_000_000, min_dim=ANALYSIS_DIM).cost_bytes
        out[name] = {"bytes": len(data), "rgb_ms": ms_rgb, "gray_ms": ms_gray, "cost_bytes": cost,
                     "decoded_from": img.decoded_from, "pixels": list(img.pixels.shape)}
        print(f"| {name} | {len(data) / 1e6:.1f} | {img.decoded_from or img.format} | {ms_rgb:.1f} | "
              f"{ms_rgb / base_rgb:.2f} | {ms_gray:.1f} | {ms_gray / base_gray:.2f} | {cost / 2**20:.0f} |")
    return out


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    bench_formats(parser.parse_args())
