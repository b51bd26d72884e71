#!/usr/bin/env python3
"""Memory soak: a Loupe server under sustained mixed load, RSS over time, and a verdict.

    python scripts/soak.py                         # 10 min, 8 clients, mixed load, no models
    python scripts/soak.py --minutes 2 --clients 8 --models ../shared/weights
    python scripts/soak.py --mix analyze --minutes 1.5        # only POST /v1/analyze (the issue's case)
    python scripts/soak.py --mix nearlimit --minutes 1        # near-MAX_IMAGE_PIXELS PNG bursts

It starts the real service (uvicorn, one worker, the settings you pass with --env KEY=VALUE)
on 127.0.0.1 with a free port, runs N client loops for the given time (bounded: every loop
stops at the deadline or after --max-requests in total), samples the server's RSS every
--sample-s seconds and prints the series. The verdict compares the RSS at the end with the RSS
after the first minute (the baseline, measured in the same run): within --tolerance (15 %)
is a pass. Exit status 0 = pass, 1 = fail, 2 = the server did not start. Only loopback
addresses are ever contacted.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import os
import platform
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import cv2  # noqa: E402
import httpx  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def jpeg_1080p(name: str, quality: int = 90) -> bytes:
    from skimage import data

    rgb = getattr(data, name)()[..., :3]
    if rgb.ndim == 2:
        rgb = np.stack([rgb] * 3, -1)
    h, w = rgb.shape[:2]
    scale = max(1920 / w, 1080 / h)
    big = cv2.resize(rgb, (int(np.ceil(w * scale)), int(np.ceil(h * scale))), interpolation=cv2.INTER_CUBIC)
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(big[:1080, :1920])).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def near_limit_png(side: int, sixteen_bit: bool = False) -> bytes:
    """A small file that decodes to side x side pixels (a smooth gradient compresses to ~KB)."""
    ramp = np.linspace(0, 65535 if sixteen_bit else 255, side, dtype=np.float64)
    arr = (ramp[None, :] * np.ones((side, 1))).astype(np.uint16 if sixteen_bit else np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG", optimize=False, compress_level=9)
    return buf.getvalue()


class Load:
    def __init__(self, base: str, mix: str, photos: list[bytes], bomb: bytes | None, api_key: str | None):
        self.base = base
        self.mix = mix
        self.photos = photos
        self.bomb = bomb
        self.headers = {"X-Api-Key": api_key} if api_key else {}
        self.status: Counter[str] = Counter()
        self.latencies: list[float] = []

    def pick(self, rng: random.Random) -> tuple[str, dict]:
        photo = rng.choice(self.photos)
        if self.mix == "analyze":
            return "/v1/analyze", {"files": {"file": ("p.jpg", photo, "image/jpeg")}}
        if self.mix == "nearlimit":
            return "/v1/quality", {"files": {"file": ("big.png", self.bomb, "image/png")}}
        r = rng.random()
        if r < 0.35:
            return "/v1/analyze", {"files": {"file": ("p.jpg", photo, "image/jpeg")}}
        if r < 0.55:
            b64 = base64.b64encode(photo).decode()
            return "/v1/analyze", {"json": {"image": {"base64": b64}, "run_faces": True, "run_aesthetic": True}}
        if r < 0.75:
            return "/v1/quality", {"files": {"file": ("p.jpg", photo, "image/jpeg")}}
        if r < 0.88:
            imgs = [{"base64": base64.b64encode(rng.choice(self.photos)).decode(), "image_id": str(i)} for i in range(4)]
            return "/v1/analyze/batch", {"json": {"images": imgs}}
        if r < 0.95 and self.bomb is not None:
            return "/v1/quality", {"files": {"file": ("big.png", self.bomb, "image/png")}}
        files = [("file", (f"{i}.jpg", rng.choice(self.photos), "image/jpeg")) for i in range(3)]
        return "/v1/cluster/images", {"files": files}

    async def client(self, seed: int, deadline: float, budget: list[int]) -> None:
        rng = random.Random(seed)
        async with httpx.AsyncClient(base_url=self.base, timeout=120, headers=self.headers) as c:
            while time.monotonic() < deadline and budget[0] > 0:
                budget[0] -= 1
                path, kw = self.pick(rng)
                t0 = time.perf_counter()
                try:
                    r = await c.post(path, **kw)
                    self.status[f"{path} {r.status_code}"] += 1
                except httpx.HTTPError as exc:
                    self.status[f"{path} {type(exc).__name__}"] += 1
                self.latencies.append(time.perf_counter() - t0)


async def sample(pid: int, start: float, deadline: float, every: float, series: list[tuple[float, float]]) -> None:
    while time.monotonic() < deadline:
        series.append((time.monotonic() - start, rss_mib(pid)))
        print(f"  t={series[-1][0]:7.1f} s  RSS {series[-1][1]:8.1f} MiB", flush=True)
        await asyncio.sleep(every)
    series.append((time.monotonic() - start, rss_mib(pid)))
    print(f"  t={series[-1][0]:7.1f} s  RSS {series[-1][1]:8.1f} MiB (end)", flush=True)


def rss_at(series: list[tuple[float, float]], t: float, span: float) -> float:
    """The largest RSS sampled from `span` seconds before `t` to just after it (the settled level,
    not a dip between two collections); the nearest sample when none falls in that window."""
    window = [r for s, r in series if t - span <= s <= t + 1.0]
    return max(window) if window else min(series, key=lambda sr: abs(sr[0] - t))[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--mix", choices=("mixed", "analyze", "nearlimit"), default="mixed")
    ap.add_argument("--models", type=Path, help="a weights folder to copy into MODEL_DIR "
                    "(scripts/download_models.py --from; e.g. ../shared/weights)")
    ap.add_argument("--env", action="append", default=[], help="KEY=VALUE for the server (repeatable)")
    ap.add_argument("--sample-s", type=float, default=5.0)
    ap.add_argument("--max-requests", type=int, default=200_000)
    ap.add_argument("--tolerance", type=float, default=0.15)
    ap.add_argument("--idle-s", type=float, default=20.0, help="RSS is sampled once more after this idle time")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="loupe-soak-"))
    model_dir = tmp / "models"
    model_dir.mkdir()
    if args.models:
        # exit status 1 = some models are not in that folder: the others are still copied
        subprocess.run([sys.executable, str(ROOT / "scripts/download_models.py"), "--from", str(args.models),
                        "--model-dir", str(model_dir)], check=False, stdout=subprocess.DEVNULL)
        print(f"# models copied into MODEL_DIR: {', '.join(sorted(p.name for p in model_dir.iterdir())) or 'none'}")
    port = free_port()
    env = {**os.environ, "MODEL_DIR": str(model_dir), "LOG_LEVEL": "WARNING"}
    for kv in args.env:
        k, _, v = kv.partition("=")
        env[k] = v
    server = subprocess.Popen([sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1",
                               "--port", str(port), "--no-access-log", "--no-proxy-headers"],
                              cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(base + "/health", timeout=1).status_code in (200, 503):
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None:
                print(server.stderr.read().decode()[-3000:], file=sys.stderr)
                return 2
            time.sleep(0.2)
        else:
            return 2
        photos = [jpeg_1080p(n) for n in ("astronaut", "coffee", "chelsea", "rocket")]
        side = int(0.97 * int(env.get("MAX_IMAGE_PIXELS", 60_000_000)) ** 0.5)
        bomb = near_limit_png(side)
        load = Load(base, args.mix, photos, bomb, env.get("API_KEY") or (env.get("API_KEYS") or "").split(",")[0] or None)
        print(f"# soak: {args.minutes:g} min, {args.clients} clients, mix={args.mix}, models="
              f"{args.models or 'none'}; {os.cpu_count()} cores, Python {platform.python_version()}")
        print(f"  idle RSS after start: {rss_mib(server.pid):.1f} MiB")
        series: list[tuple[float, float]] = []

        async def run() -> None:
            start = time.monotonic()
            deadline = start + args.minutes * 60
            budget = [args.max_requests]
            await asyncio.gather(sample(server.pid, start, deadline, args.sample_s, series),
                                 *(load.client(i, deadline, budget) for i in range(args.clients)))

        asyncio.run(run())
        end_t = series[-1][0]
        time.sleep(args.idle_s)
        idle = rss_mib(server.pid)
        span = max(15.0, 1.5 * args.sample_s)
        first = rss_at(series, min(60.0, end_t), span)
        last = rss_at(series, end_t, span)
        peak = max(r for _, r in series)
        n = sum(load.status.values())
        lat = sorted(load.latencies) or [0.0]
        print("\n# requests")
        for key, count in sorted(load.status.items()):
            print(f"  {key:40s} {count}")
        print(f"  total {n} in {end_t:.0f} s ({n / max(end_t, 1e-9):.1f}/s), p50 {lat[len(lat) // 2] * 1000:.0f} ms, "
              f"p95 {lat[int(len(lat) * 0.95)] * 1000:.0f} ms")
        errors_5xx = sum(c for k, c in load.status.items() if k.split()[-1].startswith("5")
                         and not k.endswith(" 503"))
        ratio = last / first if first else float("nan")
        print("\n# RSS (MiB)")
        print(f"  after 1st minute {first:.1f} | at end {last:.1f} | peak {peak:.1f} | after {args.idle_s:g} s idle "
              f"{idle:.1f} | end / 1st minute = {ratio:.3f}")
        ok = ratio <= 1 + args.tolerance and errors_5xx == 0
        print(f"VERDICT: {'PASS' if ok else 'FAIL'} (end within {args.tolerance:.0%} of the first minute: "
              f"{'yes' if ratio <= 1 + args.tolerance else 'no'}; 5xx other than 503: {errors_5xx})")
        return 0 if ok else 1
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
