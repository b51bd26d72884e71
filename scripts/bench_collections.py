"""Collections benchmark: the `classify` and `describe` task types of POST /v1/tasks(/batch), in-process.

classify: a collection ("astronaut or coffee") trained in the temporary CLASSIFIER_DIR on REAL MobileNet
embeddings of skimage photos and degraded copies of them, exactly as tests/unit/test_collections.py trains
it (`app.collections.train.train_collection`). Timed as one POST /v1/tasks/batch of the 16 images with one
`classify` task, and at batch 1 (one POST /v1/tasks per image), each against the baseline of the same
request with an `embed_mobilenet` task only: the ratio is what the classifier adds over the embedding it
needs (store look-up, logistic regression, the result).

describe: a caption per image (`describe`, max_length 30) from a FULL-SIZE BLIP base architecture
(transformers `BlipForConditionalGeneration(BlipConfig())`: ViT-B/16 at 384 px + BERT-base decoder) with
random weights, saved with save_pretrained next to a BERT-size tokenizer and BlipImageProcessor() in the
layout the caption adapter reads (tests/unit/test_caption.py's `write_tiny_blip` approach, base config).
Speed does not depend on the weights' values; random weights rarely emit the end token, so every caption
runs to max_length (the worst case). Timed at batch 1 (16 POST /v1/tasks) and batch 16 (one
POST /v1/tasks/batch); the ratio is batch 16 against batch 1.

All through `create_app` and FastAPI's TestClient (lifespan run, mobilenet and caption preloaded), on the
16 real photos (skimage) of the `tasks` section as ~1080p JPEGs sent as base64 JSON; bodies are encoded
before the clock starts. A warm-up first, then three rounds (each runs every variant, interleaved), median
of the three. MODEL_DIR is assembled in a temporary folder (MobileNet from ../shared/weights,
LOUPE_SHARED_WEIGHTS overrides) and the measurement runs in a fresh process so that its peak RSS is its
own. classify is skipped when the real MobileNet weights are missing; nothing is written into the repo.
"""

from __future__ import annotations

import base64
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

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

MOBILENET_SRC = "imagenet_mobilenet_tflite"
COLLECTION = "space_coffee"
MAX_LENGTH = 30

EMBED = [{"operation_id": "emb", "type": "embed_mobilenet"}]
CLASSIFY = [{"operation_id": "cls", "type": "classify", "params": {"collection_id": COLLECTION}}]
DESCRIBE = [{"operation_id": "cap", "type": "describe", "params": {"max_length": MAX_LENGTH}}]


def shared_weights() -> Path:
    from scripts.bench_tasks import shared_weights as sw

    return sw()


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --------------------------------------------------------------------------- MODEL_DIR
def write_base_blip(folder: Path, seed: int = 0) -> dict[str, Any]:
    """A full-size BLIP base (BlipConfig() defaults) with random weights, a BERT-size tokenizer whose
    special tokens sit at BERT's ids ([DEC] added as the decoder's start token, as BLIP's tokenizer has
    it) and BlipImageProcessor() (384 px): the layout write_tiny_blip writes, at base size."""
    import torch
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor

    folder.mkdir(parents=True, exist_ok=True)
    vocab = [f"[unused{i}]" for i in range(30522)]
    vocab[0], vocab[100], vocab[101], vocab[102], vocab[103] = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
    for i in range(104, 30522):
        vocab[i] = f"w{i}"
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = BertTokenizer.from_pretrained(str(folder), local_files_only=True)
    tok.add_special_tokens({"bos_token": "[DEC]"})
    tok.save_pretrained(str(folder))
    base = BlipConfig()
    text = dict(base.text_config.to_dict(), vocab_size=max(len(tok), base.text_config.vocab_size),
                bos_token_id=tok.bos_token_id, sep_token_id=tok.sep_token_id, pad_token_id=tok.pad_token_id,
                eos_token_id=tok.sep_token_id)
    cfg = BlipConfig(vision_config=base.vision_config.to_dict(), text_config=text)
    torch.manual_seed(seed)
    model = BlipForConditionalGeneration(cfg).eval()
    model.save_pretrained(str(folder))
    BlipImageProcessor().save_pretrained(str(folder))
    v, t = cfg.vision_config, cfg.text_config
    return {"params_m": sum(p.numel() for p in model.parameters()) / 1e6,
            "vision": f"ViT {v.num_hidden_layers} layers x {v.hidden_size}, {v.image_size} px, patch {v.patch_size}",
            "text": f"BERT decoder {t.num_hidden_layers} layers x {t.hidden_size}, vocab {t.vocab_size}"}


