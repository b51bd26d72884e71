"""`loupe` / `python -m app.cli`: score a folder of photos, or group a burst and keep the best shots.

Both commands go through the HTTP API: in-process by default (the real app,
its lifespan run, behind an ASGI transport: no server needed, the same code path
as the server), or against a running Loupe with --server URL --api-key KEY.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import csv
import html
import io
import json
import os
import shutil
import sys
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import httpx  # noqa: E402

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")
MANIFEST_EXTENSIONS = (".csv", ".jsonl", ".ndjson", ".txt")
SOURCE_COLUMNS = ("path", "url", "file", "filename", "image", "source", "src", "uri")
ID_COLUMNS = ("image_id", "id")

EXIT_OK = 0
EXIT_FAILED = 1  # some images failed (error rows / failed list)
EXIT_USAGE = 2  # bad arguments, no such folder or manifest, no images found
EXIT_SERVER = 3  # server unreachable, API key missing or rejected
EXIT_REFUSED = 4  # the API refused the whole request (cluster: too many images, invalid parameters)
EXIT_INTERRUPTED = 130

EXIT_CODES_HELP = """exit codes:
  0    every image was processed without error (or there was nothing left to do)
  1    some images failed: each has a row with its error (score) or is listed under "failed" (cluster)
  2    usage error: bad option, no such folder or manifest, no images found, or another run is writing
       the same outputs
  3    the server is unreachable, or the API key is missing or rejected (nothing more was processed)
  4    the API refused the whole request (cluster: e.g. more images than MAX_CLUSTER_IMAGES)
  130  interrupted (Ctrl-C); `score` resumes where it stopped when run again
"""

CSV_FIELDS = ("path", "image_id", "width", "height", "laplacian_variance", "is_blurry", "mean_brightness", "verdict",
              "quality_score", "quality_band", "quality_is_ok", "brisque", "nima", "aesthetic", "aesthetic_laion",
              "faces", "emotions", "error")

ANALYSES = (  # flag name in the API, CLI option, default, help
    ("run_blur", "blur", True, "sharpness: variance of the Laplacian, is_blurry against BLUR_THRESHOLD"),
    ("run_exposure", "exposure", True, "mean brightness, clipping, verdict against BRIGHT_MIN/BRIGHT_MAX"),
    ("run_quality", "quality", True, "the 0-1 quality score and band (BRISQUE / NIMA technical when available)"),
    ("run_aesthetic", "aesthetic", False, "NIMA aesthetic (1-10); LAION aesthetic too when --embedding is on"),
    ("run_faces", "faces", False, "face boxes (YuNet)"),
    ("run_emotion", "emotion", False, "faces with their dominant emotion (DeepFace)"),
    ("run_embedding", "embedding", False, "CLIP embedding (written to the JSONL only)"),
)


class UsageError(Exception):
    """Bad input: exit code 2."""


class ServerError(Exception):
    """Server unreachable or authentication failed: exit code 3."""


class RefusedError(Exception):
    """The API refused the whole request: exit code 4."""


# --- inputs ----------------------------------------------------------------------------------------------
def iter_images(root: Path, exclude: Iterable[Path] = ()) -> Iterator[Path]:
    """Image files under `root` (recursively, sorted, by extension, case-insensitive), skipping hidden
    files and folders and anything under `exclude`."""
    excluded = [p.resolve() for p in exclude]
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")
                             and not any((here / d).resolve() == ex for ex in excluded))
        for name in sorted(filenames):
            if not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS):
                yield here / name


@dataclass
class Item:
    key: str  # what identifies the image in the outputs (and for resuming): path relative to the folder, or the manifest entry
    image_id: str
    path: Path | None = None
    url: str | None = None


def is_url(text: str) -> bool:
    return text.lower().startswith(("http://", "https://"))


def _item(entry: str, image_id: str | None, base: Path) -> Item:
    entry = entry.strip()
    if is_url(entry):
        return Item(key=entry, image_id=image_id or entry, url=entry)
    path = Path(entry).expanduser()
    return Item(key=entry, image_id=image_id or entry, path=path if path.is_absolute() else base / path)


def read_manifest(path: Path) -> list[Item]:
    """CSV (a column named path/url/file/image/source, or the first column when there is no such header;
    optional image_id), JSONL (a string per line, or an object with path/url… and image_id) or TXT (one per
    line). Relative paths are relative to the manifest's folder."""
    base = path.parent
    items: list[Item] = []
    suffix = path.suffix.lower()
    text = path.read_text(encoding="utf-8-sig")
    if suffix == ".csv":
        rows = list(csv.reader(io.StringIO(text)))
        rows = [r for r in rows if any(c.strip() for c in r)]
        if not rows:
            return []
        header = [c.strip().lower() for c in rows[0]]
        src_col = next((header.index(c) for c in SOURCE_COLUMNS if c in header), None)
        id_col = next((header.index(c) for c in ID_COLUMNS if c in header), None)
        if src_col is None:  # no header: the first column is the source
            src_col, data = 0, rows
        else:
            data = rows[1:]
        for r in data:
            if len(r) > src_col and r[src_col].strip():
                iid = r[id_col].strip() if id_col is not None and len(r) > id_col and r[id_col].strip() else None
                items.append(_item(r[src_col], iid, base))
    elif suffix in (".jsonl", ".ndjson"):
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UsageError(f"{path}:{n}: not JSON: {exc}") from exc
            if isinstance(obj, str):
                items.append(_item(obj, None, base))
            elif isinstance(obj, dict):
                src = next((obj[k] for k in SOURCE_COLUMNS if isinstance(obj.get(k), str) and obj[k].strip()), None)
                if src is None:
                    raise UsageError(f"{path}:{n}: no path or url field (one of {', '.join(SOURCE_COLUMNS)})")
                iid = next((str(obj[k]) for k in ID_COLUMNS if obj.get(k) not in (None, "")), None)
                items.append(_item(src, iid, base))
            else:
                raise UsageError(f"{path}:{n}: expected a string or an object")
    else:
        items = [_item(line, None, base) for line in text.splitlines() if line.strip() and not line.startswith("#")]
    return items


