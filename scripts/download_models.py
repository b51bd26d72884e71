#!/usr/bin/env python3
"""Fill MODEL_DIR with Loupe's models.

    python scripts/download_models.py                      # every model, from its public source (needs internet)
    python scripts/download_models.py brisque faces        # only these
    python scripts/download_models.py --from ../shared/weights   # copy from a local folder (no internet)
    python scripts/download_models.py --list               # what is where, and what is missing

Each model downloads with a progress bar and is verified by sha256 where its source publishes fixed
files. `--from DIR` accepts either a MODEL_DIR-shaped folder (brisque/, niqe/, yunet/ …) or the
layout of the project's offline weights folder (brisque_libsvm_live/, niqe_live/, face_yunet/ …).
Paths follow the same settings as the service (MODEL_DIR, BRISQUE_PATH, …, from the environment or .env).
`tags` downloads the files of the model TAGS_MODEL names (the MobileNetV2 TFLite and its labels, or
torchvision's EfficientNet-B3 state_dict); `--from` copies whichever of them the folder holds.
`person` likewise downloads the file PERSON_MODEL names (the DeepLabV3 TFLite, or torchvision's SSDlite
state_dict).
`clip` and `dinov2` snapshot the hub id CLIP_MODEL_NAME / DINOV2_MODEL_NAME names (config.json,
model.safetensors, preprocessor_config.json …) into their folder.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.core.config import Settings  # noqa: E402
from app.models.registry import CATALOG, adapter_class  # noqa: E402

#: other names a model's folder has in a local weights collection
ALIASES: dict[str, tuple[str, ...]] = {
    "brisque": ("brisque_libsvm_live", "brisque_opencv_live"),
    "niqe": ("niqe_live",),
    "yunet": ("face_yunet",),
    "laion_aesthetic": ("aesthetic_laion_v1_linear",),
    "emotion_mini_xception": ("emotion_fer_mini_xception",),
    "mobilenet": ("imagenet_mobilenet_tflite",),
    "tags": ("imagenet_mobilenet_tflite",),
    "person": ("person_deeplabv3_tflite",),
}


def copy_from(src_root: Path, name: str, settings: Settings) -> str:
    cls = adapter_class(name)
    adapter = cls(settings)
    dest = adapter.resolve_path()
    subdir = dest.name if dest.suffix == "" else dest.parent.name
    candidates = [src_root / cls.default_subdir, src_root / subdir]
    candidates += [src_root / alias for alias in ALIASES.get(cls.default_subdir, ())]
    candidates += [src_root / alias for alias in ALIASES.get(subdir, ())]
    for src in candidates:
        if src.is_dir() and any(src.iterdir()):
            target = dest if dest.suffix == "" else dest.parent
            target.mkdir(parents=True, exist_ok=True)
            wanted = tuple(getattr(cls, "files", ())) + tuple(getattr(cls, "alt_files", ()))
            copied = 0
            for f in src.iterdir():
                if f.is_file() and (not wanted or f.name in wanted or f.name.startswith("LICENSE")):
                    shutil.copy2(f, target / f.name)
                    copied += 1
                elif f.is_dir() and not wanted:
                    shutil.copytree(f, target / f.name, dirs_exist_ok=True)
                    copied += 1
            return f"copied {copied} file(s) from {src} to {target}"
    return f"not found under {src_root} (looked for {', '.join(c.name for c in candidates)})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="*", help=f"registry names (default: all): {', '.join(CATALOG)}")
    parser.add_argument("--from", dest="from_dir", type=Path, help="copy from this local folder instead of downloading")
    parser.add_argument("--model-dir", type=Path, help="override MODEL_DIR")
    parser.add_argument("--list", action="store_true", help="show each model's path and whether its files are there")
    parser.add_argument("--no-export", action="store_true", help="skip the ONNX export of the models INFERENCE_RUNTIME "
                        "runs on ONNX Runtime / OpenVINO (otherwise done here, so that a server never pays for it)")
    args = parser.parse_args()

    overrides = {"model_dir": args.model_dir} if args.model_dir else {}
    settings = Settings(**overrides)
    names = args.models or list(CATALOG)
    unknown = [n for n in names if n not in CATALOG]
    if unknown:
        parser.error(f"unknown model(s): {', '.join(unknown)}; choose from {', '.join(CATALOG)}")

    failures = 0
    for name in names:
        try:
            cls = adapter_class(name)
        except Exception as exc:  # noqa: BLE001
            print(f"{name:16s} cannot import its adapter: {exc}")
            failures += 1
            continue
        path = cls(settings).resolve_path()
        if args.list:
            print(f"{name:16s} {'present' if path.exists() else 'MISSING':8s} {path}   source: {cls.source}")
            continue
        if args.from_dir:
            message = copy_from(args.from_dir, name, settings)
            failures += message.startswith("not found")
            print(f"{name:16s} {message}")
            continue
        print(f"{name:16s} downloading from {cls.source} into {path}")  # (its ONNX export follows, below)
        try:
            if name == "clip":
                from app.models.clip import is_hub_id

                if not is_hub_id(settings.clip_model_name):
                    print(f"{name:16s} CLIP_MODEL_NAME is a local path ({settings.clip_model_name}); nothing to download")
                    continue
                cls.download(path, settings.clip_model_name)
                continue
            if name == "dinov2":  # the hub id is a setting (DINOV2_MODEL_NAME), as for CLIP
                cls.download(path, settings.dinov2_model_name)
                continue
            if name == "caption":  # likewise CAPTION_MODEL_NAME
                cls.download(path, settings.caption_model_name)
                continue
            if name == "tags":  # the files of the model TAGS_MODEL picks
                cls.download(path if path.suffix == "" else path.parent, settings.tags_model)
                continue
            if name == "person":  # the file of the model PERSON_MODEL picks
                cls.download(path if path.suffix == "" else path.parent, settings.person_model)
                continue
            cls.download(path if path.suffix == "" else path.parent)
        except Exception as exc:  # noqa: BLE001 - report and go on with the others
            failures += 1
            print(f"{name:16s} FAILED: {type(exc).__name__}: {exc}")
    if not args.list and not args.no_export:
        failures += export_onnx(names, settings)
    return 1 if failures else 0


def export_onnx(names: list[str], settings: Settings) -> int:
    """Load every model that exports to ONNX (its adapter has `export_onnx`) once with the configured runtime,
    which writes its graph beside the weights (`app.models.onnx_runtime.ensure_onnx`). Returns the failures."""
    if settings.inference_runtime == "torch":
        return 0
    failures = 0
    for name in names:
        cls = adapter_class(name)
        if not hasattr(cls, "export_onnx"):
            continue
        adapter = cls(settings)
        path = adapter.resolve_path()
        if not path.exists():
            continue
        try:
            adapter.load(path, "cpu")
            print(f"{name:16s} ONNX graph ready for {settings.inference_runtime}")
        except Exception as exc:  # noqa: BLE001
            failures += 1
            print(f"{name:16s} ONNX export FAILED: {type(exc).__name__}: {exc}")
    return failures


if __name__ == "__main__":
    raise SystemExit(main())