def train_space_coffee(model_dir: Path) -> dict[str, Any]:
    """The tests' collection, trained on real MobileNet embeddings into MODEL_DIR/classifiers."""
    from app.collections.train import Example, train_collection
    from app.core.config import Settings
    from tests.helpers import photo
    from tests.unit.test_collections import NEGATIVE, POSITIVE, mobilenet_embed, training_copies

    examples = []
    for name in POSITIVE + NEGATIVE:
        label = 1 if name in POSITIVE else 0
        for i, v in enumerate(mobilenet_embed(training_copies(photo(name)))):
            examples.append(Example(COLLECTION, f"{name}/{i}", v, label))
    s = Settings(_env_file=None, model_dir=model_dir)
    clf, _, problems = train_collection(model_dir / "classifiers", COLLECTION, examples, "mobilenet", s)
    return {"version": clf.version, "n": len(examples), "positives": list(POSITIVE), "problems": problems,
            "metrics": {k: clf.metrics[k] for k in ("precision", "recall", "roc_auc", "n_train", "n_test")}}


def build_model_dir(model_dir: str, with_classify: bool) -> dict[str, Any]:
    model_dir_p = Path(model_dir)
    notes: dict[str, Any] = {}
    if with_classify:
        src = shared_weights() / MOBILENET_SRC
        shutil.copytree(src, model_dir_p / "mobilenet", dirs_exist_ok=True)
        os.environ["LOUPE_SHARED_WEIGHTS"] = str(shared_weights())
        notes["mobilenet"] = str(src)
        notes["collection"] = train_space_coffee(model_dir_p)
    t0 = time.perf_counter()
    notes["blip"] = write_base_blip(model_dir_p / "caption")
    notes["blip"]["write_s"] = time.perf_counter() - t0
    return notes