def collect(source: Path, exclude: Iterable[Path] = ()) -> list[Item]:
    if source.is_dir():
        return [Item(key=p.relative_to(source).as_posix(), image_id=p.relative_to(source).as_posix(), path=p)
                for p in iter_images(source, exclude)]
    if source.is_file():
        if source.suffix.lower() not in MANIFEST_EXTENSIONS:
            raise UsageError(f"{source} is neither a folder nor a manifest ({', '.join(MANIFEST_EXTENSIONS)})")
        return read_manifest(source)
    raise UsageError(f"{source}: no such folder or manifest")


def b64_of(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode("ascii")


# --- the API, in-process or remote ------------------------------------------------------------------------------
def describe_error(body: Any, status: int) -> dict[str, Any]:
    """The API's error envelope → {type, message, detail}; anything else → a generic error."""
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        e = body["error"]
        return {"type": e.get("type") or "http_error", "message": e.get("message") or f"HTTP {status}",
                "detail": e.get("detail"), "status_code": status}
    return {"type": "http_error", "message": f"HTTP {status} from the server", "detail": None, "status_code": status}


class Api:
    """One HTTP client for the run: to --server, or to the real app in this process."""

    def __init__(self, server: str | None, api_key: str | None, timeout: float, verbose: bool = False,
                 overrides: dict[str, Any] | None = None):
        self.server = server.rstrip("/") if server else None
        self.api_key = api_key
        self.timeout = timeout
        self.verbose = verbose
        self.overrides = overrides or {}
        self.stack = AsyncExitStack()
        self.client: httpx.AsyncClient | None = None
        self.settings = None

    @property
    def where(self) -> str:
        return self.server or "in-process Loupe"

    async def __aenter__(self) -> "Api":
        headers = {"User-Agent": "loupe-cli"}
        if self.server:
            if self.api_key:
                headers["X-Api-Key"] = self.api_key
            self.client = await self.stack.enter_async_context(httpx.AsyncClient(
                base_url=self.server, headers=headers, timeout=httpx.Timeout(self.timeout, connect=10.0)))
        else:
            app = build_app(self.verbose, self.overrides)
            self.settings = app.state.settings
            await self.stack.enter_async_context(app.router.lifespan_context(app))
            self.client = await self.stack.enter_async_context(httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://loupe.local", headers=headers,
                timeout=httpx.Timeout(None)))
        return self

    async def __aexit__(self, *exc) -> None:
        await self.stack.aclose()

    async def call(self, method: str, path: str, **kw) -> tuple[int, Any]:
        assert self.client is not None
        try:
            resp = await self.client.request(method, path, **kw)
        except httpx.TransportError as exc:
            if isinstance(exc, httpx.TimeoutException) and not isinstance(exc, httpx.ConnectTimeout):
                raise
            raise ServerError(f"cannot reach {self.where}: {type(exc).__name__}: {exc}") from exc
        try:
            body = resp.json()
        except ValueError:
            body = None
        if resp.status_code in (401, 403):
            err = describe_error(body, resp.status_code)
            hint = "" if self.api_key else " (pass --api-key or set LOUPE_API_KEY)"
            raise ServerError(f"{self.where} refused the request: {err['message']}{hint}")
        return resp.status_code, body

    async def operations(self) -> list[dict[str, Any]]:
        try:
            status, body = await self.call("GET", "/v1/operations")
        except httpx.TimeoutException as exc:
            raise ServerError(f"no answer from {self.where} within {self.timeout:g} s") from exc
        if status == 404 and self.server:
            raise ServerError(f"{self.server} does not look like a Loupe server (GET /v1/operations answered 404)")
        if status != 200 or not isinstance(body, dict):
            raise ServerError(f"{self.where}: GET /v1/operations failed: {describe_error(body, status)['message']}")
        return body.get("operations", [])


