"""Full-analysis benchmark (every analysis on): ms per image at batch 1 and 16, next to a per-image
sequential pipeline in the same run, and peak RSS with all models loaded.

Speed does not depend on weight values, so the models whose published weights cannot be had
offline (CLIP ViT-B/32, pyiqa's NIMA, DeepFace's emotion CNN) are built at full size with random
weights, in their real on-disk formats, and loaded through the real registry. BRISQUE, NIQE,
YuNet and the LAION head use the real files from ../shared/weights when that folder exists.
"""

from __future__ import annotations

import asyncio
import io
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "weights"


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build_model_dir(model_dir: Path) -> list[str]:
    """Fill `model_dir` for the benchmark; returns notes on where each model came from."""
    from tests.factories.faces import write_random_deepface_emotion_weights
    from tests.factories.models import full_size_clip, write_clip_tokenizer, write_nima_checkpoint

    notes = []
    for sub, src in (("brisque", "brisque_libsvm_live"), ("niqe", "niqe_live"), ("yunet", "face_yunet"),
                     ("laion_aesthetic", "aesthetic_laion_v1_linear")):
        if (SHARED / src).is_dir():
            shutil.copytree(SHARED / src, model_dir / sub, dirs_exist_ok=True)
            notes.append(f"{sub}: real weights from ../shared/weights/{src}")
        else:
            notes.append(f"{sub}: MISSING (no ../shared/weights/{src}) — not measured")
    for kind in ("nima_technical", "nima_aesthetic"):
        write_nima_checkpoint(model_dir / kind, kind)
        notes.append(f"{kind}: pyiqa architecture at full size, random weights")
    clip_dir = model_dir / "clip" / "openai__clip-vit-base-patch32"
    model = full_size_clip()
    model.save_pretrained(clip_dir)
    write_clip_tokenizer(clip_dir)
    notes.append("clip: CLIP ViT-B/32 at full size (transformers CLIPModel()), random weights")
    write_random_deepface_emotion_weights(model_dir / "deepface")
    notes.append("emotion: DeepFace emotion CNN, random weights (detector: opencv Haar cascade)")
    # the ONNX graphs, exported here as scripts/download_models.py does after a download, so that the runtimes'
    # measurements (each in its own process) do not include the export
    from app.core.config import Settings
    from scripts.download_models import export_onnx

    t0 = time.perf_counter()
    settings = Settings(_env_file=None, model_dir=model_dir, log_level="WARNING", inference_runtime="onnxruntime")
    export_onnx(["nima_technical", "nima_aesthetic", "clip", "emotion"], settings)
    notes.append(f"ONNX graphs exported in {time.perf_counter() - t0:.0f} s (once; cached beside the weights)")
    t0 = time.perf_counter()
    export_onnx(["nima_technical", "nima_aesthetic", "clip"], settings.model_copy(update={"quantize": "int8"}))
    notes.append(f"int8 graphs quantized and measured in {time.perf_counter() - t0:.0f} s (once; cached beside them)")
    return notes


def bench_images(n: int = 16) -> list[bytes]:
    """Real photos (skimage) as ~1080p JPEGs."""
    import cv2
    from PIL import Image

    from tests.helpers import photo

    names = ["astronaut", "coffee", "chelsea", "rocket", "motorcycle_left"]
    out = []
    for i in range(n):
        rgb = photo(names[i % len(names)])
        h, w = rgb.shape[:2]
        scale = 1920 / max(h, w) * (0.75 if i % 2 else 1.0)
        big = cv2.resize(np.ascontiguousarray(rgb), (round(w * scale), round(h * scale)), interpolation=cv2.INTER_CUBIC)
        buf = io.BytesIO()
        Image.fromarray(big).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


RUNTIMES = ("torch", "onnxruntime", "openvino", "onnxruntime+int8")


