"""`--engine ray`: `score` and `cluster` on a Ray cluster (Ray Data), the same pipeline as the in-process engine.

    driver      lists the shots (folder, manifest, s3:// prefix: manifest.py, objectstore.py), drops
                those already done (resume), writes the outputs
      │ from_items(rows)
    read tasks  `read_block`: the bytes (file or object store), their sha256, a resumed row whose
      │         bytes did not change is dropped; a read failure travels on as the row's error.
      │         Fractional CPUs (READ_CPUS), so they always fit beside the actors
    actors      `LoupeActor`: ONE in-process Loupe per actor (the real app and its lifespan: one
      │         ModelRegistry, models loaded once, the orchestrator's batched forward passes).
      │         score: the same `score_batch` / `score_tasks_batch` (commands.py) and row code
      │         (writer.py's `jsonl_record` / `table_row`) as the in-process engine, so columns and
      │         numbers are the same. cluster: per-image features (the orchestrator's `process`,
      │         as the photo-set endpoint runs it) and thumbnails; later each group's ranking
      │         through POST /v1/cluster/images itself
    driver      score: JSONL appended as rows arrive (crash-safe; resume reads it back), Parquet
                (the CSV's columns, last row per path) rebuilt at the end. cluster: the links
                (perceptual hashes and embeddings through the sparse DBSCAN of app.neighbors,
                connected components), then the contact sheet and JSON as in-process.

Actor sizing (`plan_pool`): Ray Data only schedules read tasks when CPUs are left over, so one CPU per
node stays free; the pool gets the rest (one actor per CPU by default, --workers N to choose), each actor
asking for at most one CPU and less when N actors would not leave that CPU free.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from app.cli.errors import EXIT_FAILED, EXIT_OK, RefusedError, ServerError, UsageError
from app.cli.manifest import IMAGE_EXTENSIONS, Item, collect
from app.cli.objectstore import S3Options, is_object_uri, list_prefix, read_uri
from app.cli.writer import (
    CSV_FIELDS,
    OutputLock,
    check_parquet_columns,
    flatten,
    jsonl_record,
    load_done_sha256,
    parquet_path_of,
    write_parquet,
)

KIND_FILE, KIND_S3, KIND_URL = "file", "s3", "url"
ROW_COLUMNS = ("key", "image_id", "kind", "source", "companions", "expect")
#: CPUs a read task asks for: reading is I/O and hashing, and four of them fit in the CPU left free
READ_CPUS = 0.25


# --- sizing --------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PoolPlan:
    workers: int  # actors in the pool
    actor_cpus: float  # num_cpus of each actor
    read_cpus: float  # num_cpus of each read task


def plan_pool(cpus: float, nodes: int = 1, workers: int | None = None) -> PoolPlan:
    """The actor pool for a cluster of `cpus` CPUs on `nodes` nodes: one CPU per node stays free for the read
    tasks (an actor pool that takes every CPU leaves Ray Data waiting forever on its resource budget), the
    pool gets the rest: `workers` actors (default: one per remaining CPU), each asking for min(1, rest / workers)
    CPUs. A cluster with no CPU to spare (one CPU) gives the pool half of it."""
    reserve = float(max(1, nodes))
    budget = cpus - reserve if cpus > reserve else cpus / 2
    n = workers if workers and workers > 0 else max(1, int(budget))
    return PoolPlan(workers=n, actor_cpus=round(min(1.0, budget / n), 4), read_cpus=READ_CPUS)


def connect(address: str | None, verbose: bool) -> tuple[Any, bool]:
    """(the ray module, whether this run started Ray). An already initialised Ray (a test, a notebook) is used
    as it is; else `address` (None: RAY_ADDRESS, else a Ray started here for the run)."""
    try:
        import ray
        import ray.data  # noqa: F401 - Ray Data is the part we need
    except ImportError as exc:
        raise UsageError(f"--engine ray needs Ray Data (pip install 'ray[data]', pinned in requirements.txt): {exc}") from exc
    if ray.is_initialized():
        return ray, False
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=verbose,
                 logging_level=logging.INFO if verbose else logging.WARNING)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise ServerError(f"cannot reach the Ray cluster {address or os.environ.get('RAY_ADDRESS') or '(local)'}: {exc}") from exc
    return ray, True


def cluster_plan(ray: Any, workers: int | None) -> PoolPlan:
    cpus = float(ray.cluster_resources().get("CPU", 1.0))
    nodes = sum(1 for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) > 0)
    return plan_pool(cpus, max(1, nodes), workers)


def configure_data(progress: bool) -> None:
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = progress
    ctx.print_on_execution_start = progress


@contextmanager
def ray_job() -> Iterator[None]:
    """A Ray job that fails (a worker lost, an error in an actor) is exit 3 with Ray's last line, not a traceback
    (--verbose shows the actors' logs); the CLI's own failures pass as they are."""
    try:
        yield
    except (RefusedError, UsageError, ServerError, KeyboardInterrupt):
        raise
    except Exception as exc:  # noqa: BLE001 - Ray wraps whatever failed on the cluster
        lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
        raise ServerError(f"the Ray job failed: {type(exc).__name__}: {lines[-1] if lines else exc}") from exc


# --- rows ----------------------------------------------------------------------------------------------------------
def s3_options(args: argparse.Namespace) -> S3Options:
    return S3Options.from_env(getattr(args, "s3_endpoint", None), getattr(args, "s3_region", None),
                              bool(getattr(args, "s3_anonymous", False)))


def source_items(source: Path | str, s3: S3Options, exclude: list[Path] | None = None) -> list[Item]:
    if is_object_uri(source):
        return list_prefix(str(source), s3)
    return collect(Path(source), exclude=exclude or [])


def item_row(it: Item, image_id: str | None = None, expect: str = "") -> dict[str, str]:
    """An item as a row of the dataset (plain strings: they travel as Arrow columns)."""
    if it.url:
        kind, source = (KIND_S3 if is_object_uri(it.url) else KIND_URL), it.url
    else:
        kind, source = KIND_FILE, str(it.path)
    return {"key": it.key, "image_id": image_id if image_id is not None else it.image_id, "kind": kind,
            "source": source, "companions": json.dumps([c.as_posix() for c in it.companions]), "expect": expect}


def row_item(row: dict[str, Any], data: bytes | None = None) -> Item:
    kind, source = row["kind"], row["source"]
    return Item(key=row["key"], image_id=row["image_id"], path=Path(source) if kind == KIND_FILE else None,
                url=None if kind == KIND_FILE else source, companions=[Path(c) for c in json.loads(row["companions"])],
                data=data)


def read_bytes(kind: str, source: str, s3: S3Options | None) -> bytes:
    if kind == KIND_S3:
        return read_uri(source, s3 or S3Options.from_env())
    return Path(source).read_bytes()


def rows_of(batch: dict[str, np.ndarray], columns: tuple[str, ...]) -> list[dict[str, Any]]:
    n = len(batch[columns[0]]) if columns[0] in batch else 0
    out = []
    for i in range(n):
        row = {}
        for c in columns:
            v = batch[c][i]
            row[c] = bytes(v) if isinstance(v, bytes | bytearray | memoryview) else str(v) if isinstance(v, np.str_) else v
        out.append(row)
    return out


def columns_of(rows: list[dict[str, Any]], columns: tuple[str, ...]) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for c in columns:
        arr = np.empty(len(rows), dtype=object)
        arr[:] = [r[c] for r in rows]
        out[c] = arr
    return out


READ_COLUMNS = (*ROW_COLUMNS, "data", "sha256", "read_error")


def read_block(batch: dict[str, np.ndarray], s3: S3Options | None = None) -> dict[str, np.ndarray]:
    """The read task: each row's bytes and sha256 (a URL is left to the actor's SSRF-safe fetch). A row resumed
    with the sha256 of its last run (`expect`) whose bytes did not change is dropped; a file or object that
    cannot be read goes on with its error, to become an error row."""
    out = []
    for row in rows_of(batch, ROW_COLUMNS):
        data, err, sha = b"", "", ""
        if row["kind"] != KIND_URL:
            try:
                data = read_bytes(row["kind"], row["source"], s3)
                sha = hashlib.sha256(data).hexdigest()
            except OSError as exc:
                err = json.dumps({"type": "unreadable_file", "message": f"{type(exc).__name__}: {exc.strerror or exc}"})
        if row["expect"] and sha == row["expect"]:
            continue  # done in an earlier run, from the same bytes
        out.append({**row, "data": data, "sha256": sha, "read_error": err})
    return columns_of(out, READ_COLUMNS)


class Rows:
    """A Writer for the actors: each image's JSONL line (writer.py's `jsonl_record`, plus the sha256 of its bytes),
    collected as columns for Ray instead of appended to a file."""

    def __init__(self) -> None:
        self.sha: dict[str, str | None] = {}
        self.lines: list[str] = []
        self.failed: list[bool] = []

    def write(self, item: Item, result: dict[str, Any] | None, error: dict[str, Any] | None) -> None:
        line = jsonl_record(item, result, error)
        sha = self.sha.get(item.key) or (result.get("sha256") if isinstance(result, dict) else None)
        line["sha256"] = sha if isinstance(sha, str) else None
        self.lines.append(json.dumps(line, ensure_ascii=False))
        self.failed.append(line["error"] is not None)

    def columns(self, refused: str = "") -> dict[str, np.ndarray]:
        """The rows as columns; `refused`: why the API refused the whole task list (one row that says so: the
        driver stops the run with it, exit 4, as in-process)."""
        if refused:
            return {"line": np.array([""], dtype=object), "failed": np.array([False]),
                    "refused": np.array([refused], dtype=object)}
        return {"line": np.array(self.lines, dtype=object), "failed": np.array(self.failed, dtype=bool),
                "refused": np.array([""] * len(self.lines), dtype=object)}


# --- the actor -----------------------------------------------------------------------------------------------------
class LoupeActor:
    """One in-process Loupe (the real app, its lifespan and its one registry) per Ray actor, driven from Ray Data's
    `map_batches`. The app's event loop runs on a thread of its own for the actor's life, so models stay loaded
    and every call (whatever thread Ray makes it from) goes through the same loop.

    mode "score": options {flags} or {tasks, types}: rows → JSONL lines, by commands.py's score_batch /
    score_tasks_batch. mode "features": options {eps, …, thumb_size}: rows → per-image result, perceptual hash,
    embedding, thumbnail. mode "rank": options {eps, …, s3}: groups of rows → the /v1/cluster/images answer."""

    def __init__(self, settings: Any, mode: str, options: dict[str, Any], verbose: bool = False,
                 overrides: dict[str, Any] | None = None):
        from app.cli.client import Api

        self.mode, self.options = mode, options
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="loupe-actor-loop", daemon=True)
        self.thread.start()
        self.api = Api(None, None, 300.0, verbose, overrides, settings=settings)
        self.wait(self.api.__aenter__())

    def wait(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        run = {"score": self.score, "features": self.features, "rank": self.rank}[self.mode]
        return self.wait(run(batch))

    async def score(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from app.cli.commands import score_batch, score_tasks_batch
        from app.cli.tasks import TaskRun

        sink = Rows()
        items: list[Item] = []
        for row in rows_of(batch, READ_COLUMNS):
            it = row_item(row, row["data"] if row["kind"] != KIND_URL else None)
            sink.sha[it.key] = row["sha256"] or None
            if row["read_error"]:
                sink.write(it, None, json.loads(row["read_error"]))
            else:
                items.append(it)
        settings = self.api.settings
        step = max(1, min(int(self.options.get("batch_size", 8)), settings.max_batch_size if settings else 8))
        tasks = self.options.get("tasks")
        run = TaskRun(source=Path(self.options.get("tasks_source", "tasks")), tasks=tasks,
                      types=self.options.get("types", {})) if tasks is not None else None
        try:
            for i in range(0, len(items), step):
                chunk = items[i:i + step]
                if run is None:
                    await score_batch(self.api, chunk, self.options["flags"], sink)
                else:
                    await score_tasks_batch(self.api, chunk, run, sink)
        except RefusedError as exc:  # an exception would reach the driver as text only: say it as a row
            return sink.columns(refused=str(exc))
        return sink.columns()

    async def features(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """What the photo-set endpoint computes per image before grouping (`cluster_photoset`'s plan, run by the
        same orchestrator), plus the perceptual hash, the embedding and the thumbnail, for the driver."""
        from app.imaging.sources import ImageSource
        from app.services import phash as phash_svc
        from app.services.photoset import photoset_plan
        from app.services.results import assemble

        orch = self.api.app.state.orchestrator
        registry = orch.registry
        plan = photoset_plan(registry, bool(self.options["use_embeddings"]),
                             bool(self.options["rank_by_quality_models"]))
        rows = rows_of(batch, READ_COLUMNS)
        readable = [r for r in rows if not r["read_error"]]
        sources = [ImageSource(image_id=r["image_id"], url=r["source"]) if r["kind"] == KIND_URL
                   else ImageSource(image_id=r["image_id"], data=r["data"]) for r in readable]
        processed = {it.image_id: it for it in await orch.process(sources, plan)} if sources else {}
        settings = orch.settings
        size = int(self.options["thumb_size"])

        def finish(row: dict[str, Any]) -> dict[str, Any]:
            from app.cli.sheet import thumbnail_of_bytes

            out = {"image_id": row["image_id"], "result": "", "phash": "", "embedding": b"", "embedding_kind": "",
                   "thumb": "", "error": row["read_error"]}
            it = processed.get(row["image_id"])
            if it is None:
                return out
            result = assemble(it, plan, settings, registry)
            out["result"] = json.dumps(result.model_dump(mode="json", by_alias=True))
            if it.error is not None:
                out["error"] = json.dumps(it.error.model_dump(mode="json"))
                return out
            out["phash"] = format(phash_svc.phash_image(it.image, settings.analysis_max_dim), "016x")
            for name, kind in (("clip", "clip"), ("mobilenet", "mobilenet")):
                vec = it.models.get(name)
                if vec is not None and not isinstance(vec, BaseException):
                    out["embedding"] = np.asarray(vec, dtype=np.float32).tobytes()
                    out["embedding_kind"] = kind
            if row["kind"] != KIND_URL:
                out["thumb"] = thumbnail_of_bytes(row["data"], size, settings.max_image_pixels) or ""
            return out

        done = await orch.in_pool(lambda: [finish(r) for r in rows])
        return columns_of(done, FEATURE_COLUMNS)

    async def rank(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Each group through POST /v1/cluster/images: the endpoint's own ranking (equal terms, lesser copies)."""
        from app.cli.client import describe_error

        s3 = self.options.get("s3")
        answers = []
        for members_json in batch["members"]:
            members = json.loads(str(members_json))
            images = []
            for m in members:
                if m["kind"] == KIND_URL:
                    images.append({"url": m["source"], "image_id": m["image_id"]})
                    continue
                data = await asyncio.to_thread(read_bytes, m["kind"], m["source"], s3)
                images.append({"base64": base64.b64encode(data).decode("ascii"), "image_id": m["image_id"]})
            payload = {"images": images, **{k: self.options[k] for k in PHOTOSET_FIELDS}}
            status, body = await self.api.call("POST", "/v1/cluster/images", json=payload)
            answers.append(json.dumps(body if status == 200 else {"error": describe_error(body, status),
                                                                   "image_ids": [m["image_id"] for m in members]}))
        return {"answer": np.array(answers, dtype=object)}