def build_app(verbose: bool, overrides: dict[str, Any]):
    """The real app with the settings of the environment / .env, minus what makes no sense in-process."""
    import logging

    from app.core.config import Settings
    from app.main import create_app

    settings = Settings(**{"log_level": "INFO" if verbose else "ERROR", "log_json": False, "rate_limit": "",
                           "api_keys": "", "api_key": "", **overrides})
    app = create_app(settings)
    for h in logging.getLogger().handlers:  # keep stdout for our own output
        if getattr(h, "_loupe", False) and isinstance(h, logging.StreamHandler):
            h.setStream(sys.stderr)
    return app


def warn_unavailable(ops: list[dict[str, Any]], flags: dict[str, bool], where: str) -> None:
    for op in ops:
        flag = op.get("flag")
        if flag and flags.get(flag) and not op.get("available") and not op.get("ready"):
            print(f"note: {op['name']} is not fully available on {where} (its model files are missing); "
                  "its values may be empty", file=sys.stderr)


# --- score -----------------------------------------------------------------------------------------------------
def flatten(key: str, image_id: str, result: dict[str, Any] | None, error: dict[str, Any] | None) -> dict[str, Any]:
    row: dict[str, Any] = {k: "" for k in CSV_FIELDS}
    row["path"], row["image_id"] = key, image_id
    if error:
        row["error"] = f"{error.get('type')}: {error.get('message')}"
    if not result:
        return row

    def ok(section: str) -> dict[str, Any] | None:
        v = result.get(section)
        return v if isinstance(v, dict) and v.get("status") == "ok" else None

    def val(v: Any) -> Any:
        return "" if v is None else v

    row["width"], row["height"] = val(result.get("width_px")), val(result.get("height_px"))
    if b := ok("blur"):
        row["laplacian_variance"], row["is_blurry"] = val(b.get("laplacian_variance")), val(b.get("is_blurry"))
    if e := ok("exposure"):
        row["mean_brightness"], row["verdict"] = val(e.get("mean_brightness")), val(e.get("verdict"))
    if q := ok("quality"):
        row["quality_score"], row["quality_band"], row["quality_is_ok"] = (
            val(q.get("score")), val(q.get("band")), val(q.get("is_ok")))
        row["brisque"], row["nima"] = val(q.get("brisque")), val(q.get("nima_technical"))
    if a := ok("aesthetic"):
        row["aesthetic"], row["aesthetic_laion"] = val(a.get("nima_score")), val(a.get("laion_score"))
    faces = ok("faces")
    emo = ok("emotion")
    if faces:
        row["faces"] = faces.get("count", 0)
    elif emo:
        row["faces"] = emo.get("count", 0)
    if emo:
        row["emotions"] = ";".join(f.get("dominant_emotion", "") for f in emo.get("faces", []))
    return row


