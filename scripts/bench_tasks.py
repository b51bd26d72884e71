"""Task-list benchmark: POST /v1/tasks and /v1/tasks/batch, in-process through the real app.

A typical request asks four things of each photo: the prominent person's box, the prominent face's
box, the CLIP embedding of that face and the top-5 ImageNet tags of the whole image. It is timed

  (a) at batch 1: one POST /v1/tasks per image, the four tasks in it;
  (b) at batch 16: one POST /v1/tasks/batch of the 16 images;

against the baseline of asking the same four things as separate requests: one POST /v1/tasks per
task per image (so each request decodes the image again and the face requests find the person
again, as a client without task lists would). All in-process through `create_app` and FastAPI's
TestClient (lifespan run, models preloaded), on 16 real photos (skimage) as ~1080p JPEGs sent as
base64 JSON; bodies are encoded before the clock starts. A warm-up round first, then three rounds
(each round runs every variant, interleaved), median of the three.

YuNet, the person model (DeepLabV3) and the tagger (MobileNetV2) use the real offline weights from
../shared/weights (LOUPE_SHARED_WEIGHTS overrides); CLIP ViT-B/32 is built at full size with random
weights (speed does not depend on the values). The section is skipped when the real weights are
missing. The models are assembled in a temporary MODEL_DIR, and the measurement runs in a fresh
process so that the peak RSS reported belongs to it alone.
"""

from __future__ import annotations

import base64
import io
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

#: MODEL_DIR sub-folder -> folder in ../shared/weights (as tests/api/test_tasks_api.py assembles it)
REAL = {"yunet": "face_yunet", "person": "person_deeplabv3_tflite", "tags": "imagenet_mobilenet_tflite",
        "mobilenet": "imagenet_mobilenet_tflite"}
MODELS = ("person", "faces", "clip", "tags")  # the registry models the typical request uses

TASKS = [
    {"operation_id": "person", "type": "detect_bounding_box"},
    {"operation_id": "face", "type": "detect_bounding_box", "params": {"target": "prominent_face"}},
    {"operation_id": "face_clip", "type": "embed_clip", "params": {"target": "prominent_face"}},
    {"operation_id": "tags", "type": "tag_imagenet", "params": {"top": 5}},
]

#: (skimage photo, variant): 8 with a person (astronaut, cameraman and variants of them) and 8 without
PHOTOS = [("astronaut", "full"), ("coffee", "full"), ("camera", "full"), ("chelsea", "full"),
          ("astronaut", "mirror"), ("rocket", "full"), ("camera", "mirror"), ("motorcycle_left", "full"),
          ("astronaut", "crop"), ("hubble_deep_field", "full"), ("camera", "crop"), ("immunohistochemistry", "full"),
          ("astronaut", "small"), ("coffee", "mirror"), ("camera", "small"), ("chelsea", "mirror")]
PER_IMAGE_TIMINGS = {"read_ms", "fetch_ms", "decode_ms", "decode_wait_ms"}  # the rest are per request


def shared_weights() -> Path:
    """Where the real weights are: LOUPE_SHARED_WEIGHTS, else ../shared/weights next to the repo, else
    ../shared/weights from the working directory (the first that exists)."""
    env = os.environ.get("LOUPE_SHARED_WEIGHTS")
    if env:
        return Path(env)
    candidates = [ROOT.parent / "shared" / "weights", Path.cwd().parent / "shared" / "weights"]
    for c in candidates:
        if c.is_dir():
            return c
    return candidates[0]


def missing_weights() -> list[str]:
    shared = shared_weights()
    return sorted({str(shared / src) for src in REAL.values() if not (shared / src).is_dir()})


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mib() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def build_model_dir(model_dir: Path) -> list[str]:
    """Fill `model_dir` for the benchmark (real YuNet, person, tags, MobileNet; full-size random CLIP)."""
    from tests.factories.models import full_size_clip, write_clip_tokenizer

    shared = shared_weights()
    notes = []
    for sub, src in REAL.items():
        shutil.copytree(shared / src, model_dir / sub, dirs_exist_ok=True)
        if sub != "mobilenet":
            notes.append(f"{sub}: real weights from {shared / src}")
    clip_dir = model_dir / "clip" / "openai__clip-vit-base-patch32"
    full_size_clip().save_pretrained(clip_dir)
    write_clip_tokenizer(clip_dir)
    notes.append("clip: CLIP ViT-B/32 at full size (transformers CLIPModel()), random weights")
    return notes


