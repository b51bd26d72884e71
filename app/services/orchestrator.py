"""Which analyses run, per image and per batch.

1. Ingest: every image's bytes are read (URL / base64 / upload) and decoded once,
   at most BATCH_CONCURRENCY at a time; decoding runs on the shared pool.
2. Gate: blur and exposure per image, on the shared pool (cheap, no model).
3. Models: each model needed runs ONCE over all images that need it (a real
   batched forward pass, chunked by the adapter's max batch), off the event loop.
   Independent models run side by side; CLIP runs before the LAION head that
   reads its embeddings.
4. Assemble (results.py): per image, per analysis: a result, or a clear
   `unavailable` / `error` entry. A bad image never fails the batch; a failing
   model never fails the other analyses (a failing batched call is retried per
   image so one poison image does not take the others with it).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

import httpx

from app.core.config import Settings
from app.core.errors import ApiError, ModelUnavailable, detached
from app.core.metrics import ANALYSIS_LATENCY, ERRORS, IMAGES_ANALYZED
from app.imaging.budget import MemoryBudget
from app.imaging.decode import DecodedImage, decode_image, probe
from app.imaging.sources import ImageSource, check_bytes, read_source
from app.models.registry import ModelRegistry
from app.schemas import analysis as S
from app.schemas.common import ErrorInfo, RunFlags
from app.services import blur as blur_svc
from app.services import compression as compression_svc
from app.services import exposure as exp_svc
from app.services.results import assemble

log = logging.getLogger("loupe.orchestrator")


@dataclass
class Plan:
    blur: bool = True
    exposure: bool = True
    quality: bool = True
    aesthetic: bool = False
    emotion: bool = False
    embedding: bool = False
    faces: bool = False
    quality_models: bool = True  # False: the quality score from blur and exposure alone (no model runs)
    mobilenet: bool = False  # the MobileNet embedding (photo-set grouping without CLIP)

    @classmethod
    def from_flags(cls, flags: RunFlags) -> Plan:
        return cls(blur=flags.run_blur, exposure=flags.run_exposure, quality=flags.run_quality,
                   aesthetic=flags.run_aesthetic, emotion=flags.run_emotion,
                   embedding=flags.run_embedding, faces=flags.run_faces)

    @property
    def gate(self) -> bool:
        return self.blur or self.exposure or self.quality

    def models(self) -> list[str]:
        names: list[str] = []
        if self.quality and self.quality_models:
            names += ["brisque", "niqe", "nima_technical"]
        if self.aesthetic:
            names.append("nima_aesthetic")
        if self.embedding:
            names.append("clip")
        if self.aesthetic and self.embedding:
            names.append("laion_aesthetic")
        if self.emotion:
            names.append("emotion")
        if self.faces:
            names.append("faces")
        if self.mobilenet:
            names.append("mobilenet")
        return names

    @property
    def needs_rgb(self) -> bool:
        return bool(self.models())


@dataclass
class Ingested:
    index: int
    image_id: str
    image: DecodedImage | None = None
    source_url: str | None = None
    error: ErrorInfo | None = None
    error_exc: ApiError | None = None
    timings: dict[str, float] = field(default_factory=dict)
    gate: dict[str, Any] = field(default_factory=dict)
    models: dict[str, Any] = field(default_factory=dict)  # name → result or Exception
    started: float = field(default_factory=time.perf_counter)

    def exception(self) -> ApiError | None:
        """Why the image could not be read, as a raisable error (None when it was read)."""
        if self.error_exc is not None:
            return self.error_exc
        return api_error(self.error) if self.error is not None else None


def error_info(exc: ApiError) -> ErrorInfo:
    return ErrorInfo(type=exc.error_type, message=exc.message, detail=exc.detail, status_code=exc.status_code)


def api_error(info: ErrorInfo) -> ApiError:
    """The inverse of error_info: an image's recorded error, raisable with its own status."""
    retry = info.detail.get("retry_after_s") if isinstance(info.detail, dict) else None
    exc = ApiError(info.message, detail=info.detail, headers={"Retry-After": str(retry)} if retry else None)
    exc.status_code = info.status_code or 500
    exc.error_type = info.type
    return exc