def load_done(jsonl: Path) -> tuple[set[str], set[str]]:
    """Keys already in the JSONL output: (all, those whose last row is an error)."""
    last_error: dict[str, bool] = {}
    if jsonl.exists():
        with jsonl.open(encoding="utf-8") as fh:
            for line in fh:
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut by a crash: that image is simply done again
                if isinstance(obj, dict) and isinstance(obj.get("path"), str):
                    last_error[obj["path"]] = obj.get("error") is not None
    return set(last_error), {k for k, v in last_error.items() if v}


class Writer:
    """Appends one JSONL line and one CSV row per image, flushed as they come (so a crash loses nothing)."""

    def __init__(self, prefix: Path, fresh: bool):
        self.jsonl_path = prefix.with_name(prefix.name + ".jsonl")
        self.csv_path = prefix.with_name(prefix.name + ".csv")
        self.jsonl_path.parent.mkdir(parents=True, exist_ok=True)
        mode = "w" if fresh else "a"
        new_csv = fresh or not self.csv_path.exists() or self.csv_path.stat().st_size == 0
        self.jsonl = self.jsonl_path.open(mode, encoding="utf-8")
        self.csv_fh = self.csv_path.open(mode, newline="", encoding="utf-8")
        self.csv = csv.DictWriter(self.csv_fh, fieldnames=CSV_FIELDS)
        if new_csv:
            self.csv.writeheader()
        self.rows = 0
        self.failed = 0

    def write(self, item: Item, result: dict[str, Any] | None, error: dict[str, Any] | None) -> None:
        if error is not None:
            error = {k: error.get(k) for k in ("type", "message", "detail", "status_code") if k in error}
        source = item.url if item.url else str(item.path)
        line = {"path": item.key, "image_id": item.image_id, "source": source, "error": error, "result": result,
                "scored_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        self.jsonl.write(json.dumps(line, ensure_ascii=False) + "\n")
        self.jsonl.flush()
        self.csv.writerow(flatten(item.key, item.image_id, result, error))
        self.csv_fh.flush()
        self.rows += 1
        self.failed += error is not None

    def close(self) -> None:
        self.jsonl.close()
        self.csv_fh.close()


async def score_batch(api: Api, batch: list[Item], flags: dict[str, bool], writer: Writer, retries: int = 3) -> None:
    """Send one /v1/analyze/batch request; every image ends as a row (result or error)."""
    images: list[dict[str, Any]] = []
    sendable: list[Item] = []
    for it in batch:
        if it.url:
            images.append({"url": it.url, "image_id": it.image_id[:256]})
            sendable.append(it)
            continue
        try:
            data = await asyncio.to_thread(b64_of, it.path)
        except OSError as exc:
            writer.write(it, None, {"type": "unreadable_file", "message": f"{type(exc).__name__}: {exc.strerror or exc}"})
            continue
        images.append({"base64": data, "image_id": it.image_id[:256]})
        sendable.append(it)
    if not sendable:
        return
    for attempt in range(retries + 1):
        try:
            status, body = await api.call("POST", "/v1/analyze/batch", json={"images": images, **flags})
        except httpx.TimeoutException as exc:
            err = {"type": "timeout", "message": f"no answer from {api.where} within {api.timeout:g} s ({type(exc).__name__})"}
            for it in sendable:
                writer.write(it, None, err)
            return
        if status == 429 and attempt < retries:
            await asyncio.sleep(min(60.0, 2.0 ** attempt * 2))
            continue
        break
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


class OutputLock:
    """An exclusive lock on PREFIX.lock while a run writes PREFIX.csv/.jsonl, so that two runs never append
    to the same files (POSIX flock: released by the OS if the process dies; the file is removed at the end)."""

    def __init__(self, prefix: Path):
        self.path = prefix.with_name(prefix.name + ".lock")
        self.fh = None

    def __enter__(self) -> "OutputLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fh = self.path.open("a")
        try:
            import fcntl

            fcntl.flock(self.fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # not POSIX: no lock
            pass
        except OSError as exc:
            self.fh.close()
            self.fh = None
            raise UsageError(f"another run is writing {self.path.with_suffix('')}.* (locked: {self.path})") from exc
        return self

    def __exit__(self, *exc) -> None:
        if self.fh is not None:
            self.path.unlink(missing_ok=True)
            self.fh.close()


async def run_score(args: argparse.Namespace) -> int:
    out: Path = args.out
    items = collect(args.source)
    if not items:
        raise UsageError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found in {args.source}")
    with OutputLock(out):
        return await score_items(args, items)


async def score_items(args: argparse.Namespace, items: list[Item]) -> int:
    out: Path = args.out
    jsonl_path = out.with_name(out.name + ".jsonl")
    fresh = not args.resume
    done, failed_before = (set(), set()) if fresh else load_done(jsonl_path)
    skip = done - failed_before if args.retry_failed else done
    todo = [it for it in items if it.key not in skip]
    seen: set[str] = set()
    todo = [it for it in todo if not (it.key in seen or seen.add(it.key))]  # a manifest may list a file twice
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
        warn_unavailable(await api.operations(), flags, api.where)
        writer = Writer(out, fresh)
        try:
            from tqdm import tqdm

            bar = tqdm(total=len(todo), unit="img", desc="scoring", file=sys.stderr, dynamic_ncols=True,
                       disable=not args.progress, smoothing=0.1)
            sem = asyncio.Semaphore(max(1, args.concurrency))

            async def one(batch: list[Item]) -> None:
                async with sem:
                    # every item of a batch ends as exactly one row; counting the writer's rows
                    # here would also count the rows other batches wrote meanwhile
                    await score_batch(api, batch, flags, writer)
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
          + (f", {skipped} already done" if skipped else "") + f" → {writer.csv_path}, {writer.jsonl_path}")
    return EXIT_FAILED if writer.failed else EXIT_OK


# --- cluster ---------------------------------------------------------------------------------------------------
def thumbnail_data_uri(path: Path, size: int = 256) -> str | None:
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as im:
            im.draft("RGB", (size * 2, size * 2))
            im = ImageOps.exif_transpose(im)
            if im.mode not in ("RGB", "L"):
                bg = Image.new("RGB", im.size, (255, 255, 255))
                rgba = im.convert("RGBA")
                bg.paste(rgba, mask=rgba.getchannel("A"))
                im = bg
            im = im.convert("RGB")
            im.thumbnail((size, size), Image.Resampling.LANCZOS)
            buf = io.BytesIO()
            im.save(buf, format="JPEG", quality=82, optimize=True)
    except Exception:  # noqa: BLE001 - an unreadable file gets a placeholder
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _fmt(v: Any, digits: int = 2) -> str:
    if v is None or v == "":
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


CONTACT_CSS = """
:root{--ok:#1b7f3b;--bad:#8a8a8a;--fg:#1d1f23;--muted:#5b6270;--line:#dde1e7}
*{box-sizing:border-box}body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;color:var(--fg);margin:0;padding:24px;background:#f6f7f9}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:0 0 6px}.meta{color:var(--muted);margin:0 0 16px}
section{background:#fff;border:1px solid var(--line);border-radius:10px;padding:14px 16px;margin:14px 0}
.reason{color:var(--muted);margin:0 0 10px}.grid{display:flex;flex-wrap:wrap;gap:14px}
figure{margin:0;width:272px;border:2px solid var(--line);border-radius:8px;padding:7px;background:#fff;position:relative}
figure img{display:block;max-width:256px;max-height:256px;margin:0 auto;border-radius:4px}
figure.best{border-color:var(--ok);box-shadow:0 0 0 2px #1b7f3b33}
figure.rejected img{filter:grayscale(1);opacity:.45}
.badge{position:absolute;top:10px;left:10px;background:var(--ok);color:#fff;font-weight:600;padding:2px 8px;border-radius:999px;font-size:12px}
figcaption{font-size:12px;margin-top:6px}figcaption .name{font-weight:600;overflow-wrap:anywhere}
.scores{color:var(--muted)}.why{color:#9a3412;margin-top:3px}.ph{width:256px;height:160px;display:flex;align-items:center;justify-content:center;background:#eee;color:#888;border-radius:4px}
.band{display:inline-block;padding:0 6px;border-radius:4px;color:#fff;font-size:11px}
.very_poor{background:#b91c1c}.poor{background:#c2410c}.decent{background:#a16207}.good{background:#4d7c0f}.excellent{background:#15803d}
.err{color:#b91c1c}
"""


def render_contact_sheet(root: Path, resp: dict[str, Any], key_of: dict[str, str], thumbs: dict[str, str | None],
                         elapsed_s: float) -> str:
    results = {r.get("image_id"): r for r in resp.get("results", []) if isinstance(r, dict)}
    esc = html.escape

    def figure(image_id: str, member: dict[str, Any] | None, extra_class: str = "") -> str:
        key = key_of.get(image_id, image_id)
        r = results.get(image_id) or {}
        q = r.get("quality") or {}
        b = r.get("blur") or {}
        e = r.get("exposure") or {}
        thumb = thumbs.get(image_id)
        img = (f'<img src="{thumb}" alt="{esc(key)}" loading="lazy">' if thumb
               else f'<div class="ph" role="img" aria-label="{esc(key)}">no preview</div>')
        cls = extra_class
        badge = ""
        why = ""
        score_txt = ""
        if member is not None:
            if member.get("is_best"):
                cls += " best"
                badge = '<span class="badge">★ Best shot</span>'
            else:
                cls += " rejected"
                if member.get("rejected_reason"):
                    why = f'<div class="why">Rejected: {esc(str(member["rejected_reason"]))}</div>'
            basis = "quality score" if member.get("ranked_by") == "quality_score" else "sharpness + exposure"
            score_txt = f"rank {member.get('rank')} · ranking score {_fmt(member.get('quality_score'), 3)} ({basis})<br>"
        band = q.get("band")
        band_html = f' <span class="band {esc(band)}">{esc(band.replace("_", " "))}</span>' if band else ""
        scores = (f'{score_txt}quality {_fmt(q.get("score"), 3)}{band_html}<br>'
                  f'sharpness (Laplacian var.) {_fmt(b.get("laplacian_variance"), 1)}'
                  f'{" · blurry" if b.get("is_blurry") else ""}<br>'
                  f'brightness {_fmt(e.get("mean_brightness"), 1)} · {esc(str(e.get("verdict") or "–"))}')
        return (f'<figure class="{cls.strip()}">{badge}{img}<figcaption><div class="name">{esc(key)}</div>'
                f'<div class="scores">{scores}</div>{why}</figcaption></figure>')

    parts = [f"<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Loupe contact sheet — {esc(str(root))}</title>"
             f"<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\"><style>{CONTACT_CSS}</style></head><body>"]
    groups = resp.get("groups", [])
    singles = resp.get("singletons", [])
    failed = resp.get("failed", [])
    parts.append(f"<h1>Contact sheet: {esc(str(root))}</h1><p class=\"meta\">{len(key_of)} images · {len(groups)} "
                 f"group(s) of near-duplicates · {len(singles)} unique shot(s) · {len(failed)} failed · features: "
                 f"{esc(', '.join(resp.get('features_used', [])) or '–')} · made by Loupe in {elapsed_s:.1f} s on "
                 f"{datetime.now().strftime('%Y-%m-%d %H:%M')}</p>")
    for n, g in enumerate(groups, 1):
        members = "".join(figure(m["image_id"], m) for m in g.get("members", []))
        parts.append(f'<section aria-labelledby="g{n}"><h2 id="g{n}">Group {n} — '
                     f'{g.get("size", len(g.get("members", [])))} shots, linked by {esc(" and ".join(g.get("linked_by", [])))}'
                     f'</h2><p class="reason">{esc(str(g.get("reason", "")))}</p><div class="grid">{members}</div></section>')
    if singles:
        parts.append('<section aria-labelledby="singles"><h2 id="singles">Unique shots (no near-duplicate)</h2>'
                     f'<div class="grid">{"".join(figure(i, None) for i in singles)}</div></section>')
    if failed:
        items = "".join(f'<li><span class="name">{esc(key_of.get(f["image_id"], f["image_id"]))}</span>: '
                        f'<span class="err">{esc(str((f.get("error") or {}).get("message", "")))}</span></li>' for f in failed)
        parts.append(f'<section aria-labelledby="failed"><h2 id="failed">Could not be read</h2><ul>{items}</ul></section>')
    parts.append("</body></html>")
    return "".join(parts)


def groups_json(root: Path, resp: dict[str, Any], key_of: dict[str, str]) -> dict[str, Any]:
    k = lambda i: key_of.get(i, i)  # noqa: E731
    groups = [{
        "group_id": g["group_id"], "size": g.get("size"), "best": k(g["best_image_id"]), "reason": g.get("reason"),
        "linked_by": g.get("linked_by", []),
        "members": [{"path": k(m["image_id"]), "rank": m.get("rank"), "is_best": m.get("is_best"),
                     "quality_score": m.get("quality_score"), "ranked_by": m.get("ranked_by"),
                     "rejected_reason": m.get("rejected_reason")} for m in g.get("members", [])],
    } for g in resp.get("groups", [])]
    singles = [k(i) for i in resp.get("singletons", [])]
    return {
        "folder": str(root), "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "features_used": resp.get("features_used", []), "params": resp.get("params", {}),
        "groups": groups, "singletons": singles,
        "failed": [{"path": k(f["image_id"]), "error": f.get("error")} for f in resp.get("failed", [])],
        "keep": [g["best"] for g in groups] + singles,
    }


def export_best(keep: list[str], path_of_key: dict[str, Path], dest: Path, link: bool) -> int:
    dest.mkdir(parents=True, exist_ok=True)
    n = 0
    for key in keep:
        src = path_of_key[key]
        target = dest / key
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_symlink() or target.exists():
            target.unlink()
        if link:
            target.symlink_to(src.resolve())
        else:
            shutil.copy2(src, target)
        n += 1
    return n


async def run_cluster(args: argparse.Namespace) -> int:
    root: Path = args.folder
    if not root.is_dir():
        raise UsageError(f"{root}: no such folder")
    export_dir = args.copy_best or args.link_best
    items = collect(root, exclude=[export_dir] if export_dir else [])
    if not items:
        raise UsageError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found in {root}")
    ids: list[str] = []
    for n, it in enumerate(items):  # ids must be unique and at most 256 characters
        ids.append(it.key if len(it.key) <= 256 else f"#{n}:{it.key[-200:]}")
    key_of = dict(zip(ids, (it.key for it in items)))
    path_of = {it.key: it.path for it in items}
    t0 = time.perf_counter()
    progress = args.progress
    if progress:
        print(f"reading {len(items)} images…", file=sys.stderr)
    images = []
    unreadable: list[dict[str, Any]] = []
    for iid, it in zip(ids, items):
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

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 2)) as pool:
        thumbs = dict(zip(ids, tqdm(pool.map(lambda it: thumbnail_data_uri(it.path, args.thumb_size), items),
                                    total=len(items), desc="thumbnails", unit="img", file=sys.stderr,
                                    disable=not progress)))
    out: Path = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    html_path = out.with_name(out.name + ".html")
    json_path = out.with_name(out.name + ".json")
    html_path.write_text(render_contact_sheet(root, body, key_of, thumbs, elapsed), encoding="utf-8")
    summary = groups_json(root, body, key_of)
    json_path.write_text(json.dumps(summary, indent=2, ensure_ascii=False), encoding="utf-8")
    msg = (f"{len(items)} images → {len(summary['groups'])} group(s), {len(summary['singletons'])} unique, "
           f"{len(summary['failed'])} failed; wrote {html_path} and {json_path}")
    if export_dir:
        n = export_best(summary["keep"], path_of, export_dir, link=bool(args.link_best))
        msg += f"; {'linked' if args.link_best else 'copied'} {n} best shot(s) to {export_dir}"
    print(msg)
    return EXIT_FAILED if summary["failed"] else EXIT_OK


