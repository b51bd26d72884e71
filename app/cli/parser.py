"""The command line's surface: `loupe`, `loupe score`, `loupe cluster`, their options and help text.

Only argparse lives here, so the whole user-facing contract (flags, defaults,
help, exit-code table) reads in one place and the commands stay plain functions
of the parsed `Namespace`. `ANALYSES` ties each `score` option to the flag of
/v1/analyze it sets; `score --tasks` replaces them with a task list (tasks.py).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from app.cli.errors import EXIT_CODES_HELP
from app.cli.manifest import IMAGE_EXTENSIONS, PAIR_EXTENSIONS
from app.cli.tasks import TASKS_CSV_HELP
from app.cli.writer import CSV_FIELDS
from app.collections.train import add_arguments as add_train_arguments

#: how a folder is read as shots (both commands' help)
SHOTS_HELP = ("A camera RAW and a JPEG or HEIC/HEIF with the same name in the same folder (e.g. IMG_0001.CR3 + "
              "IMG_0001.JPG; " + ", ".join(PAIR_EXTENSIONS) + ", case-insensitive) are one shot, analysed once from "
              "the JPEG (else the HEIC/HEIF); the RAW is listed as its companion. A RAW alone is analysed from the "
              "RAW (its embedded preview, or a half-size demosaic).")

ANALYSES = (  # flag name in the API, CLI option, default, help
    ("run_blur", "blur", True, "sharpness: variance of the Laplacian, is_blurry against BLUR_THRESHOLD"),
    ("run_exposure", "exposure", True, "mean brightness, clipping, verdict against BRIGHT_MIN/BRIGHT_MAX"),
    ("run_quality", "quality", True, "the 0-1 quality score and band (BRISQUE / NIMA technical when available)"),
    ("run_aesthetic", "aesthetic", False, "NIMA aesthetic (1-10); LAION aesthetic too when --embedding is on"),
    ("run_faces", "faces", False, "face boxes (YuNet)"),
    ("run_emotion", "emotion", False, "faces with their dominant emotion (DeepFace)"),
    ("run_embedding", "embedding", False, "CLIP embedding (written to the JSONL only)"),
)


class Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the epilog's exit-code table as written; descriptions are wrapped by `wrap`."""


def wrap(text: str) -> str:
    import textwrap

    return textwrap.fill(text, width=min(100, shutil.get_terminal_size((100, 20)).columns - 2))


def add_connection_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("where the analysis runs")
    g.add_argument("--server", metavar="URL", default=None,
                   help="Base URL of a running Loupe (e.g. http://127.0.0.1:8000). Default: env LOUPE_SERVER, else "
                        "run Loupe in this process with the settings of the environment / .env (no server needed).")
    g.add_argument("--api-key", metavar="KEY", default=None,
                   help="API key for --server, sent as X-Api-Key. Default: env LOUPE_API_KEY (preferred: keeps it "
                        "out of the shell history and the process list).")
    g.add_argument("--timeout", type=float, default=300.0, metavar="S",
                   help="Seconds to wait for one request to --server (default: %(default)g).")
    g.add_argument("--progress", action=argparse.BooleanOptionalAction, default=sys.stderr.isatty(),
                   help="Show a progress bar (rate and ETA) on stderr. Default: on when stderr is a terminal.")
    g.add_argument("-v", "--verbose", action="store_true",
                   help="Log the in-process service at INFO level on stderr (default: errors only).")


def source_arg(text: str) -> Path | str:
    """A local folder or manifest (a Path), or an object-store prefix kept as written ('s3://bucket/prefix')."""
    from app.cli.objectstore import is_object_uri

    return text if is_object_uri(text) else Path(text)