def measure(model_dir: Path, runtime: str) -> dict:
    """Every analysis with every model loaded on `runtime` (INFERENCE_RUNTIME, `+int8`: with QUANTIZE=int8), in this
    process: ms per image at batch 16 and 1, the per-image sequential baseline, the stage times and this process's
    peak RSS."""
    from concurrent.futures import ThreadPoolExecutor

    from app.core.config import Settings
    from app.imaging.decode import decode_image
    from app.imaging.fetch import make_client
    from app.imaging.sources import ImageSource
    from app.models.registry import ModelRegistry
    from app.schemas.common import RunFlags
    from app.services.orchestrator import Orchestrator

    engine, _, quant = runtime.partition("+")
    settings = Settings(_env_file=None, model_dir=model_dir, log_level="WARNING", inference_runtime=engine,
                        quantize=quant or "none")
    images = bench_images(16)
    flags = RunFlags(run_blur=True, run_exposure=True, run_quality=True, run_aesthetic=True,
                     run_emotion=True, run_embedding=True, run_faces=True)

    async def run() -> dict:
        pool = ThreadPoolExecutor(settings.threads)
        registry = ModelRegistry(settings, pool)
        client = make_client(settings)
        orch = Orchestrator(settings, registry, pool, client)
        t0 = time.perf_counter()
        def load_all() -> None:
            for n in registry.names():
                try:
                    registry.load(n)
                except Exception:  # noqa: BLE001 - a model without files here (the task models) stays missing
                    pass

        await asyncio.get_running_loop().run_in_executor(pool, load_all)
        load_s = time.perf_counter() - t0
        states = {n: registry.info(n).state.value for n in registry.names()}
        sources = lambda: [ImageSource(image_id=str(i), data=d) for i, d in enumerate(images)]  # noqa: E731
        await orch.analyze(sources()[:4], flags)  # warm-up
        runs = []
        for _ in range(3):  # median of 3: the machine's noise is larger than the effects measured
            t0 = time.perf_counter()
            res16 = await orch.analyze(sources(), flags)
            runs.append((time.perf_counter() - t0) * 1000 / len(images))
        b16 = sorted(runs)[1]
        shares: dict[str, float] = {}
        for r in res16:
            for k, v in r.timings_ms.items():
                shares[k] = shares.get(k, 0.0) + v / len(res16)
        runs = []
        for _ in range(3):
            t0 = time.perf_counter()
            for src in sources():
                await orch.analyze([src], flags)
            runs.append((time.perf_counter() - t0) * 1000 / len(images))
        b1 = sorted(runs)[1]

        # baseline: a per-image sequential pipeline — each analysis decodes the file itself and
        # runs its model on that one image (no shared decode, no batching)
        def sequential() -> float:
            t = time.perf_counter()
            for data in images:
                for name in registry.names():
                    if name == "laion_aesthetic" or states[name] != "ready":  # the LAION head needs CLIP's vector;
                        continue  # models without files here (the task models) are not part of /v1/analyze
                    img = decode_image(data, max_pixels=settings.max_image_pixels)
                    with registry.lease(name) as adapter:
                        adapter.predict([adapter.prepare(img)])
                img = decode_image(data, max_pixels=settings.max_image_pixels)
                orch.gate_sync(img)
            return (time.perf_counter() - t) * 1000 / len(images)

        seq = await asyncio.get_running_loop().run_in_executor(pool, sequential)
        errors = sorted({f"{k}: {getattr(getattr(r, k), 'error', None).message}" for r in res16
                         for k in ("quality", "aesthetic", "emotion", "embedding", "faces")
                         if getattr(r, k) is not None and getattr(r, k).status != "ok"})
        scores = [[r.quality.nima_technical if r.quality else None,
                   r.aesthetic.nima_score if r.aesthetic else None] for r in res16]
        vectors = [r.embedding.vector if r.embedding and r.embedding.vector else None for r in res16]
        precisions = {n: (registry.info(n).precision or {}).get("precision") for n in registry.names()
                      if registry.info(n).precision}
        await client.aclose()
        registry.shutdown()
        pool.shutdown()
        import sys

        return {"runtime": runtime, "load_s": load_s, "states": states, "batch16_ms": b16, "batch1_ms": b1,
                "sequential_ms": seq, "errors": errors, "batch16_stage_ms": shares, "peak_rss_mib": peak_rss_mib(),
                "torch_imported": sys.modules.get("torch") is not None, "scores": scores, "vectors": vectors,
                "precisions": precisions}

    return asyncio.run(run())


