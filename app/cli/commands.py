"""The two commands, `score` and `cluster`, and `main`, which turns their failures into exit codes.

Each command reads its inputs (manifest.py; tasks.py for `score --tasks`), talks to
Loupe through one `Api` (client.py) and hands the answers to its outputs (writer.py,
sheet.py, tasks.py's crops); what is
left here is the flow of a run: batching, concurrency, retries, resuming, and the
one-line summary on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from app.cli.client import Api, describe_error, located_in, warn_unavailable, warn_unavailable_tasks
from app.cli.errors import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    RefusedError,
    ServerError,
    UsageError,
    run_to_exit_code,
)
from app.cli.manifest import IMAGE_EXTENSIONS, Item, b64_of, collect
from app.cli.parser import ANALYSES, build_parser
from app.cli.sheet import THUMB_MAX_PIXELS, export_best, groups_json, render_contact_sheet, thumbnail_data_uri
from app.cli.tasks import TaskRun, check_csv_header, read_task_run, save_crops, task_row
from app.cli.writer import OutputLock, RowSink, Writer, load_done


# --- score -----------------------------------------------------------------------------------------------------
async def read_batch(batch: list[Item], writer: RowSink) -> tuple[list[dict[str, Any]], list[Item]]:
    """The images of a batch as API inputs (bytes in hand, else the URL, else the file); a file that cannot be
    read is an error row at once."""
    images: list[dict[str, Any]] = []
    sendable: list[Item] = []
    for it in batch:
        if it.url and it.data is None:
            images.append({"url": it.url, "image_id": it.image_id[:256]})
            sendable.append(it)
            continue
        try:
            if it.data is not None:  # read already (the Ray engine's read tasks; an object-store key)
                data = base64.b64encode(it.data).decode("ascii")
            else:
                assert it.path is not None  # an Item is a URL, a file or bytes in hand
                data = await asyncio.to_thread(b64_of, it.path)
        except OSError as exc:
            writer.write(it, None, {"type": "unreadable_file", "message": f"{type(exc).__name__}: {exc.strerror or exc}"})
            continue
        images.append({"base64": data, "image_id": it.image_id[:256]})
        sendable.append(it)
    return images, sendable


async def post_batch(api: Api, path: str, payload: dict[str, Any], sendable: list[Item], writer: RowSink,
                     retries: int) -> tuple[int, Any] | None:
    """POST with retries on 429; None when it timed out (every image then has its error row)."""
    for attempt in range(retries + 1):
        try:
            status, body = await api.call("POST", path, json=payload)
        except httpx.TimeoutException as exc:
            err = {"type": "timeout", "message": f"no answer from {api.where} within {api.timeout:g} s ({type(exc).__name__})"}
            for it in sendable:
                writer.write(it, None, err)
            return None
        if status == 429 and attempt < retries:
            await asyncio.sleep(min(60.0, 2.0 ** attempt * 2))
            continue
        break
    return status, body


async def score_batch(api: Api, batch: list[Item], flags: dict[str, bool], writer: RowSink, retries: int = 3) -> None:
    """Send one /v1/analyze/batch request; every image ends as a row (result or error)."""
    images, sendable = await read_batch(batch, writer)
    if not sendable:
        return
    answer = await post_batch(api, "/v1/analyze/batch", {"images": images, **flags}, sendable, writer, retries)
    if answer is None:
        return
    status, body = answer
    if status == 200 and isinstance(body, dict) and len(body.get("results", [])) == len(sendable):
        for it, res in zip(sendable, body["results"]):
            writer.write(it, res, res.get("error"))
        return
    err = describe_error(body, status)
    if status == 413 and len(sendable) > 1 and err["type"] == "payload_too_large":
        half = len(sendable) // 2  # the server takes fewer per request: split and go on
        await score_batch(api, sendable[:half], flags, writer, retries)
        await score_batch(api, sendable[half:], flags, writer, retries)
        return
    for it in sendable:
        writer.write(it, None, err)


async def score_tasks_batch(api: Api, batch: list[Item], run: TaskRun, writer: RowSink, retries: int = 3) -> None:
    """Send one /v1/tasks/batch request; every image ends as a row (its task results, or its error). A task
    list the server refuses (422) or a server without the endpoint (404) stops the run: RefusedError."""
    images, sendable = await read_batch(batch, writer)
    if not sendable:
        return
    payload = {"images": images, "tasks": run.tasks, "return_crops": run.crops_dir is not None}
    answer = await post_batch(api, "/v1/tasks/batch", payload, sendable, writer, retries)
    if answer is None:
        return
    status, body = answer
    if status == 200 and isinstance(body, dict) and len(body.get("results", [])) == len(sendable):
        for it, res in zip(sendable, body["results"]):
            if run.crops_dir is not None and isinstance(res, dict):
                await asyncio.to_thread(save_crops, run.crops_dir, it.key, res)
            writer.write(it, res, res.get("error") if isinstance(res, dict) else None)
        return
    err = describe_error(body, status)
    if status == 404:
        raise RefusedError(f"{api.where} has no POST /v1/tasks/batch (an older Loupe?)")
    if status == 422 and not located_in(err, "images"):
        raise RefusedError(f"{api.where} refused the task list of {run.source}: {err['message']}")
    if status == 413 and len(sendable) > 1 and err["type"] == "payload_too_large":
        half = len(sendable) // 2  # the server takes fewer per request: split and go on
        await score_tasks_batch(api, sendable[:half], run, writer, retries)
        await score_tasks_batch(api, sendable[half:], run, writer, retries)
        return
    for it in sendable:
        writer.write(it, None, err)


def task_run_of(args: argparse.Namespace) -> TaskRun | None:
    """The checked --tasks file (None without --tasks)."""
    tasks_file: Path | None = getattr(args, "tasks", None)
    return read_task_run(tasks_file, getattr(args, "crops", None)) if tasks_file is not None else None


async def run_score(args: argparse.Namespace) -> int:
    out: Path = args.out
    run = task_run_of(args)  # a bad tasks file is a usage error before anything else is read
    crops_dir = run.crops_dir if run is not None else None
    items = collect(args.source, exclude=[crops_dir] if crops_dir is not None else [])
    if not items:
        raise UsageError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found in {args.source}")
    with OutputLock(out):
        return await score_items(args, items, run)


async def score_items(args: argparse.Namespace, items: list[Item], run: TaskRun | None = None) -> int:
    """Score `items` into args.out: with the analyses of the flags, or with the task list of `run`
    (read from args.tasks when not given)."""
    out: Path = args.out
    jsonl_path = out.with_name(out.name + ".jsonl")
    fresh = not args.resume
    if run is None:
        run = task_run_of(args)
    if run is not None and not fresh:
        check_csv_header(out.with_name(out.name + ".csv"), run.csv_fields)
    done, failed_before = (set(), set()) if fresh else load_done(jsonl_path)
    skip = done - failed_before if args.retry_failed else done
    todo = [it for it in items if it.key not in skip]
    unique: dict[str, Item] = {}
    for it in todo:  # a manifest may list a file twice: the first entry counts
        unique.setdefault(it.key, it)
    todo = list(unique.values())
    skipped = len(items) - len(todo)
    if not todo:
        print(f"nothing to do: all {len(items)} images are already in {jsonl_path} (use --no-resume to start over)")
        return EXIT_OK
    flags = {api_flag: getattr(args, opt) for api_flag, opt, _, _ in ANALYSES}
    batch_size = max(1, args.batch_size)
    t0 = time.perf_counter()
    async with Api(args.server, args.api_key, args.timeout, args.verbose) as api:
        if api.settings is not None:
            batch_size = min(batch_size, api.settings.max_batch_size)
        if run is None:
            warn_unavailable(await api.operations(), flags, api.where)
            writer = Writer(out, fresh)
        else:
            warn_unavailable_tasks(await api.catalog(), run, api.where)
            writer = Writer(out, fresh, run.csv_fields, task_row(run.types), lazy=True)
        try:
            from tqdm import tqdm

            bar = tqdm(total=len(todo), unit="img", desc="scoring", file=sys.stderr, dynamic_ncols=True,
                       disable=not args.progress, smoothing=0.1)
            sem = asyncio.Semaphore(max(1, args.concurrency))

            async def one(batch: list[Item]) -> None:
                async with sem:
                    # every item of a batch ends as exactly one row; counting the writer's rows
                    # here would also count the rows other batches wrote meanwhile
                    if run is None:
                        await score_batch(api, batch, flags, writer)
                    else:
                        await score_tasks_batch(api, batch, run, writer)
                    bar.update(len(batch))
                    bar.set_postfix(failed=writer.failed, refresh=False)

            batches = [todo[i:i + batch_size] for i in range(0, len(todo), batch_size)]
            tasks = [asyncio.create_task(one(b)) for b in batches]
            try:
                await asyncio.gather(*tasks)
            except BaseException:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                raise
            finally:
                bar.close()
        finally:
            writer.close()
    dt = time.perf_counter() - t0
    print(f"scored {writer.rows} image(s) in {dt:.1f} s ({writer.rows / dt:.1f}/s), {writer.failed} failed"
          + (f", {skipped} already done" if skipped else "") + f" → {writer.csv_path}, {writer.jsonl_path}"
          + (f", crops in {run.crops_dir}" if run is not None and run.crops_dir is not None else ""))
    return EXIT_FAILED if writer.failed else EXIT_OK


# --- cluster ---------------------------------------------------------------------------------------------------
def cluster_ids(items: list[Item]) -> list[str]:
    """The image ids of a photo set: the keys, unique and at most 256 characters."""
    return [it.key if len(it.key) <= 256 else f"#{n}:{it.key[-200:]}" for n, it in enumerate(items)]


def shots_text(items: list[Item]) -> str:
    n_files = sum(1 + len(it.companions) for it in items)
    return f"{len(items)} shot(s)" + (f" ({n_files} files)" if n_files != len(items) else "")


async def run_cluster(args: argparse.Namespace) -> int:
    root: Path = args.folder
    if not root.is_dir():
        raise UsageError(f"{root}: no such folder")
    export_dir = args.copy_best or args.link_best
    items = collect(root, exclude=[export_dir] if export_dir else [])
    if not items:
        raise UsageError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found in {root}")
    ids = cluster_ids(items)
    t0 = time.perf_counter()
    progress = args.progress
    if progress:
        print(f"reading {shots_text(items)}…", file=sys.stderr)
    images = []
    unreadable: list[dict[str, Any]] = []
    for iid, it in zip(ids, items):
        assert it.path is not None  # a folder's items are files
        try:
            images.append({"base64": await asyncio.to_thread(b64_of, it.path), "image_id": iid})
        except OSError as exc:
            unreadable.append({"image_id": iid, "error": {"type": "unreadable_file", "message": str(exc)}})
    payload = {"images": images, "eps": args.eps, "hash_max_distance": args.hash_max_distance,
               "use_embeddings": args.embeddings, "rank_by_quality_models": args.quality_models}
    overrides = {"max_cluster_images": max(len(images), 1)} if not args.server else {}
    async with Api(args.server, args.api_key, args.timeout, args.verbose, overrides) as api:
        if progress:
            print(f"grouping {len(images)} images on {api.where}…", file=sys.stderr)
        try:
            status, body = await api.call("POST", "/v1/cluster/images", json=payload)
        except httpx.TimeoutException as exc:
            raise ServerError(f"no answer from {api.where} within {args.timeout:g} s ({type(exc).__name__})") from exc
    if status == 404:
        raise RefusedError(f"{api.where} has no POST /v1/cluster/images (an older Loupe?)")
    if status != 200 or not isinstance(body, dict):
        err = describe_error(body, status)
        raise RefusedError(f"{api.where} refused the set: {err['message']}")
    body.setdefault("failed", [])
    body["failed"] = list(body["failed"]) + unreadable
    elapsed = time.perf_counter() - t0
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    max_pixels = api.settings.max_image_pixels if api.settings is not None else THUMB_MAX_PIXELS
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 2)) as pool:
        thumbs = dict(zip(ids, tqdm(pool.map(lambda it: thumbnail_data_uri(it.path, args.thumb_size, max_pixels), items),
                                    total=len(items), desc="thumbnails", unit="img", file=sys.stderr,
                                    disable=not progress)))
    return write_cluster_outputs(args, root, body, items, ids, thumbs, elapsed)


def write_cluster_outputs(args: argparse.Namespace, root: Path | str, body: dict[str, Any], items: list[Item],
                          ids: list[str], thumbs: dict[str, str | None], elapsed: float) -> int:
    """PREFIX.html and PREFIX.json from the /v1/cluster/images answer `body` (or the Ray engine's merge of the
    same), --copy-best / --link-best, and the summary line (both engines)."""
    key_of = dict(zip(ids, (it.key for it in items)))
    companions_of = {it.key: it.companions for it in items if it.companions}
    companion_keys = {it.key: it.companion_keys for it in items if it.companions}
    shots_txt = shots_text(items)
    out: Path = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    html_path = out.with_name(out.name + ".html")
    json_path = out.with_name(out.name + ".json")
    html_path.write_text(render_contact_sheet(root, body, key_of, thumbs, elapsed, companion_keys), encoding="utf-8")
    summary = groups_json(root, body, key_of, companion_keys)
    json_path.write_text(json.dumps(summary, indent=2, ensure_ascii=False), encoding="utf-8")
    msg = (f"{shots_txt} → {len(summary['groups'])} group(s), {len(summary['singletons'])} unique, "
           f"{len(summary['failed'])} failed; wrote {html_path} and {json_path}")
    export_dir = args.copy_best or args.link_best
    if export_dir:
        path_of = {it.key: it.path for it in items if it.path is not None}
        shots, files = export_best(summary["keep"], path_of, export_dir, link=bool(args.link_best),
                                   companions_of_key=companions_of)
        msg += f"; {'linked' if args.link_best else 'copied'} {shots} best shot(s) ({files} files) to {export_dir}"
    print(msg)
    return EXIT_FAILED if summary["failed"] else EXIT_OK


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: 0 for --help, 2 for a usage error
        return int(exc.code or 0)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    if args.command == "train":  # runs in-process only: no server, no API key
        from app.collections.train import run as run_train

        return run_train(args)
    args.server = args.server or os.environ.get("LOUPE_SERVER") or None
    args.api_key = args.api_key or os.environ.get("LOUPE_API_KEY") or None
    if args.command == "score":
        if args.tasks is not None:
            changed = ["--all"] if args.all else []
            changed += [f"--{'no-' if default else ''}{opt}" for _, opt, default, _ in ANALYSES if getattr(args, opt) != default]
            if changed:
                print(f"loupe score: error: --tasks replaces the analysis options (the tasks file says what runs; "
                      f"add a task such as {{\"operation_id\": \"sharp\", \"type\": \"blur\"}} instead): drop "
                      f"{' '.join(changed)}", file=sys.stderr)
                return EXIT_USAGE
        elif args.crops is not None:
            print("loupe score: error: --crops needs --tasks FILE (crops are the regions of tasks)", file=sys.stderr)
            return EXIT_USAGE
        else:
            if args.all:
                for _, opt, _, _ in ANALYSES:
                    setattr(args, opt, True)
            if not any(getattr(args, opt) for _, opt, _, _ in ANALYSES):
                print("loupe score: error: every analysis is turned off", file=sys.stderr)
                return EXIT_USAGE
        if args.batch_size < 1 or args.concurrency < 1:
            print("loupe score: error: --batch-size and --concurrency must be at least 1", file=sys.stderr)
            return EXIT_USAGE
    if args.command == "cluster" and not 32 <= args.thumb_size <= 1024:
        print("loupe cluster: error: --thumb-size must be between 32 and 1024", file=sys.stderr)
        return EXIT_USAGE
    if args.command == "caption":  # app/cli/caption.py: its own checks and exit codes (as score's)
        from app.cli.caption import execute as run_caption_command

        return run_caption_command(args)
    if args.command in ("score", "cluster"):
        source = args.source if args.command == "score" else args.folder
        if args.engine == "ray":
            if args.server:
                print(f"loupe {args.command}: error: --engine ray runs Loupe on the Ray cluster; drop --server",
                      file=sys.stderr)
                return EXIT_USAGE
            if args.workers is not None and args.workers < 1:
                print(f"loupe {args.command}: error: --workers must be at least 1", file=sys.stderr)
                return EXIT_USAGE
            from app.cli.ray_cluster import run_cluster_ray
            from app.cli.ray_engine import run_score_ray

            ray_runner = run_score_ray if args.command == "score" else run_cluster_ray
            return run_to_exit_code(f"loupe {args.command}", lambda: ray_runner(args),
                                    "; run the same command again to resume" if args.command == "score" else "")
        if isinstance(source, str):  # parser.source_arg: an s3:// prefix
            print(f"loupe {args.command}: error: an object-store source ({source}) needs --engine ray", file=sys.stderr)
            return EXIT_USAGE
    runner = run_score if args.command == "score" else run_cluster
    return run_to_exit_code(f"loupe {args.command}", lambda: asyncio.run(runner(args)),
                            "; run the same command again to resume" if args.command == "score" else "")