FEATURE_COLUMNS = ("image_id", "result", "phash", "embedding", "embedding_kind", "thumb", "error")
PHOTOSET_FIELDS = ("eps", "hash_max_distance", "use_embeddings", "rank_by_quality_models")


# --- score -----------------------------------------------------------------------------------------------------------
def run_score_ray(args: argparse.Namespace) -> int:
    from app.cli.commands import task_run_of

    if getattr(args, "crops", None) is not None:
        raise UsageError("--crops is not available with --engine ray (the crops would be written on the workers)")
    run = task_run_of(args)
    s3 = s3_options(args)
    items = source_items(args.source, s3)
    if not items:
        raise UsageError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found in {args.source}")
    with OutputLock(args.out):
        return score_on_ray(args, items, run, s3)


def score_on_ray(args: argparse.Namespace, items: list[Item], run: Any, s3: S3Options) -> int:
    from app.cli.client import cli_settings
    from app.cli.parser import ANALYSES
    from app.cli.tasks import task_row

    out: Path = args.out
    jsonl_path, parquet_path = out.with_name(out.name + ".jsonl"), parquet_path_of(out)
    fields, row_fn = (CSV_FIELDS, flatten) if run is None else (run.csv_fields, task_row(run.types))
    fresh = not args.resume
    if not fresh:
        check_parquet_columns(parquet_path, tuple(fields))
    done = {} if fresh else load_done_sha256(jsonl_path)
    rows: list[dict[str, str]] = []
    seen: set[str] = set()
    skipped = 0
    for it in items:
        if it.key in seen:  # a manifest may list a file twice: the first entry counts
            skipped += 1
            continue
        seen.add(it.key)
        prev = done.get(it.key)
        if prev is None or (prev[1] and args.retry_failed):
            rows.append(item_row(it))
        elif prev[0] and not (it.url and not is_object_uri(it.url)):
            rows.append(item_row(it, expect=prev[0]))  # the read task compares the bytes' sha256
        else:
            skipped += 1  # a URL (or a line without sha256): done by path, as in-process
    if not rows:
        if jsonl_path.exists():
            write_parquet(jsonl_path, parquet_path, tuple(fields), row_fn)
        print(f"nothing to do: all {len(items)} images are already in {jsonl_path} (use --no-resume to start over)")
        return EXIT_OK
    ray, started = connect(args.address, args.verbose)
    n_rows = n_failed = 0
    t0 = time.perf_counter()
    try:
        configure_data(args.progress)
        plan = cluster_plan(ray, args.workers)
        if args.progress:
            print(f"ray: {plan.workers} actor(s) × {plan.actor_cpus:g} CPU, read tasks × {plan.read_cpus:g} CPU",
                  file=sys.stderr)
        batch = max(1, args.batch_size)
        options: dict[str, Any] = {"batch_size": batch}
        if run is None:
            options["flags"] = {api_flag: getattr(args, opt) for api_flag, opt, _, _ in ANALYSES}
        else:
            options.update(tasks=run.tasks, types=run.types, tasks_source=str(run.source))
        ds = (ray.data.from_items(rows, override_num_blocks=max(1, min(len(rows) // batch + 1, 2000)))
              .map_batches(read_block, batch_size=batch, batch_format="numpy", num_cpus=plan.read_cpus,
                           fn_kwargs={"s3": s3})
              .map_batches(LoupeActor, batch_size=batch, batch_format="numpy", num_cpus=plan.actor_cpus,
                           compute=ray.data.ActorPoolStrategy(size=plan.workers),
                           fn_constructor_kwargs={"settings": cli_settings(args.verbose), "mode": "score",
                                                  "options": options, "verbose": args.verbose}))
        jsonl_path.parent.mkdir(parents=True, exist_ok=True)
        with jsonl_path.open("w" if fresh else "a", encoding="utf-8") as fh, ray_job():
            for out_batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                for line, failed, refused in zip(out_batch["line"], out_batch["failed"], out_batch["refused"]):
                    if refused:
                        raise RefusedError(str(refused))
                    fh.write(str(line) + "\n")
                    n_rows += 1
                    n_failed += bool(failed)
                fh.flush()
    finally:
        if started:
            ray.shutdown()
    write_parquet(jsonl_path, parquet_path, tuple(fields), row_fn)
    dt = time.perf_counter() - t0
    skipped += len(rows) - n_rows
    print(f"scored {n_rows} image(s) in {dt:.1f} s ({n_rows / dt:.1f}/s) on Ray, {n_failed} failed"
          + (f", {skipped} already done" if skipped else "") + f" → {parquet_path}, {jsonl_path}")
    return EXIT_FAILED if n_failed else EXIT_OK
