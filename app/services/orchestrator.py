"""Which analyses run, per image and per batch.

1. Ingest: every image's bytes are read (URL / base64 / upload) and decoded once,
   at most BATCH_CONCURRENCY at a time; decoding runs on the shared pool.
2. Gate: blur and exposure per image, on the shared pool (cheap, no model).
3. Models: each model needed runs ONCE over all images that need it (a real
   batched forward pass, chunked by the adapter's max batch), off the event loop.
   Independent models run side by side; CLIP runs before the LAION head that
   reads its embeddings.
4. Assemble: per image, per analysis: a result, or a clear `unavailable` /
   `error` entry. A bad image never fails the batch; a failing model never
   fails the other analyses (a failing batched call is retried per image so
   one poison image does not take the others with it).
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

import httpx

from app.core.config import Settings
from app.core.errors import ApiError, ModelUnavailable, detached
from app.core.metrics import ANALYSIS_LATENCY, ERRORS, IMAGES_ANALYZED
from app.imaging.budget import MemoryBudget
from app.imaging.decode import DecodedImage, decode_image, probe
from app.imaging.sources import ImageSource, read_source
from app.models.registry import ModelRegistry
from app.schemas import analysis as S
from app.schemas.common import ErrorInfo, RunFlags
from app.services import blur as blur_svc
from app.services import compression as compression_svc
from app.services import exposure as exp_svc
from app.services import score as score_svc

log = logging.getLogger("loupe.orchestrator")

AESTHETIC_LABELS = (("poor", 0.0, 4.0), ("average", 4.0, 5.5), ("good", 5.5, 6.5), ("excellent", 6.5, 11.0))


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
    def from_flags(cls, flags: RunFlags) -> "Plan":
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
            t1 = time.perf_counter()
            item.timings["read_ms" if src.kind != "url" else "fetch_ms"] = (t1 - t0) * 1000
            limits = dict(max_pixels=self.settings.max_image_pixels, min_dim=min_dim, gray=gray)
            plan = await self.in_pool(lambda: probe(data, **limits))  # header only: 413/415 before any pixel
            async with self.decode_budget.reserve(plan.cost_bytes):
                t2 = time.perf_counter()
                item.image = await self.in_pool(lambda: decode_image(data, **limits))
            item.timings["decode_ms"] = (time.perf_counter() - t2) * 1000
            if t2 - t1 > 0.001:
                item.timings["decode_wait_ms"] = (t2 - t1) * 1000
        except ApiError as exc:
            item.error, item.error_exc = error_info(exc), detached(exc)
            ERRORS.labels(exc.error_type).inc()
        except Exception as exc:  # noqa: BLE001 - one bad image never fails the batch
            log.exception("unexpected error reading image %s", item.image_id)
            item.error = ErrorInfo(type="internal_error", message=f"The image could not be read: {type(exc).__name__}.",
                                   status_code=500)
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
        ok = [it for it in items if it.image is not None]
        names = plan.models()

        async def clip_then_laion() -> None:
            await self.run_model("clip", ok)
            if "laion_aesthetic" in names:
                with_emb = [it for it in ok if not isinstance(it.models.get("clip"), Exception)]
                await self.run_model("laion_aesthetic", with_emb, [it.models["clip"] for it in with_emb])

        jobs: list[Awaitable[None]] = []
        for name in names:
            if name == "clip":
                jobs.append(clip_then_laion())
            elif name != "laion_aesthetic":
                jobs.append(self.run_model(name, ok))
        await asyncio.gather(*jobs)

    # -- the whole thing -------------------------------------------------------------------
    async def analyze(self, sources: list[ImageSource], flags: RunFlags) -> list[S.ImageResult]:
        plan = Plan.from_flags(flags)
        items = await self.process(sources, plan)
        results = [self.assemble(it, plan) for it in items]
        for r in results:
            IMAGES_ANALYZED.labels("error" if r.error else "ok").inc()
        return results

    async def process(self, sources: list[ImageSource], plan: Plan) -> list[Ingested]:
        """Read, decode and run every analysis of `plan`; the raw per-image state, for callers that
        need more than the results (the photo-set clustering reads the decoded images too)."""
        items = await self.load_all(sources, gray=not plan.needs_rgb, min_dim=self.settings.analysis_max_dim)
        ok = [it for it in items if it.image is not None]
        if plan.gate and ok:
            t0 = time.perf_counter()
            gates = await self.in_pool(lambda: [self.gate_sync(it.image) for it in ok])
            ANALYSIS_LATENCY.labels("gate").observe(time.perf_counter() - t0)
            for it, g in zip(ok, gates):
                it.gate = g
                it.timings["blur_ms"] = g["blur_ms"]
                it.timings["exposure_ms"] = g["exposure_ms"]
        if plan.models() and ok:
            await self.run_models(items, plan)
        return items

    # -- 4. assemble ---------------------------------------------------------------------------
    def assemble(self, it: Ingested, plan: Plan) -> S.ImageResult:
        res = S.ImageResult(image_id=it.image_id, source_url=it.source_url, error=it.error)
        img = it.image
        if img is not None:
            res.width_px, res.height_px, res.format, res.sha256 = img.width, img.height, img.format, img.sha256
            res.jpeg_quality = img.jpeg_quality
            if plan.blur:
                res.blur = self.blur_result(it)
            if plan.exposure:
                res.exposure = self.exposure_result(it)
            if plan.quality:
                res.quality = self.quality_result(it)
            if plan.aesthetic:
                res.aesthetic = self.aesthetic_result(it, plan)
            if plan.embedding:
                res.embedding = self.embedding_result(it)
            if plan.emotion:
                res.emotion = self.emotion_result(it)
            if plan.faces:
                res.faces = self.faces_result(it)
        res.timings_ms = {k: round(v, 3) for k, v in it.timings.items()}
        res.processing_time_ms = round((time.perf_counter() - it.started) * 1000, 3)
        return res

    @staticmethod
    def _failure(exc: BaseException) -> tuple[str, S.AnalysisError]:
        if isinstance(exc, ModelUnavailable):
            return "unavailable", S.AnalysisError(type="model_unavailable", message=exc.message)
        if isinstance(exc, ApiError):
            return "error", S.AnalysisError(type=exc.error_type, message=exc.message)
        return "error", S.AnalysisError(type="analysis_failed", message=f"{type(exc).__name__}: {str(exc)[:300]}")

    def blur_thresholds(self) -> S.BlurThresholds:
        return S.BlurThresholds(blur_threshold=self.settings.blur_threshold, analysis_max_dim=self.settings.analysis_max_dim)

    def exposure_thresholds(self) -> S.ExposureThresholds:
        s = self.settings
        return S.ExposureThresholds(bright_min=s.bright_min, bright_max=s.bright_max, shadow_clip_max=s.shadow_clip_max,
                                    highlight_clip_max=s.highlight_clip_max, shadow_level=exp_svc.SHADOW_LEVEL,
                                    highlight_level=exp_svc.HIGHLIGHT_LEVEL)

    def blur_result(self, it: Ingested) -> S.BlurResult:
        var = it.gate["laplacian_variance"]
        h, w = it.gate["analyzed_shape"][:2]
        t = self.settings.blur_threshold
        sigma = it.gate["noise_sigma"]
        return S.BlurResult(status="ok", laplacian_variance=round(var, 4),
                            sharpness_score=round(blur_svc.sharpness_score(var, t), 4),
                            noise_sigma=round(sigma, 4),
                            laplacian_noise_variance=round(it.gate["laplacian_noise_variance"], 4),
                            blockiness=round(it.gate["blockiness"], 4) if it.gate["blockiness"] is not None else None,
                            detail_variance=round(self.detail_variance(it), 4),
                            is_blurry=blur_svc.is_blurry(var, t), analyzed_width_px=w, analyzed_height_px=h,
                            thresholds=self.blur_thresholds())

    @staticmethod
    def detail_variance(it: Ingested) -> float:
        return blur_svc.noise_compensated_variance(it.gate["laplacian_variance"], it.gate["laplacian_noise_variance"])

    def exposure_result(self, it: Ingested) -> S.ExposureResult:
        s = self.settings
        st: exp_svc.ExposureStats = it.gate["exposure"]
        under = exp_svc.is_underexposed(st, s.bright_min, s.shadow_clip_max)
        over = exp_svc.is_overexposed(st, s.bright_max, s.highlight_clip_max)
        verdict = "mixed" if under and over else "underexposed" if under else "overexposed" if over else "ok"
        return S.ExposureResult(
            status="ok", mean_brightness=round(st.mean_brightness, 3), contrast=round(st.contrast, 3),
            shadow_clip_fraction=round(st.shadow_clip_fraction, 5), highlight_clip_fraction=round(st.highlight_clip_fraction, 5),
            p05_brightness=st.p05, p95_brightness=st.p95, exposure_score=round(exp_svc.exposure_score_for(st, self.settings), 4),
            is_underexposed=under, is_overexposed=over, verdict=verdict, thresholds=self.exposure_thresholds())

    def quality_components(self, it: Ingested) -> tuple[list[score_svc.Component], dict[str, str], dict[str, float]]:
        """The mapped components, the missing ones with the reason, and the raw model values."""
        comps: list[score_svc.Component] = []
        missing: dict[str, str] = {}
        raw: dict[str, float] = {}
        w = score_svc.WEIGHTS
        detail, threshold = self.detail_variance(it), self.settings.blur_threshold
        comps.append(score_svc.sharpness_term(detail, threshold))
        sigma, clean = it.gate["noise_sigma"], score_svc.noise_allowance(detail, threshold)
        comps.append(score_svc.noise_term(sigma, clean))
        blocks = it.gate["blockiness"]
        if blocks is not None:
            comps.append(score_svc.Component("blocking", blocks, (0.0, None), False,
                                             compression_svc.blocking_to_unit(blocks), w["blocking"]))
        else:
            missing["blocking"] = "not measurable: the analysis image is resampled, so the JPEG grid is gone"
        comps.append(score_svc.exposure_term(exp_svc.exposure_score_for(it.gate["exposure"], self.settings)))
        for name in ("brisque", "niqe", "nima_technical"):
            value = it.models.get(name)
            if name not in it.models:
                missing[name] = "not run"
            elif value is None:
                missing[name] = "undefined for this image (too small, or flat with no texture to measure)"
            elif isinstance(value, BaseException):
                missing[name] = self._failure(value)[1].message
            else:
                raw[name] = float(value)
        if "brisque" in raw:
            comps.append(score_svc.brisque_term(raw["brisque"], sigma, clean))
        if "nima_technical" in raw:
            lo, hi = self.nima_technical_range()
            comps.append(score_svc.Component("nima_technical", raw["nima_technical"], (lo, hi), True,
                                             score_svc.range_to_unit(raw["nima_technical"], lo, hi), w["nima_technical"]))
        missing.pop("niqe", None) if "niqe" in raw else None
        return comps, missing, raw

    def nima_technical_range(self) -> tuple[float, float]:
        try:
            cls = self.registry._adapter_cls("nima_technical")
            lo, hi = cls.score_range
            return float(lo), float(hi)
        except Exception:  # noqa: BLE001
            return 0.0, 1.0

    def quality_result(self, it: Ingested) -> S.QualityResult:
        thresholds = S.QualityThresholds(quality_min=self.settings.quality_min, bands=score_svc.bands_dict())
        comps, missing, raw = self.quality_components(it)
        q = score_svc.combine(comps)
        if q is None:
            return S.QualityResult(status="unavailable", thresholds=thresholds, missing=missing,
                                   error=S.AnalysisError(type="analysis_failed", message="No quality component is available."))
        return S.QualityResult(
            status="ok", score=round(q, 4), band=score_svc.band(q), is_ok=q >= self.settings.quality_min,
            overall_quality=score_svc.overall_quality(q),
            brisque=round(raw["brisque"], 4) if "brisque" in raw else None,
            niqe=round(raw["niqe"], 4) if "niqe" in raw else None,
            nima_technical=round(raw["nima_technical"], 4) if "nima_technical" in raw else None,
            components=[S.QualityComponent(name=c.name, raw=round(c.raw, 4), raw_range=c.raw_range,
                                           higher_is_better=c.higher_is_better, score=round(c.score, 4), weight=c.weight)
                        for c in comps],
            missing=missing, thresholds=thresholds)

    def aesthetic_result(self, it: Ingested, plan: Plan) -> S.AestheticResult:
        thresholds = {f"{name}_min": lo for name, lo, _ in AESTHETIC_LABELS}
        nima = it.models.get("nima_aesthetic")
        laion = it.models.get("laion_aesthetic")
        laion_score = float(laion) if laion is not None and not isinstance(laion, BaseException) else None
        if isinstance(nima, BaseException) or nima is None:
            status, err = self._failure(nima) if nima is not None else ("unavailable", S.AnalysisError(
                type="model_unavailable", message="NIMA aesthetic did not run."))
            if laion_score is not None:
                return S.AestheticResult(status="ok", laion_score=round(laion_score, 4), error=err, thresholds=thresholds)
            return S.AestheticResult(status=status, error=err, thresholds=thresholds)
        mean = float(nima["mean"])
        label = next(name for name, lo, hi in AESTHETIC_LABELS if lo <= mean < hi) if mean < 11 else "excellent"
        return S.AestheticResult(status="ok", nima_score=round(mean, 4), nima_std=round(float(nima["std"]), 4),
                                 nima_distribution=[round(float(p), 5) for p in nima["distribution"]], label=label,
                                 laion_score=round(laion_score, 4) if laion_score is not None else None,
                                 thresholds=thresholds)

    def embedding_result(self, it: Ingested) -> S.EmbeddingResult:
        value = it.models.get("clip")
        if value is None or isinstance(value, BaseException):
            status, err = self._failure(value) if value is not None else ("unavailable", None)
            return S.EmbeddingResult(status=status, error=err)
        adapter = self.registry.entries["clip"].adapter
        return S.EmbeddingResult(status="ok", model=getattr(adapter, "model_name", None), dim=int(len(value)),
                                 vector=[round(float(x), 6) for x in value])

    @staticmethod
    def _box(b: Any) -> S.Box:
        if isinstance(b, dict):
            return S.Box(x=int(round(b["x"])), y=int(round(b["y"])), w=int(round(b["w"])), h=int(round(b["h"])))
        x, y, w, h = b
        return S.Box(x=int(round(x)), y=int(round(y)), w=int(round(w)), h=int(round(h)))

    @staticmethod
    def _point(p: Any) -> tuple[float, float]:
        return (float(p["x"]), float(p["y"])) if isinstance(p, dict) else (float(p[0]), float(p[1]))

    def emotion_result(self, it: Ingested) -> S.EmotionResult:
        value = it.models.get("emotion")
        detector = self.settings.deepface_detector if self.settings.emotion_model == "deepface" else "yunet"
        if value is None or isinstance(value, BaseException):
            status, err = self._failure(value) if value is not None else ("unavailable", None)
            return S.EmotionResult(status=status, error=err, detector=detector)
        faces = [S.EmotionFace(box=self._box(f["box"]), confidence=float(f.get("confidence", 0.0)),
                               dominant_emotion=f["dominant_emotion"],
                               emotions={k: round(float(v), 5) for k, v in f["emotions"].items()}) for f in value]
        return S.EmotionResult(status="ok", faces=faces, count=len(faces), detector=detector)

    def faces_result(self, it: Ingested) -> S.FacesResult:
        value = it.models.get("faces")
        if value is None or isinstance(value, BaseException):
            status, err = self._failure(value) if value is not None else ("unavailable", None)
            return S.FacesResult(status=status, error=err, detector="yunet")
        faces = [S.Face(box=self._box(f["box"]), confidence=float(f["confidence"]),
                        landmarks={k: self._point(p) for k, p in (f.get("landmarks") or {}).items()} or None)
                 for f in value]
        adapter = self.registry.entries["faces"].adapter
        thr = {"score_threshold": float(getattr(adapter, "score_threshold", 0.0))} if adapter else {}
        return S.FacesResult(status="ok", faces=faces, count=len(faces), detector="yunet", thresholds=thr)

