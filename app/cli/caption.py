"""`loupe caption DIR` (and scripts/caption_folder.py): write a caption `name.txt` beside every image.

The caption of `photos/cat.jpg` goes to `photos/cat.txt` (the layout image-text training sets
use). An image whose .txt exists is skipped unless --force. Two engines, one result:

* in-process (the default): the registry's "caption" model (app.models.caption, BLIP, greedy
  decoding) on images decoded by app.imaging exactly as the server decodes them, a batch of
  --batch-size images per generate call;
* --server URL: one POST /v1/tasks per image (--concurrency at a time) with the task
  `{"type": "describe", "params": {"target": "whole_image", "max_length": N}}`, whose result's
  `data` is the caption.

A file that cannot be read or decoded, or a caption the server could not make, is a failure:
listed at the end, never a stop; the other images are still captioned. Exit codes are score's
(app/cli/errors.py): 0 all done, 1 some failed, 2 usage, 3 server unreachable or key refused,
4 refused (the caption model is not available in-process, or the server has no describe task),
130 interrupted (finished captions are kept; run again to go on).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.cli.errors import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    RefusedError,
    UsageError,
    run_to_exit_code,
)
from app.cli.manifest import IMAGE_EXTENSIONS, b64_of, iter_shots

DEFAULT_MAX_LENGTH = 50  # app.models.caption.DEFAULT_MAX_LENGTH (not imported: it would import the model module)
OPERATION_ID = "caption"
#: the describe task's bounds for max_length (app.schemas.tasks.DescribeParams), kept for both engines
MAX_LENGTH_RANGE = (5, 200)


def describe_task(max_length: int) -> dict[str, Any]:
    """The /v1/tasks task that captions the whole image."""
    return {"operation_id": OPERATION_ID, "type": "describe",
            "params": {"target": "whole_image", "max_length": max_length}}


def caption_path(image: Path) -> Path:
    """Where the caption of `image` is written: the same name with .txt, beside it."""
    return image.with_suffix(".txt")


def write_caption(image: Path, text: str) -> Path:
    """Write `text` + newline to the image's .txt (through a temporary file: never half written)."""
    dest = caption_path(image)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    tmp.write_text(text.strip() + "\n", encoding="utf-8")
    os.replace(tmp, dest)
    return dest


@dataclass
class Plan:
    """What a run will do: the images to caption, those skipped, and those that cannot be (a name clash)."""

    todo: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)


def plan_folder(folder: Path, force: bool) -> Plan:
    """The shots of `folder` (recursive, as `score` finds them: a RAW with a JPEG/HEIC of the same name is one shot,
    captioned from the JPEG/HEIC; a RAW alone from the RAW) split into to-do / skipped / clashing."""
    if not folder.is_dir():
        raise UsageError(f"{folder}: no such folder")
    images = [path for path, _companions in iter_shots(folder)]
    if not images:
        raise UsageError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found in {folder}")
    plan, owner = Plan(), dict[Path, Path]()
    for img in images:
        txt = caption_path(img)
        if txt in owner:  # cat.jpg and cat.png: one cat.txt; the first (sorted) image keeps it
            plan.failed.append((img, f"{txt.name} is the caption file of {owner[txt].name} already"))
            continue
        owner[txt] = img
        if txt.exists() and not force:
            plan.skipped.append(img)
        else:
            plan.todo.append(img)
    return plan


# --- engines: each calls done(image, caption or None, error or None) once per image ------------------------
Done = Callable[[Path, str | None, str | None], None]