# --------------------------------------------------------------------------- the measuring process
def measure(model_dir: str, with_classify: bool, rounds: int = 3) -> dict[str, Any]:
    import logging

    from fastapi.testclient import TestClient

    from app.core.config import Settings
    from app.main import create_app
    from scripts.bench_tasks import bench_images

    models = (["mobilenet"] if with_classify else []) + ["caption"]
    settings = Settings(_env_file=None, model_dir=Path(model_dir), log_level="WARNING", log_json=False,
                        preload_models=",".join(models))
    images = bench_images()
    n = len(images)
    b64 = [(name, base64.b64encode(data).decode()) for name, data in images]

    def one(tasks: list[dict]) -> list[bytes]:
        return [json.dumps({"image": {"base64": s, "image_id": name}, "tasks": tasks}).encode() for name, s in b64]

    def batch(tasks: list[dict]) -> bytes:
        return json.dumps({"images": [{"base64": s, "image_id": name} for name, s in b64], "tasks": tasks}).encode()

    headers = {"content-type": "application/json"}
    app = create_app(settings)
    logging.getLogger("loupe").setLevel(logging.WARNING)
    t0 = time.perf_counter()
    with TestClient(app) as client:
        startup_s = time.perf_counter() - t0
        reg = app.state.registry
        loaded = {m: {"state": reg.info(m).state.value, "device": reg.info(m).device, "load_s": reg.info(m).load_time_s}
                  for m in models}

        def singles(bodies: list[bytes]) -> Any:
            return lambda: [client.post("/v1/tasks", content=b, headers=headers) for b in bodies]

        def whole(body: bytes) -> Any:
            return lambda: client.post("/v1/tasks/batch", content=body, headers=headers)

        variants: dict[str, Any] = {}
        if with_classify:
            variants.update({"embed16": whole(batch(EMBED)), "classify16": whole(batch(CLASSIFY)),
                             "embed1": singles(one(EMBED)), "classify1": singles(one(CLASSIFY))})
        variants.update({"describe1": singles(one(DESCRIBE)), "describe16": whole(batch(DESCRIBE))})

        t0 = time.perf_counter()
        warm: dict[str, float] = {}
        for name, fn in variants.items():  # warm-up: every variant once, in full (the batch shapes included)
            t = time.perf_counter()
            fn()
            warm[name] = (time.perf_counter() - t) * 1000 / n
        warmup_s = time.perf_counter() - t0
        load_before = os.getloadavg()
        ms: dict[str, list[float]] = {k: [] for k in variants}
        last: dict[str, Any] = {}
        for _ in range(rounds):
            for name, fn in variants.items():
                t = time.perf_counter()
                last[name] = fn()
                ms[name].append((time.perf_counter() - t) * 1000 / n)

    def results(out: Any) -> list[dict]:
        rs = out if isinstance(out, list) else [out]
        for r in rs:
            if r.status_code != 200:
                raise RuntimeError(f"HTTP {r.status_code}: {r.text[:500]}")
        if isinstance(out, list):
            return [r.json()["results"] for r in out]
        return [item["results"] for item in out.json()["results"]]

    figures: dict[str, Any] = {}
    for name, out in last.items():
        res = results(out)
        op = next(iter(res[0]))
        statuses = {s: sum(1 for r in res if r[op]["status"] == s) for s in ("success", "skipped", "error")}
        errors = sorted({str(r[op].get("error_message")) for r in res if r[op]["status"] != "success"})
        extra: dict[str, Any] = {}
        if op == "cls":
            extra["in_collection"] = [r[op]["data"]["is_in_collection"] for r in res if r[op]["status"] == "success"]
        if op == "cap":
            caps = [r[op]["data"] for r in res if r[op]["status"] == "success"]
            extra["caption_words_mean"] = statistics.mean(len(c.split()) for c in caps) if caps else 0.0
            extra["captions"] = caps
        figures[name] = {"ms_per_image": statistics.median(ms[name]), "runs_ms_per_image": ms[name],
                         "warmup_ms_per_image": warm[name], "statuses": statuses, "errors": errors, **extra}
    same_caps = (figures["describe1"].get("captions") == figures["describe16"].get("captions"))
    same_cls = (figures["classify1"]["in_collection"] == figures["classify16"]["in_collection"]) if with_classify else None
    return {"n_images": n, "images": [name for name, _ in images], "rounds": rounds, "startup_s": startup_s,
            "warmup_s": warmup_s, "models": loaded, "variants": figures, "same_captions_b1_b16": same_caps,
            "same_classify_b1_b16": same_cls, "loadavg_1min": [load_before[0], os.getloadavg()[0]],
            "peak_rss_mib": peak_rss_mib()}


def _subprocess_json(code: str, *argv: str) -> Any:
    proc = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, cwd=ROOT, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark subprocess failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- the section
LABELS = {
    "embed16": "baseline: embed_mobilenet only, batch 16 (1 POST /v1/tasks/batch)",
    "classify16": "classify, batch 16 (1 POST /v1/tasks/batch)",
    "embed1": "baseline: embed_mobilenet only, batch 1 (16 POST /v1/tasks)",
    "classify1": "classify, batch 1 (16 POST /v1/tasks)",
    "describe1": f"describe max_length {MAX_LENGTH}, batch 1 (16 POST /v1/tasks)",
    "describe16": f"describe max_length {MAX_LENGTH}, batch 16 (1 POST /v1/tasks/batch)",
}
#: each variant's baseline in the same run
BASELINE = {"embed16": "embed16", "classify16": "embed16", "embed1": "embed1", "classify1": "embed1",
            "describe1": "describe1", "describe16": "describe1"}


def bench_collections(args: Any = None) -> dict[str, Any]:
    rounds = int(getattr(args, "rounds", 3) or 3)
    print("\n## collections: classify (collection trained on real MobileNet embeddings) and describe "
          "(full-size BLIP base, random weights), 16 real photos, in-process (create_app + TestClient)")
    mob = shared_weights() / MOBILENET_SRC
    with_classify = mob.is_dir()
    if not with_classify:
        print(f"  SKIPPED classify: the real MobileNet weights are missing: {mob} (they live in ../shared/weights "
              "next to the repository; LOUPE_SHARED_WEIGHTS overrides); describe needs none and still runs")
    tmp = Path(tempfile.mkdtemp(prefix="loupe-bench-collections-"))
    try:
        boot = ("import json, sys; from pathlib import Path; sys.path.insert(0, sys.argv[3]); "
                "import scripts.bench_collections as b; ")
        wc = "True" if with_classify else "False"
        notes = _subprocess_json(boot + f"print(json.dumps(b.build_model_dir(sys.argv[1], {wc})))",
                                 str(tmp), "", str(ROOT))
        out = _subprocess_json(boot + f"print(json.dumps(b.measure(sys.argv[1], {wc}, {rounds})))",
                               str(tmp), "", str(ROOT))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    out["notes"] = notes
    if not with_classify:
        out["classify_skipped"] = f"real MobileNet weights missing: {mob}"
    print_report(out)
    return out