def bench_images() -> list[tuple[str, bytes]]:
    """The 16 photos as JPEG q90, longest side 1920 px (1440 px for the `small` variants)."""
    import cv2
    from PIL import Image

    from tests.helpers import photo

    out = []
    for name, variant in PHOTOS:
        rgb = np.asarray(photo(name))
        if variant == "mirror":
            rgb = rgb[:, ::-1]
        elif variant == "crop":  # a closer framing: the upper-middle 80 % x 80 %
            h, w = rgb.shape[:2]
            rgb = rgb[: int(h * 0.8), int(w * 0.1): int(w * 0.9)]
        h, w = rgb.shape[:2]
        scale = (1440 if variant == "small" else 1920) / max(h, w)
        big = cv2.resize(np.ascontiguousarray(rgb), (round(w * scale), round(h * scale)), interpolation=cv2.INTER_CUBIC)
        buf = io.BytesIO()
        Image.fromarray(big).save(buf, "JPEG", quality=90)
        out.append((f"{name}-{variant}", buf.getvalue()))
    return out


# --------------------------------------------------------------------------- the measuring process
def measure(model_dir: str, rounds: int = 3) -> dict[str, Any]:
    """Runs in a fresh process: the app in-process, every variant timed `rounds` times."""
    import logging

    from fastapi.testclient import TestClient

    from app.core.config import Settings
    from app.main import create_app

    settings = Settings(_env_file=None, model_dir=Path(model_dir), log_level="WARNING", log_json=False,
                        preload_models=",".join(MODELS))
    images = bench_images()
    n = len(images)
    b64 = [(name, base64.b64encode(data).decode()) for name, data in images]
    jpeg_kb = sum(len(d) for _, d in images) / n / 1024

    def body(payload: dict) -> bytes:
        return json.dumps(payload).encode()

    single = [body({"image": {"base64": s, "image_id": name}, "tasks": TASKS}) for name, s in b64]
    separate = [[body({"image": {"base64": s, "image_id": name}, "tasks": [t]}) for t in TASKS] for name, s in b64]
    batch = body({"images": [{"base64": s, "image_id": name} for name, s in b64], "tasks": TASKS})
    headers = {"content-type": "application/json"}

    app = create_app(settings)
    logging.getLogger("loupe").setLevel(logging.WARNING)
    t0 = time.perf_counter()
    with TestClient(app) as client:
        startup_s = time.perf_counter() - t0
        registry = app.state.registry
        models = {m: {"state": registry.info(m).state.value, "device": registry.info(m).device,
                      "load_s": registry.info(m).load_time_s} for m in MODELS}
        rss_after_load = rss_mib()

        def post(path: str, content: bytes) -> Any:
            return client.post(path, content=content, headers=headers)

        # Each variant returns its raw responses; the clock covers only the requests.
        def run_baseline() -> list[list[Any]]:
            return [[post("/v1/tasks", b) for b in per_image] for per_image in separate]

        def run_b1() -> list[Any]:
            return [post("/v1/tasks", b) for b in single]

        def run_b16() -> Any:
            return post("/v1/tasks/batch", batch)

        variants = {"baseline": run_baseline, "batch1": run_b1, "batch16": run_b16}
        # warm-up: every variant once on the first images (the batch on all 16: its shapes)
        t0 = time.perf_counter()
        [post("/v1/tasks", b) for b in separate[0] + separate[2]]
        post("/v1/tasks", single[0])
        post("/v1/tasks", single[2])
        run_b16()
        warmup_s = time.perf_counter() - t0

        load_before = os.getloadavg()
        ms: dict[str, list[float]] = {k: [] for k in variants}
        raw: dict[str, list[Any]] = {k: [] for k in variants}
        for _ in range(rounds):
            for name, fn in variants.items():
                t = time.perf_counter()
                out = fn()
                ms[name].append((time.perf_counter() - t) * 1000 / n)
                raw[name].append(out)

    # ---- responses → per-image results and stage timings
    def as_json(r: Any) -> dict:
        if r.status_code != 200:
            raise RuntimeError(f"HTTP {r.status_code}: {r.text[:500]}")
        return r.json()

    def per_image(name: str, out: Any) -> tuple[list[dict[str, dict]], dict[str, float], int]:
        """(results by op for each image, stage ms summed over the variant's requests, request count)."""
        stages: dict[str, float] = {}

        def add(timings: dict[str, float], share: float = 1.0) -> None:
            for k, v in timings.items():
                stages[k] = stages.get(k, 0.0) + v * share

        if name == "baseline":
            results = []
            for reqs in out:
                merged: dict[str, dict] = {}
                for r in reqs:
                    j = as_json(r)
                    merged.update(j["results"])
                    add(j["timings_ms"])
                results.append(merged)
            return results, stages, n * len(TASKS)
        if name == "batch1":
            js = [as_json(r) for r in out]
            for j in js:
                add(j["timings_ms"])
            return [j["results"] for j in js], stages, n
        js = as_json(out)["results"]
        for j in js:
            add({k: v for k, v in j["timings_ms"].items() if k in PER_IMAGE_TIMINGS})
        add({k: v for k, v in js[0]["timings_ms"].items() if k not in PER_IMAGE_TIMINGS})  # once per request
        return [j["results"] for j in js], stages, 1

    figures: dict[str, Any] = {}
    final: dict[str, list[dict[str, dict]]] = {}
    for name in variants:
        stage_sum: dict[str, float] = {}
        for out in raw[name]:
            results, stages, requests = per_image(name, out)
            for k, v in stages.items():
                stage_sum[k] = stage_sum.get(k, 0.0) + v / n / rounds
        final[name] = results
        statuses = {op["operation_id"]: {s: sum(1 for r in results if r[op["operation_id"]]["status"] == s)
                                         for s in ("success", "skipped", "error")} for op in TASKS}
        errors = sorted({f"{op}: {r[op].get('error_message')}" for r in results for op in r if r[op]["status"] == "error"})
        figures[name] = {"ms_per_image": statistics.median(ms[name]), "runs_ms_per_image": ms[name],
                         "requests_per_16_images": requests, "stage_ms_per_image": stage_sum,
                         "statuses": statuses, "errors": errors}

    def key(r: dict[str, dict]) -> tuple:
        """What must not depend on how the tasks were sent: the two boxes and the tag labels."""
        def data(op: str) -> Any:
            return r[op]["data"] if r[op]["status"] == "success" else r[op]["status"]

        tags = data("tags")
        return (data("person"), data("face"), [x["label"] for x in tags["labels"]] if isinstance(tags, dict) else tags)

    agree = sum(1 for i in range(n) if len({repr(key(final[v][i])) for v in variants}) == 1)
    cos = []
    for i in range(n):
        vecs = [final[v][i]["face_clip"]["data"]["vector"] for v in variants
                if final[v][i]["face_clip"]["status"] == "success"]
        for v in vecs[1:]:
            cos.append(float(np.dot(vecs[0], v) / (np.linalg.norm(vecs[0]) * np.linalg.norm(v))))
    return {"n_images": n, "images": [name for name, _ in images], "jpeg_kb_mean": jpeg_kb,
            "sizes": sorted({f"{r['width_px']}x{r['height_px']}" for r in as_json(raw["batch16"][-1])["results"]}),
            "startup_s": startup_s, "warmup_s": warmup_s, "models": models, "rounds": rounds,
            "variants": figures, "agree_images": agree, "clip_min_cosine_across_variants": min(cos) if cos else None,
            "loadavg_1min": [load_before[0], os.getloadavg()[0]], "rss_after_load_mib": rss_after_load, "peak_rss_mib": peak_rss_mib()}