async def caption_in_process(images: list[Path], max_length: int, batch_size: int, done: Done,
                             verbose: bool = False) -> None:
    """Caption through the registry's "caption" model; ModelUnavailable becomes RefusedError."""
    import logging

    from app.core.config import Settings
    from app.core.errors import ApiError, ModelUnavailable
    from app.imaging.decode import DecodedImage, decode_image
    from app.imaging.sources import check_bytes
    from app.models.registry import ModelRegistry

    if not verbose:
        from transformers.utils import logging as hf_logging

        logging.getLogger("app").setLevel(logging.ERROR)
        logging.getLogger("loupe").setLevel(logging.ERROR)
        hf_logging.disable_progress_bar()  # its "Loading weights" bar would cut through ours
    settings = Settings()
    pool = ThreadPoolExecutor(max_workers=max(1, settings.threads), thread_name_prefix="loupe-caption")
    registry = ModelRegistry(settings, pool)
    loop = asyncio.get_running_loop()
    def read(path: Path) -> DecodedImage:
        if path.stat().st_size > settings.max_read_bytes:
            raise ValueError(f"larger than MAX_IMAGE_MB={settings.max_image_mb:g} / MAX_RAW_MB={settings.max_raw_mb:g}")
        data = path.read_bytes()
        check_bytes(data, settings)
        return decode_image(data, max_pixels=settings.max_image_pixels)

    def run(model: Any, decoded: list[DecodedImage]) -> list[str]:
        return model.caption([model.prepare(d) for d in decoded], max_length)

    try:
        for i in range(0, len(images), max(1, batch_size)):
            batch = images[i:i + batch_size]
            decoded: list[tuple[Path, DecodedImage]] = []
            reads = await asyncio.gather(*(loop.run_in_executor(pool, read, p) for p in batch), return_exceptions=True)
            for path, got in zip(batch, reads):
                if isinstance(got, DecodedImage):
                    decoded.append((path, got))
                elif isinstance(got, ApiError):
                    done(path, None, f"{got.error_type}: {got.message}")
                elif isinstance(got, OSError | ValueError):
                    done(path, None, f"{type(got).__name__}: {got}")
                else:
                    raise got
            if not decoded:
                continue
            try:
                captions = await registry.call("caption", run, [d for _, d in decoded])
            except ModelUnavailable as exc:
                raise RefusedError(f"the caption model is not available: {exc.message}") from exc
            except Exception as exc:  # noqa: BLE001 - this batch fails, the run goes on
                for path, _ in decoded:
                    done(path, None, f"{type(exc).__name__}: {exc}")
                continue
            for (path, _), text in zip(decoded, captions):
                done(path, text, None)
    finally:
        registry.shutdown()
        pool.shutdown(wait=False, cancel_futures=True)


async def caption_on_server(images: list[Path], max_length: int, args: argparse.Namespace, done: Done) -> None:
    """Caption through POST /v1/tasks of a running Loupe (a describe task per image)."""
    import httpx

    from app.cli.client import Api

    async with Api(args.server, args.api_key, args.timeout) as api:
        catalog = await api.catalog()  # also: the server answers, the key is accepted
        kinds = {t.get("type") for t in catalog.get("tasks") or [] if isinstance(t, dict)}
        if kinds and "describe" not in kinds:
            raise RefusedError(f"{api.where} has no describe task (an older Loupe?)")
        sem = asyncio.Semaphore(max(1, args.concurrency))
        tasks = [describe_task(max_length)]

        async def one(path: Path, retries: int = 3) -> None:
            async with sem:
                try:
                    data = await asyncio.to_thread(b64_of, path)
                except OSError as exc:
                    done(path, None, f"unreadable_file: {exc.strerror or exc}")
                    return
                payload = {"image": {"base64": data, "image_id": path.name[:256]}, "tasks": tasks, "return_crops": False}
                for attempt in range(retries + 1):
                    try:
                        status, body = await api.call("POST", "/v1/tasks", json=payload)
                    except httpx.TimeoutException:
                        done(path, None, f"timeout: no answer from {api.where} within {api.timeout:g} s")
                        return
                    if status == 429 and attempt < retries:
                        await asyncio.sleep(min(60.0, 2.0 ** attempt * 2))
                        continue
                    break
            done(path, *caption_of(status, body, api.where))

        await gather_all([one(p) for p in images])


def caption_of(status: int, body: Any, where: str) -> tuple[str | None, str | None]:
    """(caption, None) or (None, error) from a /v1/tasks answer; a refused task list raises RefusedError."""
    from app.cli.client import describe_error, located_in

    if status == 200 and isinstance(body, dict):
        res = (body.get("results") or {}).get(OPERATION_ID)
        if isinstance(res, dict) and res.get("status") == "success" and isinstance(res.get("data"), str):
            return res["data"].strip(), None
        if isinstance(res, dict):
            return None, f"{res.get('status')}: {res.get('error_message') or 'no caption'}"
        return None, "the answer holds no caption"
    err = describe_error(body, status)
    if status == 404:
        raise RefusedError(f"{where} has no POST /v1/tasks (an older Loupe?)")
    if status == 422 and not located_in(err, "image"):
        raise RefusedError(f"{where} refused the describe task: {err['message']}")
    return None, f"{err['type']}: {err['message']}"


