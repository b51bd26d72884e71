#!/usr/bin/env python
"""Suggest BLUR_THRESHOLD (and BRIGHT_MIN / BRIGHT_MAX) for your own photos.

Measures every image of a folder with exactly the service's code and settings
(app.imaging.decode.decode_image → DecodedImage.gray_max(ANALYSIS_MAX_DIM) →
app.services.blur.laplacian_variance and app.services.exposure.exposure_stats;
settings from the environment / .env like the server), prints percentiles, and
suggests:

- BLUR_THRESHOLD by Otsu's method on log10 of the Laplacian variances (the split
  of the sample into a "low" and a "high" group that maximises the variance
  between them). It is only meaningful when the folder holds both sharp and
  blurry shots; the separability η (0..1) says how clearly the two groups part.
- BRIGHT_MIN / BRIGHT_MAX as low / high percentiles of the mean brightness
  (default the 2nd and 98th: about 2 % of these photos flagged at each end).

Labelled mode (automatic when FOLDER has a `sharp/` sub-folder and one or more
`blur*/` sub-folders, e.g. `blur_motion/`, `blur_defocus/`): per-class
percentiles and the accuracy and per-class recall of the suggested threshold,
of the current BLUR_THRESHOLD, and of the best threshold possible on those labels.

Examples:
    python scripts/tune_blur.py ~/photos
    python scripts/tune_blur.py labelled/ --save-hist blur.png --save-csv blur.csv
    BLUR_THRESHOLD=80 python scripts/tune_blur.py ~/photos   # compare with another current value

Exit codes: 0 done; 1 done, but some files could not be read (listed on stderr);
2 usage error (no such folder, no images, fewer than two distinct values).
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from app.cli.manifest import IMAGE_EXTENSIONS, iter_shots  # noqa: E402
from app.core.config import Settings  # noqa: E402
from app.core.errors import ApiError  # noqa: E402
from app.imaging.decode import decode_image  # noqa: E402
from app.services import tuning  # noqa: E402
from app.services.blur import laplacian_variance  # noqa: E402
from app.services.exposure import exposure_stats  # noqa: E402

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE = 0, 1, 2
SHARP = "sharp"
UNLABELLED = "unlabelled"


@dataclass
class Measurement:
    path: Path
    label: str
    laplacian_variance: float | None = None
    mean_brightness: float | None = None
    width: int | None = None
    height: int | None = None
    error: str | None = None


def measure(path: Path, label: str, settings: Settings, gray: bool = True) -> Measurement:
    """The numbers the service computes for this file (the /v1/quality gate decodes grey; /v1/analyze with
    models decodes RGB then converts: the two differ by well under 1 %)."""
    m = Measurement(path=path, label=label)
    try:
        img = decode_image(path.read_bytes(), max_pixels=settings.max_image_pixels,
                           min_dim=settings.analysis_max_dim, gray=gray)
        g = img.gray_max(settings.analysis_max_dim)
        m.laplacian_variance = laplacian_variance(g)
        m.mean_brightness = exposure_stats(g).mean_brightness
        m.width, m.height = img.width, img.height
    except ApiError as exc:
        m.error = f"{exc.error_type}: {exc.message}"
    except OSError as exc:
        m.error = f"unreadable: {exc}"
    return m


def label_of(path: Path, root: Path, labelled: bool) -> str:
    if not labelled:
        return UNLABELLED
    first = path.relative_to(root).parts[0] if len(path.relative_to(root).parts) > 1 else ""
    if first == SHARP or first.startswith("blur"):
        return first
    return UNLABELLED


def detect_labelled(root: Path) -> bool:
    return (root / SHARP).is_dir() and any(p.is_dir() and p.name.startswith("blur") for p in root.iterdir())


def ordinal(q: float) -> str:
    if q != int(q):
        return f"{q:g}th"
    n = int(q)
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def fmt(v: float) -> str:
    return f"{v:.1f}" if abs(v) < 1e5 else f"{v:.3g}"


def pct_line(title: str, values: list[float], width: int = 20) -> str:
    p = tuning.percentiles(values)
    return f"  {title:<{width}}  " + "  ".join(f"p{int(q) if q == int(q) else q}={fmt(v)}" for q, v in p.items())


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="tune_blur.py", description=__doc__.split("\n\n")[0],
        epilog="Exit codes: 0 done; 1 some files could not be read; 2 usage error. "
               f"Image extensions: {', '.join(IMAGE_EXTENSIONS)}. Settings (ANALYSIS_MAX_DIM, MAX_IMAGE_PIXELS, "
               "the current BLUR_THRESHOLD / BRIGHT_MIN / BRIGHT_MAX) come from the environment and .env, as for the server.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", type=Path, help="Folder of images, searched recursively.")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--labelled", dest="labelled", action="store_true", default=None,
                      help="Force labelled mode: sub-folders sharp/ and blur*/ (default: automatic when they exist).")
    mode.add_argument("--unlabelled", dest="labelled", action="store_false",
                      help="Treat the whole folder as one unlabelled sample even if sharp/ and blur*/ exist.")
    ap.add_argument("--bright-percentiles", nargs=2, type=float, metavar=("LOW", "HIGH"), default=(2.0, 98.0),
                    help="Percentiles of the mean brightness suggested as BRIGHT_MIN and BRIGHT_MAX (default: 2 98).")
    ap.add_argument("--rgb", action="store_true",
                    help="Decode to RGB then grey, like /v1/analyze when models run (default: grey decode, like /v1/quality).")
    ap.add_argument("--save-csv", type=Path, metavar="PATH",
                    help="Write one row per image: path, label, width, height, laplacian_variance, log10_variance, "
                         "mean_brightness, blurry_at_suggested, blurry_at_current, error.")
    ap.add_argument("--save-hist", type=Path, metavar="PNG",
                    help="Save histograms (log10 variance per class with the thresholds; mean brightness with the bounds).")
    ap.add_argument("--workers", type=int, default=0, help="Threads that measure in parallel (default: ANALYSIS_THREADS / CPUs).")
    ap.add_argument("-q", "--quiet", action="store_true", help="Only print the suggested settings.")
    return ap


def save_hist(path: Path, by_class: dict[str, list[float]], brightness: list[float], suggested: float,
              current: float, bounds: tuple[float, float], current_bounds: tuple[float, float]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    logs_all = [v for vals in by_class.values() for v in tuning.log10_safe(vals)]
    bins = tuning.histogram_bins(logs_all)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for label, vals in sorted(by_class.items(), key=lambda kv: (kv[0] != SHARP, kv[0])):
        ax1.hist(tuning.log10_safe(vals), bins=bins, histtype="stepfilled", alpha=0.45, label=f"{label} (n={len(vals)})")
    ax1.axvline(math.log10(max(suggested, tuning.LOG_FLOOR)), color="k", lw=2, label=f"suggested {suggested:.1f}")
    ax1.axvline(math.log10(max(current, tuning.LOG_FLOOR)), color="r", ls="--", lw=1.5, label=f"current {current:g}")
    ax1.set_xlabel("log10(Laplacian variance) — blurry below the line")
    ax1.set_ylabel("images")
    ax1.yaxis.get_major_locator().set_params(integer=True)
    ax1.set_title("Sharpness")
    ax1.legend(fontsize=8)
    ax2.hist(brightness, bins=32, range=(0, 255), color="#888", alpha=0.8)
    ax2.axvline(bounds[0], color="k", lw=2, label=f"suggested {bounds[0]:.0f} / {bounds[1]:.0f}")
    ax2.axvline(bounds[1], color="k", lw=2)
    ax2.axvline(current_bounds[0], color="r", ls="--", lw=1.5, label=f"current {current_bounds[0]:g} / {current_bounds[1]:g}")
    ax2.axvline(current_bounds[1], color="r", ls="--", lw=1.5)
    ax2.set_xlabel("mean brightness (0–255)")
    ax2.set_title("Exposure")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    root: Path = args.folder
    if not root.is_dir():
        print(f"error: {root} is not a folder", file=sys.stderr)
        return EXIT_USAGE
    lo_pct, hi_pct = args.bright_percentiles
    if not 0 <= lo_pct < hi_pct <= 100:
        print("error: --bright-percentiles needs 0 <= LOW < HIGH <= 100", file=sys.stderr)
        return EXIT_USAGE
    settings = Settings()
    labelled = detect_labelled(root) if args.labelled is None else args.labelled
    files = [path for path, _companions in iter_shots(root)]  # a RAW+JPEG pair is one shot, measured once
    if not files:
        print(f"error: no images ({', '.join(IMAGE_EXTENSIONS)}) under {root}", file=sys.stderr)
        return EXIT_USAGE
    workers = args.workers or settings.threads
    with ThreadPoolExecutor(max_workers=workers) as pool:
        ms = list(pool.map(lambda p: measure(p, label_of(p, root, labelled), settings, gray=not args.rgb), files))
    good = [m for m in ms if m.error is None]
    bad = [m for m in ms if m.error is not None]
    for m in bad:
        print(f"warning: skipped {m.path}: {m.error}", file=sys.stderr)
    variances = [m.laplacian_variance for m in good]
    brightness = [m.mean_brightness for m in good]
    try:
        sug = tuning.suggest_blur_threshold(variances)
    except ValueError:
        print(f"error: {len(good)} readable image(s) with fewer than two distinct sharpness values: nothing to split",
              file=sys.stderr)
        return EXIT_USAGE
    bounds = tuning.brightness_bounds(brightness, lo_pct, hi_pct)
    cur = settings.blur_threshold
    by_class: dict[str, list[float]] = {}
    for m in good:
        by_class.setdefault(m.label, []).append(m.laplacian_variance)
    labelled_classes = {k: v for k, v in by_class.items() if k != UNLABELLED}
    has_labels = labelled and SHARP in labelled_classes and len(labelled_classes) > 1

    out = print
    if not args.quiet:
        out(f"Loupe blur tuner: {len(good)} images measured in {root}" + (f" ({len(bad)} unreadable, skipped)" if bad else ""))
        out(f"Measured like the service: {'RGB' if args.rgb else 'grey'} decode, longest side scaled to "
            f"ANALYSIS_MAX_DIM={settings.analysis_max_dim}, variance of the 3x3 Laplacian; mean grey level.\n")
        out("Percentiles")
        width = max([18] + [len(f"variance [{k}]") for k in by_class]) if has_labels else 18
        out(pct_line("Laplacian variance", variances, width))
        out(pct_line("mean brightness", brightness, width))
        if has_labels:
            for label in sorted(by_class, key=lambda k: (k != SHARP, k)):
                out(pct_line(f"variance [{label}]", by_class[label], width))
        out("")
    out(f"BLUR_THRESHOLD={sug.threshold:.1f}")
    out(f"BRIGHT_MIN={bounds[0]:.1f}")
    out(f"BRIGHT_MAX={bounds[1]:.1f}")
    if not args.quiet:
        out("")
        out(f"BLUR_THRESHOLD: Otsu's method on log10(Laplacian variance) splits at {sug.log10_threshold:.3f} "
            f"(variance {sug.threshold:.1f}); separability η={sug.separability:.2f} (1 = two clearly separate groups; "
            f"below ~0.5 the folder may hold only sharp or only blurry shots). {sug.n_below} image(s) would be blurry, "
            f"{sug.n_above} sharp. With the current BLUR_THRESHOLD={cur:g}: "
            f"{sum(v < cur for v in variances)} blurry.")
        out(f"BRIGHT_MIN / BRIGHT_MAX: the {ordinal(lo_pct)} and {ordinal(hi_pct)} percentiles of the mean brightness "
            f"(current {settings.bright_min:g} / {settings.bright_max:g}: "
            f"{sum(b < settings.bright_min for b in brightness)} under, {sum(b > settings.bright_max for b in brightness)} over).")
        if labelled and not has_labels:
            out("Labelled mode: needs readable images in sharp/ and in at least one blur*/ folder; accuracy not computed.")
    if has_labels:
        ev_s = tuning.evaluate_threshold(labelled_classes, sug.threshold, SHARP)
        ev_c = tuning.evaluate_threshold(labelled_classes, cur, SHARP)
        ev_b = tuning.best_threshold(labelled_classes, SHARP)
        out("")
        out(f"Labelled: {', '.join(f'{k} ({len(v)})' for k, v in sorted(labelled_classes.items(), key=lambda kv: (kv[0] != SHARP, kv[0])))}")
        out(f"  {'class':<16}{'recall@suggested':>18}{'recall@current':>16}{'recall@best':>13}")
        for label in sorted(labelled_classes, key=lambda k: (k != SHARP, k)):
            out(f"  {label:<16}{ev_s.recall[label]:>18.1%}{ev_c.recall[label]:>16.1%}{ev_b.recall[label]:>13.1%}")
        out(f"  accuracy: suggested {sug.threshold:.1f} → {ev_s.accuracy:.1%} (balanced {ev_s.balanced_accuracy:.1%}); "
            f"current {cur:g} → {ev_c.accuracy:.1%}; best on these labels {ev_b.threshold:.1f} → {ev_b.accuracy:.1%}")
    if args.save_csv:
        args.save_csv.parent.mkdir(parents=True, exist_ok=True)
        with args.save_csv.open("w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["path", "label", "width", "height", "laplacian_variance", "log10_variance", "mean_brightness",
                        "blurry_at_suggested", "blurry_at_current", "error"])
            for m in ms:
                if m.error:
                    w.writerow([m.path, m.label, "", "", "", "", "", "", "", m.error])
                    continue
                w.writerow([m.path, m.label, m.width, m.height, f"{m.laplacian_variance:.4f}",
                            f"{math.log10(max(m.laplacian_variance, tuning.LOG_FLOOR)):.4f}", f"{m.mean_brightness:.3f}",
                            int(m.laplacian_variance < sug.threshold), int(m.laplacian_variance < cur), ""])
        if not args.quiet:
            out(f"\nwrote {args.save_csv}")
    if args.save_hist:
        try:
            save_hist(args.save_hist, by_class, brightness, sug.threshold,
                      cur, bounds, (settings.bright_min, settings.bright_max))
        except ImportError:
            print("error: --save-hist needs matplotlib (pip install matplotlib)", file=sys.stderr)
            return EXIT_USAGE
        if not args.quiet:
            out(f"wrote {args.save_hist}")
    return EXIT_SOME_FAILED if bad else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