# --- argument parsing ---------------------------------------------------------------------------------------------
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
                    "never a stop."),
        epilog=wrap("CSV columns: " + ", ".join(CSV_FIELDS) + ".") + "\n\n" + EXIT_CODES_HELP + """
examples:
  loupe score ~/photos --out scores
  loupe score urls.csv --aesthetic --faces --emotion --out run1
  LOUPE_API_KEY=… loupe score ~/photos --server http://loupe:8000 --concurrency 4 --batch-size 16
""")
    sc.add_argument("source", type=Path, metavar="DIR_OR_MANIFEST", help="Folder of images, or a .csv/.jsonl/.txt manifest.")
    sc.add_argument("--out", type=Path, default=Path("loupe-scores"), metavar="PREFIX",
                    help="Output prefix: writes PREFIX.csv and PREFIX.jsonl (default: %(default)s).")
    g = sc.add_argument_group("analyses (each flag of /v1/analyze; --no-X turns one off)")
    for api_flag, opt, default, text in ANALYSES:
        g.add_argument(f"--{opt}", dest=opt, action=argparse.BooleanOptionalAction, default=default,
                       help=f"{text} ({api_flag}; default: {'on' if default else 'off'}).")
    g.add_argument("--all", action="store_true", help="Turn every analysis on.")
    r = sc.add_argument_group("throughput and resuming")
    r.add_argument("--batch-size", type=int, default=8, metavar="N",
                   help="Images per /v1/analyze/batch request (capped at MAX_BATCH_SIZE in-process; "
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

    cl = sub.add_parser(
        "cluster", formatter_class=Formatter, help="group near-duplicates, pick the best shot → HTML contact sheet + JSON",
        description=wrap("Group the near-duplicate shots of a folder (bursts, re-saves, crops) and pick the best shot of "
                    "each group, through POST /v1/cluster/images (perceptual hashes, and CLIP embeddings when the "
                    "model is ready; ranked by the quality score). Writes PREFIX.html, a self-contained contact sheet "
                    "(thumbnails embedded, grouped, the best shot marked, rejected shots greyed with the reason, "
                    "scores under each), and PREFIX.json with the groups. --copy-best / --link-best put the best shot "
                    "of every group and every unique shot into a folder (keeping the relative paths)."),
        epilog=wrap("PREFIX.json: {folder, features_used, params, groups: [{group_id, size, best, reason, linked_by, "
               "members: [{path, rank, is_best, quality_score, ranked_by, rejected_reason}]}], singletons, failed: "
               "[{path, error}], keep: [the best shots and the unique shots]}.") + "\n\n" + EXIT_CODES_HELP + """
examples:
  loupe cluster ~/burst --out contact
  loupe cluster ~/trip --copy-best ~/trip-keepers --fast
""")
    cl.add_argument("folder", type=Path, metavar="DIR", help="Folder of images (searched recursively).")
    cl.add_argument("--out", type=Path, default=Path("loupe-clusters"), metavar="PREFIX",
                    help="Output prefix: writes PREFIX.html and PREFIX.json (default: %(default)s).")
    ex = cl.add_mutually_exclusive_group()
    ex.add_argument("--copy-best", type=Path, metavar="DIR",
                    help="Copy the best shot of each group and every unique shot into DIR (skipped when scanning).")
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
    return ap


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: 0 for --help, 2 for a usage error
        return int(exc.code or 0)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    args.server = args.server or os.environ.get("LOUPE_SERVER") or None
    args.api_key = args.api_key or os.environ.get("LOUPE_API_KEY") or None
    if args.command == "score":
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
    runner = run_score if args.command == "score" else run_cluster
    try:
        return asyncio.run(runner(args))
    except UsageError as exc:
        print(f"loupe {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ServerError as exc:
        print(f"loupe {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_SERVER
    except RefusedError as exc:
        print(f"loupe {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    except KeyboardInterrupt:
        print(f"\nloupe {args.command}: interrupted" + ("; run the same command again to resume" if args.command == "score" else ""),
              file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