async def gather_all(coros: list[Awaitable[None]]) -> None:
    """Run them all; on an error or Ctrl-C cancel the rest and re-raise."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


# --- the command --------------------------------------------------------------------------------------------
async def run_caption(args: argparse.Namespace) -> int:
    folder: Path = args.folder
    plan = plan_folder(folder, args.force)
    failed = list(plan.failed)
    written = 0
    if not plan.todo:
        print(f"nothing to do: every image of {folder} has its caption .txt (--force rewrites them)")
        return EXIT_FAILED if failed else EXIT_OK
    from tqdm import tqdm

    bar = tqdm(total=len(plan.todo), unit="img", desc="captioning", file=sys.stderr, dynamic_ncols=True,
               disable=not args.progress, smoothing=0.1)

    def done(path: Path, text: str | None, error: str | None) -> None:
        nonlocal written
        if text is not None:
            try:
                write_caption(path, text)
                written += 1
            except OSError as exc:
                failed.append((path, f"cannot write {caption_path(path).name}: {exc.strerror or exc}"))
        else:
            failed.append((path, error or "no caption"))
        bar.update(1)
        bar.set_postfix(failed=len(failed), refresh=False)

    t0 = time.perf_counter()
    try:
        if args.server:
            await caption_on_server(plan.todo, args.max_length, args, done)
        else:
            await caption_in_process(plan.todo, args.max_length, args.batch_size, done, args.verbose)
    finally:
        bar.close()
    dt = max(time.perf_counter() - t0, 1e-9)
    print(f"captioned {written} image(s) in {dt:.1f} s ({written / dt:.1f}/s), {len(failed)} failed"
          + (f", {len(plan.skipped)} skipped (caption exists; --force rewrites)" if plan.skipped else ""))
    if failed:
        print("failed:", file=sys.stderr)
        for path, error in sorted(failed):
            print(f"  {path.relative_to(folder).as_posix()}: {error}", file=sys.stderr)
    return EXIT_FAILED if failed else EXIT_OK


def add_caption_arguments(p: argparse.ArgumentParser) -> None:
    from app.cli.parser import add_connection_args

    p.add_argument("folder", type=Path, metavar="DIR", help="Folder of images (searched recursively).")
    p.add_argument("--max-length", type=int, default=DEFAULT_MAX_LENGTH, metavar="N",
                   help=f"Longest caption, in tokens, the decoder's start token included ({MAX_LENGTH_RANGE[0]}-{MAX_LENGTH_RANGE[1]}, as the "
                        "describe task takes; default: %(default)s).")
    p.add_argument("--force", action="store_true", help="Caption again the images whose .txt exists (overwrites it).")
    p.add_argument("--batch-size", type=int, default=8, metavar="N",
                   help="In-process: images per generate call (default: %(default)s).")
    p.add_argument("--concurrency", type=int, default=2, metavar="N",
                   help="With --server: requests in flight at once (default: %(default)s).")
    add_connection_args(p)


def caption_description() -> str:
    from app.cli.parser import wrap

    return wrap("Write a caption beside every image of a folder (recursively): photos/cat.jpg → photos/cat.txt, one line "
                "of text. Images whose .txt exists are skipped unless --force. In-process the BLIP captioning model "
                "(MODEL_DIR/caption or CAPTION_PATH; greedy decoding) runs here; with --server each image is one "
                "POST /v1/tasks with a describe task. Failures are listed at the end; the other images are still "
                "captioned.")


def add_caption_parser(sub: Any) -> argparse.ArgumentParser:
    """Register `loupe caption` on the subparsers of `loupe`."""
    from app.cli.errors import EXIT_CODES_HELP
    from app.cli.parser import Formatter

    p = sub.add_parser("caption", formatter_class=Formatter, help="write a caption .txt beside every image of a folder",
                       description=caption_description(), epilog=EXIT_CODES_HELP + """
examples:
  loupe caption ~/photos
  loupe caption ~/photos --force --max-length 30
  LOUPE_API_KEY=… loupe caption ~/photos --server http://loupe:8000
""")
    add_caption_arguments(p)
    return p


def build_caption_parser(prog: str = "caption_folder.py") -> argparse.ArgumentParser:
    """A stand-alone parser with the options of `loupe caption` (scripts/caption_folder.py)."""
    from app.cli.errors import EXIT_CODES_HELP
    from app.cli.parser import Formatter

    p = argparse.ArgumentParser(prog=prog, formatter_class=Formatter, description=caption_description(),
                                epilog=EXIT_CODES_HELP)
    add_caption_arguments(p)
    return p


def execute(args: argparse.Namespace, name: str = "loupe caption") -> int:
    """Check the options, run, and turn failures into exit codes (as `loupe score` does)."""
    args.server = args.server or os.environ.get("LOUPE_SERVER") or None
    args.api_key = args.api_key or os.environ.get("LOUPE_API_KEY") or None
    low, high = MAX_LENGTH_RANGE
    if not low <= args.max_length <= high:
        print(f"{name}: error: --max-length must be between {low} and {high}", file=sys.stderr)
        return EXIT_USAGE
    if args.batch_size < 1 or args.concurrency < 1:
        print(f"{name}: error: --batch-size and --concurrency must be at least 1", file=sys.stderr)
        return EXIT_USAGE
    return run_to_exit_code(name, lambda: asyncio.run(run_caption(args)),
                            "; the captions written so far are kept (run again to go on)")


def main(argv: list[str] | None = None, prog: str = "caption_folder.py") -> int:
    parser = build_caption_parser(prog)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    return execute(args, prog)