def _subprocess_json(code: str, *argv: str) -> Any:
    proc = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, cwd=ROOT, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark subprocess failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- the section
LABELS = {
    "baseline": "baseline: separate requests, 1 task per POST /v1/tasks",
    "batch1": "loupe, batch 1: 1 POST /v1/tasks per image, 4 tasks",
    "batch16": "loupe, batch 16: 1 POST /v1/tasks/batch, 16 images",
}


def bench_tasks(args: Any = None) -> dict[str, Any]:
    rounds = int(getattr(args, "rounds", 3) or 3)
    print("\n## tasks: person box + face box + CLIP of the face + top-5 ImageNet tags, 16 real photos, "
          "in-process (create_app + TestClient)")
    missing = missing_weights()
    if missing:
        msg = (f"SKIPPED: the real offline weights are missing: {', '.join(missing)} "
               "(they live in ../shared/weights next to the repository; LOUPE_SHARED_WEIGHTS overrides)")
        print(f"  {msg}")
        return {"skipped": msg}
    tmp = Path(tempfile.mkdtemp(prefix="loupe-bench-tasks-"))
    try:
        boot = "import json, sys; from pathlib import Path; sys.path.insert(0, sys.argv[2]); import scripts.bench_tasks as b; "
        notes = _subprocess_json(boot + "print(json.dumps(b.build_model_dir(Path(sys.argv[1]))))", str(tmp), str(ROOT))
        out = _subprocess_json(boot + f"print(json.dumps(b.measure(sys.argv[1], {rounds})))", str(tmp), str(ROOT))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    out["notes"] = notes
    print_report(out)
    return out