def add_engine_args(p: argparse.ArgumentParser, command: str) -> None:
    g = p.add_argument_group("engine (--engine ray: Ray Data on a Ray cluster; see README, \"Bulk scoring on Ray\")")
    g.add_argument("--engine", choices=("inprocess", "ray"), default="inprocess",
                   help="inprocess (the default): this process (or --server). ray: read tasks and an actor pool on a Ray "
                        "cluster, each actor one in-process Loupe (its models loaded once) running the same pipeline; "
                        + ("writes PREFIX.parquet (the CSV's columns) and PREFIX.jsonl instead of PREFIX.csv; resumes by "
                           "path and sha256." if command == "score" else
                           "features on the cluster, grouping on this machine (sparse DBSCAN), each group ranked by an actor.")
                        + " Needs `ray[data]`; SOURCE may also be s3://bucket/prefix.")
    g.add_argument("--address", default=None, metavar="ADDR",
                   help="With --engine ray: the cluster, `auto` (the one `ray start` runs here) or ray://HOST:10001 (Ray "
                        "Client). Default: env RAY_ADDRESS, else a Ray started for this run on this machine.")
    g.add_argument("--workers", type=int, default=None, metavar="N",
                   help="With --engine ray: actors in the pool (each holds one Loupe and its models). Default: the "
                        "cluster's CPUs minus one per node (left to the read tasks), at least 1; each actor asks for at "
                        "most one CPU, less when N actors would not leave that CPU free.")
    if command == "cluster":
        g.add_argument("--batch-size", type=int, default=16, metavar="N",
                       help="With --engine ray: images per actor call (default: %(default)s).")
    s3 = p.add_argument_group("object store (s3://bucket/prefix sources; keys from AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, "
                              "AWS_SESSION_TOKEN only)")
    s3.add_argument("--s3-endpoint", default=None, metavar="URL",
                    help="An S3-compatible endpoint (http://minio:9000). Default: env AWS_ENDPOINT_URL_S3, else "
                         "AWS_ENDPOINT_URL, else AWS.")
    s3.add_argument("--s3-region", default=None, metavar="REGION",
                    help="Default: env AWS_REGION, else AWS_DEFAULT_REGION.")
    s3.add_argument("--s3-anonymous", action="store_true", help="Unsigned requests (a public bucket).")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="loupe", formatter_class=Formatter,
        description=wrap("Loupe from the command line: score every photo of a folder, or group near-duplicates "
                    "and keep the best shot of each group. Runs Loupe in-process (no server needed) or "
                    "against a running server (--server)."),
        epilog=EXIT_CODES_HELP + "\nrun `loupe score --help` or `loupe cluster --help` for each command's options.")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")

    sc = sub.add_parser(
        "score", formatter_class=Formatter, help="analyse every image of a folder or manifest → CSV + JSONL",
        description=wrap("Analyse every image of a folder (recursively; " + ", ".join(IMAGE_EXTENSIONS) + ") or of a "
                    "manifest (CSV with a path/url column, JSONL of strings or {\"path\"|\"url\", \"image_id\"} "
                    "objects, or TXT with one path or URL per line; relative paths are relative to the manifest). "
                    "Images are sent in /v1/analyze/batch requests of --batch-size, --concurrency at a time. Each "
                    "image gives one JSONL line (the full result, or its error) and one CSV row (the key numbers). "
                    "Outputs are appended as results come: an interrupted run resumes where it stopped when run "
                    "again (images already in PREFIX.jsonl are skipped). A failed image is a row with its error, "
                    "never a stop. With --tasks FILE, a task list runs instead of the analyses: the same run, "
                    "through /v1/tasks/batch (boxes of the prominent person or face, embeddings and ImageNet tags "
                    "of those regions, whole-image analyses). " + SHOTS_HELP + " A shot is one row; its companions are "
                    "in the JSONL's `companions` list and the CSV's `companions` column (;-joined relative paths)."),
        epilog=wrap("CSV columns: " + ", ".join(CSV_FIELDS) + " (format: the one sniffed from the bytes, e.g. "
                    "JPEG, HEIF, AVIF, DNG; decoded_from: raw_preview or raw_demosaic for a RAW analysed as such).")
        + "\n\n" + wrap(TASKS_CSV_HELP) + "\n\n"
        + EXIT_CODES_HELP + """
examples:
  loupe score ~/photos --out scores
  loupe score urls.csv --aesthetic --faces --emotion --out run1
  LOUPE_API_KEY=… loupe score ~/photos --server http://loupe:8000 --concurrency 4 --batch-size 16
  loupe score ~/photos --tasks tasks.json --crops crops/ --out regions
  loupe score s3://photos/2024/ --engine ray --address auto --batch-size 32 --out scores
    with tasks.json: [{"operation_id": "person", "type": "detect_bounding_box"},
                      {"operation_id": "tags", "type": "tag_imagenet", "params": {"top": 3}},
                      {"operation_id": "face", "type": "embed_clip", "params": {"target": "prominent_face"}}]
""")
    sc.add_argument("source", type=source_arg, metavar="SOURCE",
                    help="Folder of images, a .csv/.jsonl/.txt manifest, or s3://bucket/prefix (--engine ray).")
    sc.add_argument("--out", type=Path, default=Path("loupe-scores"), metavar="PREFIX",
                    help="Output prefix: writes PREFIX.csv and PREFIX.jsonl (default: %(default)s).")
    t = sc.add_argument_group("tasks (POST /v1/tasks/batch instead of the analyses)")
    t.add_argument("--tasks", type=Path, default=None, metavar="FILE",
                   help="A JSON file holding an array of tasks: exactly the `tasks` of /v1/tasks ({\"operation_id\", "
                        "\"type\", \"params\"} each; GET /v1/operations lists the types). Every image gets every task; "
                        "the CSV gets one column per operation_id (see below), the JSONL each image's task results. "
                        "Replaces the analysis options. A file that cannot be read, is not JSON or not an array is a "
                        "usage error (2); a task list the server refuses stops the run (4), with its reason.")
    t.add_argument("--crops", type=Path, default=None, metavar="DIR",
                   help="With --tasks: ask for the crops (return_crops) and write each task's region as "
                        "DIR/<image path>/<operation_id>.png, its path in the JSONL as cropped_image_path (DIR is "
                        "skipped when scanning). Default: no crops.")
    g = sc.add_argument_group("analyses (each flag of /v1/analyze; --no-X turns one off; not with --tasks)")
    for api_flag, opt, default, text in ANALYSES:
        g.add_argument(f"--{opt}", dest=opt, action=argparse.BooleanOptionalAction, default=default,
                       help=f"{text} ({api_flag}; default: {'on' if default else 'off'}).")
    g.add_argument("--all", action="store_true", help="Turn every analysis on.")
    r = sc.add_argument_group("throughput and resuming")
    r.add_argument("--batch-size", type=int, default=8, metavar="N",
                   help="Images per /v1/analyze/batch (or /v1/tasks/batch) request (capped at MAX_BATCH_SIZE in-process; "
                        "a server that answers 413 gets smaller requests; default: %(default)s).")
    r.add_argument("--concurrency", type=int, default=2, metavar="N",
                   help="Requests in flight at once (default: %(default)s).")
    r.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                   help="Skip images already in PREFIX.jsonl and append (the default). --no-resume overwrites both "
                        "outputs.")
    r.add_argument("--retry-failed", action="store_true",
                   help="When resuming, process again the images whose last row is an error (the new row is appended; "
                        "the last row of an image is the one that counts).")
    add_connection_args(sc)
    add_engine_args(sc, "score")

    cl = sub.add_parser(
        "cluster", formatter_class=Formatter, help="group near-duplicates, pick the best shot → HTML contact sheet + JSON",
        description=wrap("Group the near-duplicate shots of a folder (bursts, re-saves, crops) and pick the best shot of "
                    "each group, through POST /v1/cluster/images (perceptual hashes, and CLIP embeddings when the "
                    "model is ready; ranked by the quality score). Writes PREFIX.html, a self-contained contact sheet "
                    "(thumbnails embedded, grouped, the best shot marked, rejected shots greyed with the reason, "
                    "scores under each), and PREFIX.json with the groups. --copy-best / --link-best put the best shot "
                    "of every group and every unique shot into a folder (keeping the relative paths). " + SHOTS_HELP
                    + " The sheet lists a shot's companions under its name (thumbnails are JPEGs made by Loupe, so "
                    "HEIC, AVIF and RAW show too), and --copy-best / --link-best take them along."),
        epilog=wrap("PREFIX.json: {folder, features_used, params, groups: [{group_id, size, best, reason, linked_by, "
               "members: [{path, companions, format, decoded_from, rank, is_best, quality_score, ranked_by, "
               "rejected_reason}]}], singletons, failed: [{path, companions, error}], companions: {path: [the "
               "shot's other files]}, keep: [the best shots and the unique shots], keep_files: [their files, "
               "companions included]}.") + "\n\n" + EXIT_CODES_HELP + """
examples:
  loupe cluster ~/burst --out contact
  loupe cluster ~/trip --copy-best ~/trip-keepers --fast
  loupe cluster s3://photos/2024/ --engine ray --address auto --out contact
""")
    cl.add_argument("folder", type=source_arg, metavar="DIR",
                    help="Folder of images (searched recursively), or s3://bucket/prefix (--engine ray).")
    cl.add_argument("--out", type=Path, default=Path("loupe-clusters"), metavar="PREFIX",
                    help="Output prefix: writes PREFIX.html and PREFIX.json (default: %(default)s).")
    ex = cl.add_mutually_exclusive_group()
    ex.add_argument("--copy-best", type=Path, metavar="DIR",
                    help="Copy the best shot of each group and every unique shot, with their companions (the RAW "
                         "of a JPEG), into DIR (skipped when scanning).")
    ex.add_argument("--link-best", type=Path, metavar="DIR", help="Like --copy-best, with symbolic links instead of copies.")
    p = cl.add_argument_group("grouping (the fields of PhotoSetRequest)")
    p.add_argument("--eps", type=float, default=0.08,
                   help="Cosine-distance radius on CLIP embeddings for 'same scene' (when CLIP is ready; "
                        "default: %(default)s).")
    p.add_argument("--hash-max-distance", type=int, default=10, metavar="BITS",
                   help="Max Hamming distance (of 64 bits) between perceptual hashes of near-exact duplicates "
                        "(default: %(default)s).")
    p.add_argument("--embeddings", action=argparse.BooleanOptionalAction, default=True,
                   help="Use CLIP embeddings when the model is ready (default: on).")
    p.add_argument("--quality-models", action=argparse.BooleanOptionalAction, default=True,
                   help="Rank with the full quality score (BRISQUE/NIMA when available; the default); --no-quality-models ranks "
                        "by blur/exposure only, faster.")
    p.add_argument("--fast", dest="quality_models", action="store_false", help="Same as --no-quality-models.")
    p.add_argument("--thumb-size", type=int, default=256, metavar="PX", help="Longest side of the embedded thumbnails (default: %(default)s).")
    add_connection_args(cl)
    add_engine_args(cl, "cluster")

    tr = sub.add_parser(
        "train", formatter_class=Formatter, help="train per-collection classifiers on embeddings → CLASSIFIER_DIR",
        description=wrap("Train a logistic-regression classifier per collection from labelled embeddings (a file) or from "
                    "folders ROOT/<collection_id>/{positive,negative}/ of images embedded in this process, save it as a new "
                    "version, compare every stored version on the held-out split (by macro precision), keep the best "
                    "ten and write best_models.json. The same code as scripts/train_classifiers.py."),
        epilog="""examples:
  loupe train --embeddings labelled.jsonl --embedding-model clip
  loupe train --images collections/ --embedding-model mobilenet
""")
    add_train_arguments(tr)

    from app.cli.caption import add_caption_parser  # `loupe caption`: its options live with the command

    add_caption_parser(sub)
    return ap