def print_report(out: dict[str, Any]) -> None:
    notes, v, n = out["notes"], out["variants"], out["n_images"]
    if "collection" in notes:
        c = notes["collection"]
        m = c["metrics"]
        print(f"  - classify: MobileNet real weights from {notes['mobilenet']}; collection {COLLECTION!r} "
              f"({' + '.join(c['positives'])} as positives) trained in the temporary CLASSIFIER_DIR on {c['n']} real "
              f"MobileNet embeddings (skimage photos and degraded copies, as tests/unit/test_collections.py): "
              f"held-out precision {m['precision']:.3f}, recall {m['recall']:.3f}, ROC AUC {m['roc_auc']:.3f}")
    b = notes["blip"]
    print(f"  - describe: FULL-SIZE BLIP base architecture (BlipForConditionalGeneration(BlipConfig()), "
          f"{b['params_m']:.0f} M parameters: {b['vision']}; {b['text']}) with RANDOM weights, written with "
          f"save_pretrained + BERT-size tokenizer + BlipImageProcessor() in {b['write_s']:.0f} s; speed does not "
          f"depend on the weights' values (random weights make random words and run every caption to max_length "
          f"{MAX_LENGTH}: mean {v['describe16']['caption_words_mean']:.1f} words)")
    models = ", ".join(f"{k} {d['state']} on {d['device']} ({d['load_s']} s)" for k, d in out["models"].items())
    print(f"  - images: {n} JPEGs q90, longest side 1920 px (1440 px for 4), base64 JSON; models preloaded: {models}; "
          f"app start {out['startup_s']:.1f} s, warm-up {out['warmup_s']:.1f} s")
    for name, f in v.items():
        st = f["statuses"]
        line = f"{st['success']} ok / {st['skipped']} skipped / {st['error']} error"
        if "in_collection" in f:
            line += f", {sum(f['in_collection'])} of {len(f['in_collection'])} in the collection"
        print(f"  - results {name}: {line}")
        for e in f["errors"]:
            print(f"  !! {name}: {e}")
    if out["same_classify_b1_b16"] is not None:
        print(f"  - same classify answers at batch 1 and 16: {out['same_classify_b1_b16']}")
    print(f"  - same captions at batch 1 and 16: {out['same_captions_b1_b16']}")
    la = out["loadavg_1min"]
    print(f"\nms per image, median of {out['rounds']} rounds after a warm-up (each round runs every variant; "
          f"1-min load average {la[0]:.1f} before, {la[1]:.1f} after, on {os.cpu_count()} cores)")
    print("| variant | ms / image | rounds (ms / image) | × its baseline (time) | baseline |")
    print("|---|---|---|---|---|")
    for name, f in v.items():
        base = v[BASELINE[name]]
        runs = " / ".join(f"{x:.1f}" for x in f["runs_ms_per_image"])
        f["ratio_vs_baseline"] = f["ms_per_image"] / base["ms_per_image"]
        print(f"| {LABELS[name]} | {f['ms_per_image']:.1f} | {runs} | {f['ratio_vs_baseline']:.2f} | "
              f"{'—' if BASELINE[name] == name else BASELINE[name]} |")
    if "classify16" in v:
        for b_ in ("16", "1"):
            d = v["classify" + b_]["ms_per_image"] - v["embed" + b_]["ms_per_image"]
            print(f"  classify over the embedding alone, batch {b_}: {d:+.2f} ms / image")
    sp = v["describe1"]["ms_per_image"] / v["describe16"]["ms_per_image"]
    print(f"  describe: batch 16 takes {1 / sp:.2f}× the time per image of batch 1 ({sp:.2f}× faster)")
    print(f"\npeak RSS of the measuring process (app in-process, {' + '.join(out['models'])} loaded): "
          f"{out['peak_rss_mib']:.0f} MiB")


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path)
    a = parser.parse_args()
    res = bench_collections(a)
    if a.json:
        a.json.write_text(json.dumps(res, indent=2, default=float))
