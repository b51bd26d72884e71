#!/usr/bin/env python3
"""Loupe benchmarks. Numbers and ratios against a baseline measured in the same run.

    python scripts/bench.py gate      # blur/exposure gate: images/s in-process and requests/s over HTTP
    python scripts/bench.py models    # full analysis: ms/image at batch 1 and 16 vs a sequential pipeline, peak RSS
    python scripts/bench.py tasks     # /v1/tasks (person + face box, face CLIP, tags): batch 1 and 16 vs 1 task/request
    python scripts/bench.py cluster   # DBSCAN on 10k and 100k x 512 vectors vs scikit-learn's brute DBSCAN
    python scripts/bench.py features  # noise measures and the MobileNet embedding, ms per image
    python scripts/bench.py collections  # classify (vs embed_mobilenet alone) and describe (full-size BLIP), batch 1/16
    python scripts/bench.py all

Each section prints a table; `--json FILE` also writes the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import resource
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores, {cpu}, Python {platform.python_version()}"


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def photos_1080p(n: int = 12) -> list[bytes]:
    """Real photos (skimage) resized/cropped to 1920x1080 JPEG q90, some degraded."""
    from skimage import data

    names = ["astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry"]
    out = []
    for i in range(n):
        rgb = getattr(data, names[i % len(names)])()[..., :3]
        h, w = rgb.shape[:2]
        scale = max(1920 / w, 1080 / h)
        big = cv2.resize(rgb, (int(np.ceil(w * scale)), int(np.ceil(h * scale))), interpolation=cv2.INTER_CUBIC)
        big = np.ascontiguousarray(big[:1080, :1920])
        if i % 3 == 1:
            big = cv2.GaussianBlur(big, (0, 0), 3)
        buf = io.BytesIO()
        Image.fromarray(big).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


# --------------------------------------------------------------------------- gate
def baseline_gate(data: bytes) -> float:
    """What the quality-gate design does: full decode, resize to 1600 px, Laplacian."""
    img = Image.open(io.BytesIO(data)).convert("RGB")
    img.thumbnail((1600, 1600))
    gray = cv2.cvtColor(np.asarray(img), cv2.COLOR_RGB2GRAY)
    return float(cv2.Laplacian(gray, cv2.CV_64F).var())


def loupe_gate(data: bytes, settings) -> dict:
    from app.imaging.decode import decode_image
    from app.services.gate import quality_gate

    img = decode_image(data, max_pixels=settings.max_image_pixels, min_dim=settings.analysis_max_dim, gray=True)
    return quality_gate(img, settings).model_dump()


def rate(fn, items, threads: int, seconds: float) -> float:
    """Items per second over at least `seconds`, `threads` workers."""
    done = 0
    t0 = time.perf_counter()
    with ThreadPoolExecutor(threads) as ex:
        while time.perf_counter() - t0 < seconds:
            list(ex.map(fn, items))
            done += len(items)
    return done / (time.perf_counter() - t0)


async def http_rate(base_url: str, body: bytes, content_type: str, seconds: float, concurrency: int) -> tuple[float, float]:
    import httpx

    stop = time.perf_counter() + seconds
    latencies: list[float] = []
    errors = 0

    async def worker(client):
        nonlocal errors
        while time.perf_counter() < stop:
            t = time.perf_counter()
            r = await client.post("/v1/quality", content=body, headers={"content-type": content_type})
            latencies.append(time.perf_counter() - t)
            if r.status_code != 200:
                errors += 1

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base_url, timeout=60, limits=limits) as client:
        await client.get("/health")
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        elapsed = time.perf_counter() - t0
    if errors:
        print(f"  !! {errors} HTTP errors")
    return len(latencies) / elapsed, float(np.percentile(latencies, 95) * 1000)


def multipart(data: bytes) -> tuple[bytes, str]:
    boundary = "loupebenchboundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.jpg\"\r\n"
            f"Content-Type: image/jpeg\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def bench_gate(args) -> dict:
    from app.core.config import Settings

    settings = Settings(_env_file=None)
    imgs = photos_1080p()
    threads = os.cpu_count() or 2
    # agreement check: both see the same blurred images as blurry
    print(f"\n## gate: {len(imgs)} JPEGs 1920x1080 q90, {threads} threads, {args.seconds:.0f} s per measurement")
    for _ in range(2):  # warm-up
        [loupe_gate(d, settings) for d in imgs]
        [baseline_gate(d) for d in imgs]
    base = rate(baseline_gate, imgs, threads, args.seconds)
    ours = rate(lambda d: loupe_gate(d, settings), imgs, threads, args.seconds)
    single = rate(lambda d: loupe_gate(d, settings), imgs, 1, args.seconds)
    print(f"{'variant':58s} {'images/s':>9s} {'ratio':>6s}")
    print(f"{'baseline: full RGB decode, resize 1600 px, Laplacian':58s} {base:9.1f} {1.0:6.2f}")
    print(f"{'loupe in-process (decode_image gray + quality_gate), 1 thread':58s} {single:9.1f} {single / base:6.2f}")
    print(f"{'loupe in-process, ' + str(threads) + ' threads':58s} {ours:9.1f} {ours / base:6.2f}")
    out = {"baseline_images_s": base, "inprocess_images_s": ours, "inprocess_1thread_images_s": single,
           "ratio": ours / base}
    if not args.no_http:
        from tests.servers import free_port

        for workers in args.workers:
            port = free_port()
            env = dict(os.environ, LOG_LEVEL="WARNING", PRELOAD_MODELS="", RATE_LIMIT="")
            proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1",
                                     "--port", str(port), "--workers", str(workers), "--no-access-log",
                                     "--log-level", "warning"], cwd=ROOT, env=env)
            try:
                import httpx

                deadline = time.time() + 60
                while True:
                    try:
                        if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code in (200, 503):
                            break
                    except httpx.HTTPError:
                        pass
                    if time.time() > deadline:
                        raise RuntimeError("server did not start")
                    time.sleep(0.2)
                body, ctype = multipart(imgs[0])
                rps, p95 = asyncio.run(http_rate(f"http://127.0.0.1:{port}", body, ctype, args.seconds, args.concurrency))
                print(f"{'HTTP POST /v1/quality (multipart 1080p JPEG), ' + str(workers) + ' worker(s)':58s} {rps:9.1f}"
                      f" {rps / base:6.2f}  p95 {p95:.1f} ms, {args.concurrency} concurrent")
                out[f"http_rps_workers_{workers}"] = rps
                out[f"http_p95_ms_workers_{workers}"] = p95
            finally:
                proc.terminate()
                proc.wait(10)
    return out


# --------------------------------------------------------------------------- cluster over HTTP
def bench_cluster_http(n: int) -> dict:
    """POST /v1/cluster end to end (JSON body parsed by pydantic-core, DBSCAN, response) on a live server."""
    import httpx

    from app.core.config import Settings
    from app.main import create_app
    from scripts.bench_cluster import make_embeddings
    from tests.servers import LiveServer

    X = make_embeddings(n, 512)
    X = X[0] if isinstance(X, tuple) else X
    body = json.dumps({"embeddings": np.round(X, 6).tolist(), "image_ids": [str(i) for i in range(len(X))]}).encode()
    server = LiveServer(create_app(Settings(_env_file=None, log_level="WARNING")))
    times = []
    try:
        with httpx.Client(base_url=server.base_url, timeout=300) as client:
            for _ in range(4):
                t0 = time.perf_counter()
                r = client.post("/v1/cluster", content=body, headers={"content-type": "application/json"})
                r.raise_for_status()
                times.append(time.perf_counter() - t0)
    finally:
        server.close()
    warm = sorted(times[1:])[1]
    print(f"POST /v1/cluster, {n} x 512 ({len(body) / 1e6:.0f} MB of JSON), end to end over HTTP: "
          f"first call {times[0]:.2f} s (one-time initialisation), then median {warm:.2f} s")
    return {"n": n, "body_mb": len(body) / 1e6, "first_s": times[0], "warm_median_s": warm}


# --------------------------------------------------------------------------- main
def bench_features(args) -> dict:
    """Per-image cost of the photo-set features at the analysis size: the noise measures against the
    Laplacian variance they correct (the baseline), and the MobileNet embedding against the perceptual
    hash (the feature that needs no model)."""
    from app.core.config import Settings
    from app.imaging.decode import decode_image
    from app.services import blur, phash

    settings = Settings(_env_file=None)
    images = [decode_image(d, max_pixels=settings.max_image_pixels, min_dim=settings.analysis_max_dim)
              for d in photos_1080p(12)]
    grays = [im.gray_max(settings.analysis_max_dim) for im in images]

    def per_image(fn, items, rounds=5) -> float:
        fn(items[0])
        best = float("inf")
        for _ in range(rounds):
            t0 = time.perf_counter()
            for x in items:
                fn(x)
            best = min(best, (time.perf_counter() - t0) / len(items))
        return best * 1000

    rows = [("baseline: Laplacian variance", per_image(blur.laplacian_variance, grays)),
            ("noise_sigma (Immerkaer MAD, unclipped pixels)", per_image(blur.noise_sigma, grays)),
            ("laplacian_noise_variance (Laplacian MAD)", per_image(blur.laplacian_noise_variance, grays)),
            ("baseline: 64-bit DCT perceptual hash", per_image(lambda g: phash.phash64(g), grays))]
    weights = ROOT.parent / "shared" / "weights" / "imagenet_mobilenet_tflite"
    if weights.is_dir():
        from app.models.mobilenet import MobileNetEmbedAdapter

        mob = MobileNetEmbedAdapter(settings)
        mob.load(weights, "cpu")
        rows.append(("MobileNet embedding (prepare + LiteRT invoke)", per_image(lambda im: mob.predict([mob.prepare(im)]),
                                                                           images)))
    else:
        print(f"(MobileNet skipped: {weights} not found)")
    print("\n## features: ms per 1920x1080 image at ANALYSIS_MAX_DIM, best of 5 rounds over 12 photos "
          "(NumPy/OpenCV on the calling thread; LiteRT with ANALYSIS_THREADS threads)")
    print("| feature | ms / image | × its baseline |")
    print("|---|---|---|")
    out = {}
    for name, ms in rows:
        base = rows[0][1] if "noise" in name else rows[3][1] if "MobileNet" in name else ms
        print(f"| {name} | {ms:.2f} | {ms / base:.2f} |")
        out[name] = ms
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("section", choices=["gate", "models", "tasks", "collections", "cluster", "features", "formats", "ray", "all"],
                        nargs="?", default="gate")
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of each throughput measurement")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="uvicorn worker counts to try")
    parser.add_argument("--concurrency", type=int, default=16, help="concurrent HTTP requests")
    parser.add_argument("--no-http", action="store_true", help="skip the HTTP measurement")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000], help="cluster sizes")
    parser.add_argument("--rounds", type=int, default=5, help="formats: timed runs per format (median)")
    parser.add_argument("--runtimes", nargs="+",
                        choices=["torch", "onnxruntime", "openvino", "onnxruntime+int8", "openvino+int8"],
                        help="models: the INFERENCE_RUNTIMEs to measure, +int8 = with QUANTIZE=int8 (default: torch "
                             "first as the baseline, onnxruntime, openvino, onnxruntime+int8)")
    parser.add_argument("--ray-images", type=int, default=256, help="ray: photos scored in-process and on Ray")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    print(f"# Loupe bench — {machine()}")
    results: dict = {"machine": machine()}
    if args.section in ("gate", "all"):
        results["gate"] = bench_gate(args)
    if args.section in ("features", "all"):
        results["features"] = bench_features(args)
    if args.section in ("models", "all"):
        from scripts.bench_models import bench_models

        results["models"] = bench_models(args)
    if args.section in ("tasks", "all"):
        from scripts.bench_tasks import bench_tasks

        results["tasks"] = bench_tasks(args)
    if args.section in ("collections", "all"):
        from scripts.bench_collections import bench_collections

        results["collections"] = bench_collections(args)
    if args.section in ("formats", "all"):
        from scripts.bench_formats import bench_formats

        results["formats"] = bench_formats(args)
    if args.section in ("ray", "all"):
        from scripts.bench_ray import bench_ray

        results["ray"] = bench_ray(args)
    if args.section in ("cluster", "all"):
        from scripts.bench_cluster import _table
        from scripts.bench_cluster import run as bench_cluster

        print("\n## cluster: DBSCAN, cosine, eps 0.35, min_samples 2, 512-d clustered CLIP-like vectors "
              "(each size in a fresh process; baseline: scikit-learn DBSCAN(metric='cosine', algorithm='brute'))")
        results["cluster"] = bench_cluster(sizes=tuple(args.sizes))
        print(_table(results["cluster"]))
        if not args.no_http:
            results["cluster_http"] = bench_cluster_http(10_000)
    print(f"\npeak RSS of this process: {peak_rss_mib():.0f} MiB")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