def print_report(out: dict[str, Any]) -> None:
    for note in out["notes"]:
        print(f"  - {note}")
    v = out["variants"]
    n = out["n_images"]
    print(f"  - images: {n} JPEGs q90 ({', '.join(out['sizes'])}; {out['jpeg_kb_mean']:.0f} KiB on average), "
          f"sent as base64 JSON; 8 with a person (astronaut, cameraman: full, mirrored, closer crop, smaller), "
          f"8 without (coffee, chelsea, rocket, motorcycle, hubble, immunohistochemistry)")
    models = ", ".join(f"{m} {d['state']} on {d['device']} ({d['load_s']} s)" for m, d in out["models"].items())
    print(f"  - models preloaded: {models}; app start {out['startup_s']:.1f} s, warm-up {out['warmup_s']:.1f} s")
    st = v["batch16"]["statuses"]
    print("  - results (batch 16): " + ", ".join(f"{op} {c['success']} ok / {c['skipped']} skipped / {c['error']} error"
                                                 for op, c in st.items()))
    print(f"  - same boxes and tags in every variant: {out['agree_images']}/{n} images; CLIP face vectors across "
          f"variants: min cosine {out['clip_min_cosine_across_variants']:.6f}")
    for name, f in v.items():
        for e in f["errors"]:
            print(f"  !! {name}: {e}")
    base = v["baseline"]["ms_per_image"]
    la = out["loadavg_1min"]
    print(f"\nms per image, median of {out['rounds']} rounds (each round runs every variant; warm-up round first; "
          f"1-min load average {la[0]:.1f} before, {la[1]:.1f} after, on {os.cpu_count()} cores)")
    print("| variant | requests / 16 images | ms / image | rounds (ms / image) | speed-up vs baseline "
          "| speed-up in each round |")
    print("|---|---|---|---|---|---|")
    for name, f in v.items():
        runs = " / ".join(f"{x:.0f}" for x in f["runs_ms_per_image"])
        per_round = " / ".join(f"{b / x:.2f}" for b, x in zip(v["baseline"]["runs_ms_per_image"], f["runs_ms_per_image"]))
        f["speedup"] = base / f["ms_per_image"]
        print(f"| {LABELS[name]} | {f['requests_per_16_images']} | {f['ms_per_image']:.1f} | {runs} | "
              f"{f['speedup']:.2f} | {per_round} |")
    stages = sorted({k for f in v.values() for k in f["stage_ms_per_image"]},
                    key=lambda k: -v["baseline"]["stage_ms_per_image"].get(k, 0.0))
    print("\nstage timings (the responses' timings_ms, ms per image: summed over the requests an image needs, "
          "averaged over images and rounds; batch 16: each request-level stage ÷ 16; decode overlaps across images)")
    print("| stage | " + " | ".join(LABELS[name].split(":")[0] for name in v) + " |")
    print("|---|" + "---|" * len(v))
    for k in stages:
        cells = " | ".join(f"{f['stage_ms_per_image'][k]:.1f}" if k in f["stage_ms_per_image"] else "—" for f in v.values())
        print(f"| {k[:-3]} | {cells} |")
    print(f"\npeak RSS of the measuring process (app in-process, 4 models loaded): {out['peak_rss_mib']:.0f} MiB "
          f"(after start-up and preload, before the first request: {out['rss_after_load_mib']:.0f} MiB)")


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path)
    a = parser.parse_args()
    res = bench_tasks(a)
    if a.json:
        a.json.write_text(json.dumps(res, indent=2, default=float))