class Orchestrator:
    def __init__(self, settings: Settings, registry: ModelRegistry, pool: Executor, client: httpx.AsyncClient):
        self.settings = settings
        self.registry = registry
        self.pool = pool
        self.client = client
        self.decode_budget = MemoryBudget(settings.decode_memory_bytes, settings.decode_wait_s)

    async def in_pool(self, fn: Callable, *args) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    # -- 1. ingest ------------------------------------------------------------------
    async def load(self, src: ImageSource, index: int, *, gray: bool, min_dim: int | None) -> Ingested:
        item = Ingested(index=index, image_id=src.image_id if src.image_id is not None else str(index))
        try:
            t0 = time.perf_counter()
            data, item.source_url = await read_source(src, self.client, self.settings, self.in_pool)
            check_bytes(data, self.settings)  # the format's own limit (a plain image over MAX_IMAGE_MB: 413)
            t1 = time.perf_counter()
            item.timings["read_ms" if src.kind != "url" else "fetch_ms"] = (t1 - t0) * 1000
            max_pixels = self.settings.max_image_pixels
            # header only: 413/415 before any pixel
            plan = await self.in_pool(lambda: probe(data, max_pixels=max_pixels, min_dim=min_dim, gray=gray))
            async with self.decode_budget.reserve(plan.cost_bytes):
                t2 = time.perf_counter()
                item.image = await self.in_pool(
                    lambda: decode_image(data, max_pixels=max_pixels, min_dim=min_dim, gray=gray))
            item.timings["decode_ms"] = (time.perf_counter() - t2) * 1000
            if t2 - t1 > 0.001:
                item.timings["decode_wait_ms"] = (t2 - t1) * 1000
        except ApiError as exc:
            item.error = error_info(exc)
            detached(exc)  # in place (it returns `exc` itself, typed as a BaseException)
            item.error_exc = exc
            ERRORS.labels(exc.error_type).inc()
        except Exception as exc:  # noqa: BLE001 - one bad image never fails the batch
            log.exception("unexpected error reading image %s", item.image_id)
            item.error = ErrorInfo(type="internal_error", message=f"The image could not be read: {type(exc).__name__}.",
                                   detail=None, status_code=500)
            ERRORS.labels("internal_error").inc()
        return item

    async def load_all(self, sources: list[ImageSource], *, gray: bool, min_dim: int | None) -> list[Ingested]:
        """Read and decode every source, at most BATCH_CONCURRENCY at a time, in request order."""
        sem = asyncio.Semaphore(self.settings.batch_concurrency)

        async def one(i: int, src: ImageSource) -> Ingested:
            async with sem:
                return await self.load(src, i, gray=gray, min_dim=min_dim)

        return list(await asyncio.gather(*(one(i, s) for i, s in enumerate(sources))))

    # -- 2. gate -----------------------------------------------------------------------
    def gate_sync(self, image: DecodedImage) -> dict[str, Any]:
        s = self.settings
        out: dict[str, Any] = {}
        gray = image.gray_max(s.analysis_max_dim)
        t0 = time.perf_counter()
        # the JPEG grid is only visible at the file's own scale; its steps are not detail
        blocks = compression_svc.blockiness(gray) if gray.shape[:2] == image.pixels.shape[:2] else None
        mask = compression_svc.interior_mask(gray.shape, blocks) if blocks is not None and blocks.present else None
        var = blur_svc.laplacian_variance(gray, mask)
        t1 = time.perf_counter()
        out["blockiness"] = blocks.ratio if blocks is not None else None
        out["noise_sigma"], out["laplacian_noise_variance"] = blur_svc.noise_measures(gray, mask)
        stats = exp_svc.exposure_stats(gray)
        t2 = time.perf_counter()
        out["laplacian_variance"] = var
        out["analyzed_shape"] = gray.shape
        out["exposure"] = stats
        out["blur_ms"] = (t1 - t0) * 1000
        out["exposure_ms"] = (t2 - t1) * 1000
        return out

    # -- 3. models -----------------------------------------------------------------------
    async def run_model(self, name: str, items: list[Ingested],
                        inputs: list[Any] | None = None) -> None:
        """Run one model over `items` (images, or `inputs` when given), storing per-item results."""
        if not items:
            return
        t0 = time.perf_counter()
        try:
            if inputs is None:
                results = await self.registry.run(name, [it.image for it in items])
            else:
                results = await self.registry.predict(name, inputs)
        except ModelUnavailable as exc:
            detached(exc)
            for it in items:
                it.models[name] = exc
            return
        except Exception as exc:  # noqa: BLE001
            log.exception("model %s failed on a batch of %d", name, len(items))
            ERRORS.labels("analysis_failed").inc()
            if len(items) == 1:
                items[0].models[name] = detached(exc)
                return
            for k, it in enumerate(items):  # isolate the image that breaks it
                await self.run_model(name, [it], None if inputs is None else [inputs[k]])
            return
        share = (time.perf_counter() - t0) * 1000 / len(items)
        for it, res in zip(items, results):
            it.models[name] = res
            it.timings[f"{name}_ms"] = share

    async def run_models(self, items: list[Ingested], plan: Plan) -> None:
        """Every model of the plan at once, except that a model which `depends` on another (the LAION
        head on CLIP) runs after it, on its outputs, for the images where it succeeded. A dependency the
        plan does not run leaves the dependent model out too."""
        ok = [it for it in items if it.image is not None]
        names = plan.models()
        tasks: dict[str, asyncio.Task[None]] = {}

        async def run(name: str) -> None:
            try:
                deps = self.registry.contract(name).depends
            except Exception:  # noqa: BLE001 - its module does not import: run_model records that per image
                deps = ()
            if not deps:
                await self.run_model(name, ok)
                return
            [dep] = deps  # the contract allows one: its outputs are this model's inputs
            if dep not in tasks:
                return
            await tasks[dep]
            done = [it for it in ok if it.models.get(dep) is not None and not isinstance(it.models[dep], BaseException)]
            await self.run_model(name, done, [it.models[dep] for it in done])

        for name in names:
            tasks[name] = asyncio.ensure_future(run(name))
        await asyncio.gather(*tasks.values())

    # -- the whole thing -------------------------------------------------------------------
    async def analyze(self, sources: list[ImageSource], flags: RunFlags) -> list[S.ImageResult]:
        plan = Plan.from_flags(flags)
        items = await self.process(sources, plan)
        results = [assemble(it, plan, self.settings, self.registry) for it in items]
        for r in results:
            IMAGES_ANALYZED.labels("error" if r.error else "ok").inc()
        return results

    async def process(self, sources: list[ImageSource], plan: Plan) -> list[Ingested]:
        """Read, decode and run every analysis of `plan`; the raw per-image state, for callers that
        need more than the results (the photo-set clustering reads the decoded images too)."""
        items = await self.load_all(sources, gray=not plan.needs_rgb, min_dim=self.settings.analysis_max_dim)
        await self.analyse(items, plan)
        return items

    async def analyse(self, items: list[Ingested], plan: Plan) -> None:
        """Run the gate and the models of `plan` on items already read (those that failed are left alone)."""
        ok = [it for it in items if it.image is not None]
        if plan.gate and ok:
            t0 = time.perf_counter()
            images = [it.image for it in ok if it.image is not None]  # `ok`'s images, in its order
            gates = await self.in_pool(lambda: [self.gate_sync(image) for image in images])
            ANALYSIS_LATENCY.labels("gate").observe(time.perf_counter() - t0)
            for it, g in zip(ok, gates):
                it.gate = g
                it.timings["blur_ms"] = g["blur_ms"]
                it.timings["exposure_ms"] = g["exposure_ms"]
        if plan.models() and ok:
            await self.run_models(items, plan)