def bench_models(args) -> dict:
    """Each runtime in a fresh process (so that each peak RSS is its own), side by side, against torch."""
    import json
    import subprocess
    import sys

    tmp = Path(tempfile.mkdtemp(prefix="loupe-bench-models-"))
    try:
        code = ("import json, sys; from pathlib import Path; sys.path.insert(0, sys.argv[2]); "
                "from scripts.bench_models import build_model_dir; print(json.dumps(build_model_dir(Path(sys.argv[1]))))")
        proc = subprocess.run([sys.executable, "-c", code, str(tmp), str(ROOT)], capture_output=True, text=True,
                              check=True, cwd=ROOT)
        notes = json.loads(proc.stdout.strip().splitlines()[-1])
        print("\n## models: every analysis on, 16 real photos as ~1080p JPEGs, each runtime in a fresh process")
        for note in notes:
            print(f"  - {note}")
        runtimes = [r for r in getattr(args, "runtimes", None) or RUNTIMES]
        results: dict[str, dict] = {}
        run_code = ("import json, sys; from pathlib import Path; sys.path.insert(0, sys.argv[3]); "
                    "from scripts.bench_models import measure; "
                    "print('RESULT ' + json.dumps(measure(Path(sys.argv[1]), sys.argv[2])))")
        for runtime in runtimes:
            proc = subprocess.run([sys.executable, "-c", run_code, str(tmp), runtime, str(ROOT)], capture_output=True,
                                  text=True, cwd=ROOT)
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if proc.returncode != 0 or line is None:
                print(f"  !! {runtime} failed: {proc.stderr.strip().splitlines()[-1:]}")
                continue
            results[runtime] = json.loads(line[len("RESULT "):])
        base = results.get("torch")
        print(f"{'runtime':12s} {'load s':>7s} {'batch 16':>9s} {'x torch':>8s} {'batch 1':>8s} {'x torch':>8s} "
              f"{'sequential':>10s} {'peak RSS':>9s} {'torch in memory':>16s}")
        for name, r in results.items():
            x16 = base["batch16_ms"] / r["batch16_ms"] if base else float("nan")
            x1 = base["batch1_ms"] / r["batch1_ms"] if base else float("nan")
            print(f"{name:12s} {r['load_s']:7.1f} {r['batch16_ms']:9.1f} {x16:8.2f} {r['batch1_ms']:8.1f} {x1:8.2f} "
                  f"{r['sequential_ms']:10.1f} {r['peak_rss_mib']:8.0f}M {str(r['torch_imported']):>16s}")
            for e in r["errors"]:
                print(f"  !! {name}: {e}")
        for name, r in results.items():
            stages = ", ".join(f"{k[:-3]} {v:.0f}" for k, v in sorted(r["batch16_stage_ms"].items(), key=lambda kv: -kv[1]))
            print(f"  {name}, batch 16, ms per image by stage (overlapping): {stages}")
        if base:
            ref = np.array([[np.nan if v is None else v for v in row] for row in base["scores"]], dtype=float)
            ref_vec = [np.asarray(v) if v else None for v in base["vectors"]]
            for name, r in results.items():
                if name == "torch":
                    continue
                got = np.array([[np.nan if v is None else v for v in row] for row in r["scores"]], dtype=float)
                rel = np.nanmax(np.abs(got - ref) / np.maximum(np.abs(ref), 1e-12)) if np.isfinite(ref).any() else float("nan")
                # NIMA technical's range is 0..1, aesthetic's 1..10: the mean absolute difference as a share of it
                share = np.nanmean(np.abs(got - ref), axis=0) / np.array([1.0, 9.0])
                cos = [float(np.dot(a, np.asarray(b))) for a, b in zip(ref_vec, r["vectors"]) if a is not None and b]
                precision = ", ".join(f"{m} {p}" for m, p in sorted(r["precisions"].items())) or "-"
                print(f"  {name} against torch on the 16 photos: NIMA largest relative difference {rel:.2e}; mean "
                      f"|difference| / range: technical {share[0]:.2e}, aesthetic {share[1]:.2e}; CLIP lowest cosine "
                      f"{min(cos) if cos else float('nan'):.6f} (precision: {precision})")
        return results
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
