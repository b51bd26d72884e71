"""The one model registry of a process.

Per model it holds the adapter, its state (not_loaded / loading / ready /
failed), device, load time, last error and a lock, so two requests never load
the same model twice. Models load lazily on first use, or at start-up when named
in PRELOAD_MODELS ("all" = every model). With MODEL_TTL_S > 0 a model unused for
that long is unloaded and loads again on next use; a model with calls in flight is
never unloaded (each call holds a lease: `in_flight` counts them, and every call
refreshes `last_used`). A failed load is retried at
most every FAILED_RETRY_S seconds, so dropping the files into MODEL_DIR later
is enough, and a missing model never makes requests hang or crash.

Inference runs off the event loop: thread-safe models on the shared bounded
pool, the others (DeepFace) each on a dedicated single-thread executor.

The public surface is small: `names`, `contract` (the adapter class and its
declarations, without loading), `info` / `status` (the state), `load`, `loaded`,
`lease` (blocking use with the model pinned), the async `run` (images), `predict`
(prepared inputs) and `call` (any function of the adapter), `preload`, `unload`,
`unload_idle`, `start_ttl_task`, `shutdown`. Everything else is the registry's own.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from app.core.config import Settings
from app.core.errors import ModelUnavailable
from app.core.memory import release_free_memory
from app.core.metrics import ANALYSIS_LATENCY, MODEL_LOAD_SECONDS, MODEL_LOADED
from app.models.base import ModelAdapter, ModelNotFound, State
from app.models.torch_runtime import resolve_device

log = logging.getLogger("loupe.models")

#: registry name → "module:Class"; imported only when the model is first needed
CATALOG: dict[str, str] = {
    "brisque": "app.models.brisque:BrisqueAdapter",
    "niqe": "app.models.niqe:NiqeAdapter",
    "nima_technical": "app.models.nima:NimaTechnicalAdapter",
    "nima_aesthetic": "app.models.nima:NimaAestheticAdapter",
    "clip": "app.models.clip:ClipAdapter",
    "laion_aesthetic": "app.models.laion:LaionAestheticAdapter",
    "faces": "app.models.faces:YunetAdapter",
    "emotion": "app.models.emotion:EmotionAdapter",
    "mobilenet": "app.models.mobilenet:MobileNetEmbedAdapter",
    "tags": "app.models.tags:TagsAdapter",
    "person": "app.models.person:PersonAdapter",
    "dinov2": "app.models.dinov2:Dinov2Adapter",
    "caption": "app.models.caption:CaptionAdapter",
}

FAILED_RETRY_S = 30.0


def adapter_class(name: str, catalog: dict[str, str] | None = None) -> type[ModelAdapter]:
    """The adapter class of a catalog name (imports its module; loads nothing)."""
    module_name, _, cls_name = (catalog or CATALOG)[name].partition(":")
    return getattr(importlib.import_module(module_name), cls_name)


@dataclass(frozen=True)
class ModelInfo:
    """A snapshot of one model: its lifecycle and what its adapter declares (`ModelAdapter`)."""

    name: str
    state: State
    device: str | None
    load_time_s: float | None
    last_error: str | None
    preload: bool
    loads: int
    in_flight: int
    last_used: float
    title: str
    path: str | None
    files_present: bool
    source: str | None
    score_range: tuple[float | None, float | None] | None
    higher_is_better: bool | None
    depends: tuple[str, ...]
    max_batch: int | None
    thread_safe: bool | None
    precision: dict[str, Any] | None = None  # quantize.Precision.public() of a loaded ONNX model

    @property
    def usable(self) -> bool:
        """Ready, or its files are there and it has not failed: a call would (load and) run it."""
        return self.state == State.READY or (self.files_present and self.state != State.FAILED)

    def public(self) -> dict[str, Any]:
        """The fields /health shows (app.schemas.system.ModelStatus)."""
        return {"name": self.name, "title": self.title, "state": self.state.value, "device": self.device,
                "load_time_s": self.load_time_s, "last_error": self.last_error, "preload": self.preload,
                "path": self.path, "files_present": self.files_present, "source": self.source,
                "score_range": self.score_range, "higher_is_better": self.higher_is_better,
                "depends": list(self.depends), "max_batch": self.max_batch, "thread_safe": self.thread_safe,
                "precision": self.precision}


@dataclass
class _Entry:
    name: str
    adapter: ModelAdapter | None = None
    state: State = State.NOT_LOADED
    device: str | None = None
    load_time_s: float | None = None
    last_error: str | None = None
    failed_at: float = 0.0
    last_used: float = 0.0
    loads: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)  # held while loading / unloading
    use_lock: threading.Lock = field(default_factory=threading.Lock)  # guards in_flight, adapter hand-out
    in_flight: int = 0
    executor: Executor | None = None


class ModelRegistry:
    def __init__(self, settings: Settings, pool: Executor, catalog: dict[str, str] | None = None):
        self.settings = settings
        self.pool = pool
        self.catalog = dict(catalog if catalog is not None else CATALOG)
        self._entries = {name: _Entry(name) for name in self.catalog}
        self._device: str | None = None
        self._ttl_task: asyncio.Task | None = None

    @property
    def device(self) -> str:
        """The device torch models run on (DEVICE resolved), at the first load of a model on torch: resolving
        it imports torch, which a service whose models all run on ONNX Runtime / OpenVINO never needs."""
        if self._device is None:
            self._device = resolve_device(self.settings.device)
        return self._device

    def device_in_use(self) -> str:
        """What /health reports: the torch device once a model on torch needed it, else the CPU (the ONNX
        runtimes' device) without importing torch to find out."""
        return self._device or ("cpu" if self.settings.inference_runtime != "torch" else self.device)

    # -- introspection -----------------------------------------------------------
    def names(self) -> list[str]:
        return list(self._entries)

    def _entry(self, name: str) -> _Entry:
        if name not in self._entries:
            raise ModelUnavailable(f"Unknown model {name!r}.", detail={"model": name})
        return self._entries[name]

    def contract(self, name: str) -> type[ModelAdapter]:
        """The adapter class, with its declarations (files, output, depends, …); loads nothing."""
        self._entry(name)
        return adapter_class(name, self.catalog)

    def info(self, name: str) -> ModelInfo:
        e = self._entry(name)
        title, path, present, source, error = name, None, False, None, e.last_error
        cls: type[ModelAdapter] | None = None
        try:
            cls = self.contract(name)
            where = (e.adapter or cls(self.settings)).resolve_path()
            title, path, present, source = cls.title, str(where), where.exists(), cls.source
        except Exception as exc:  # noqa: BLE001 - an import error is a state, not a crash
            error = error or f"{type(exc).__name__}: {exc}"
        out = cls.output if cls is not None else None
        return ModelInfo(
            name=name, state=e.state, device=e.device,
            load_time_s=round(e.load_time_s, 3) if e.load_time_s is not None else None,
            last_error=error, preload=name in self.preload_names(), loads=e.loads, in_flight=e.in_flight,
            last_used=e.last_used, title=title, path=path, files_present=present, source=source,
            score_range=out.range if out is not None else None,
            higher_is_better=out.higher_is_better if out is not None else None,
            depends=cls.depends if cls is not None else (), max_batch=cls.max_batch if cls is not None else None,
            thread_safe=cls.thread_safe if cls is not None else None,
            precision=e.adapter.precision.public() if e.adapter is not None and e.adapter.precision else None)

    def status(self) -> dict[str, dict[str, Any]]:
        """Every model's public info, for /health and /v1/operations."""
        return {name: self.info(name).public() for name in self._entries}

    def loaded(self, name: str) -> ModelAdapter | None:
        """The adapter when the model is ready, else None (never loads)."""
        e = self._entry(name)
        return e.adapter if e.state == State.READY else None

    def preload_names(self) -> list[str]:
        wanted = self.settings.preload_list
        if any(w.lower() == "all" for w in wanted):
            return self.names()
        return [w for w in wanted if w in self._entries]

    # -- lifecycle ---------------------------------------------------------------
    def load(self, name: str) -> ModelAdapter:
        """Blocking: load the model if needed (one loader at a time per model)."""
        e = self._entry(name)
        if e.state == State.READY and e.adapter is not None:
            e.last_used = time.monotonic()
            return e.adapter
        with e.lock:
            if e.state == State.READY and e.adapter is not None:
                e.last_used = time.monotonic()
                return e.adapter
            if e.state == State.FAILED and time.monotonic() - e.failed_at < FAILED_RETRY_S:
                raise ModelUnavailable(
                    f"The model {name!r} is not available: {e.last_error}",
                    detail={"model": name, "state": e.state.value},
                )
            e.state = State.LOADING
            t0 = time.perf_counter()
            try:
                cls = self.contract(name)
                adapter = cls(self.settings)
                path = adapter.resolve_path()
                # a torch model whose files are absent fails its load: resolving the device for it would import
                # torch (400 MiB) into a service whose models all run on ONNX Runtime / OpenVINO, for nothing
                needs_device = cls.on_torch(self.settings) and (
                    self.settings.inference_runtime == "torch" or self.settings.allow_model_downloads or path.exists())
                device = self.device if needs_device else "cpu"
                adapter.load(path, device)
                adapter.device = device
            except Exception as exc:  # noqa: BLE001
                e.state = State.FAILED
                e.failed_at = time.monotonic()
                e.last_error = f"{type(exc).__name__}: {exc}"
                e.adapter = None
                MODEL_LOADED.labels(name).set(0)
                if isinstance(exc, ModelNotFound):
                    log.warning("model %s is missing: %s", name, exc)
                else:
                    log.exception("model %s failed to load", name)
                raise ModelUnavailable(
                    f"The model {name!r} is not available: {e.last_error}",
                    detail={"model": name, "state": "failed"},
                ) from exc
            release_free_memory()  # the load's parse buffers, freed but resident until given back
            e.adapter = adapter
            e.device = device
            e.load_time_s = time.perf_counter() - t0
            e.last_error = None
            e.state = State.READY
            e.loads += 1
            e.last_used = time.monotonic()
            if not cls.thread_safe and e.executor is None:
                e.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"loupe-{name}")
            MODEL_LOADED.labels(name).set(1)
            MODEL_LOAD_SECONDS.labels(name).set(e.load_time_s)
            log.info("model %s ready on %s in %.2fs", name, device, e.load_time_s)
            return adapter

    def unload(self, name: str, idle_before: float | None = None) -> bool:
        """Drop the model's weights unless a call is using it (or, with `idle_before`, unless it was
        used since then). True when it was unloaded."""
        e = self._entry(name)
        with e.lock:
            with e.use_lock:
                if e.in_flight or (idle_before is not None and e.last_used >= idle_before):
                    return False
                adapter, e.adapter = e.adapter, None
                e.state = State.NOT_LOADED
            MODEL_LOADED.labels(name).set(0)
            if adapter is not None:
                adapter.unload()
            return True

    def unload_idle(self, now: float | None = None) -> list[str]:
        ttl = self.settings.model_ttl_s
        if ttl <= 0:
            return []
        now = time.monotonic() if now is None else now
        dropped = []
        for name, e in self._entries.items():
            if e.state == State.READY and not e.in_flight and now - e.last_used > ttl \
                    and self.unload(name, idle_before=now - ttl):
                dropped.append(name)
                log.info("model %s unloaded after %.0fs idle", name, ttl)
        return dropped

    # -- leases: a model in use is never unloaded -------------------------------
    def _try_acquire(self, name: str) -> ModelAdapter | None:
        """The ready adapter with one more call in flight, or None when it is not loaded (non-blocking)."""
        e = self._entry(name)
        with e.use_lock:
            if e.state == State.READY and e.adapter is not None:
                e.in_flight += 1
                e.last_used = time.monotonic()
                return e.adapter
        return None

    def _acquire(self, name: str) -> ModelAdapter:
        """Blocking: load if needed, then take a lease (raises ModelUnavailable)."""
        self._entry(name)
        while True:
            adapter = self._try_acquire(name)
            if adapter is not None:
                return adapter
            self.load(name)  # an unload may slip in between: then load again

    def _release(self, name: str) -> None:
        e = self._entry(name)
        with e.use_lock:
            e.in_flight -= 1
            e.last_used = time.monotonic()

    @contextmanager
    def lease(self, name: str) -> Iterator[ModelAdapter]:
        """Blocking: the loaded adapter, pinned (never unloaded) until the block ends."""
        adapter = self._acquire(name)
        try:
            yield adapter
        finally:
            self._release(name)

    def preload(self) -> dict[str, str | None]:
        """Load every PRELOAD_MODELS entry; failures are recorded, never raised."""
        out: dict[str, str | None] = {}
        for name in self.preload_names():
            try:
                self.load(name)
                out[name] = None
            except ModelUnavailable as exc:
                out[name] = exc.message
        return out

    # -- inference ---------------------------------------------------------------
    def _predict_batch(self, name: str, adapter: ModelAdapter, inputs: Sequence[Any]) -> list[Any]:
        """Blocking: prepared inputs → results, in chunks of the adapter's max batch."""
        results: list[Any] = []
        step = max(1, adapter.max_batch)
        t0 = time.perf_counter()
        for i in range(0, len(inputs), step):
            results.extend(adapter.predict(list(inputs[i : i + step])))
        ANALYSIS_LATENCY.labels(name).observe(time.perf_counter() - t0)
        if len(results) != len(inputs):
            raise RuntimeError(f"model {name} returned {len(results)} results for {len(inputs)} inputs")
        return results

    def _run_batch(self, name: str, adapter: ModelAdapter, images: Sequence[Any]) -> list[Any]:
        """Blocking: prepare each image (cached on the image) and run one batched predict."""
        prepared = [img.cached(("prepare", name), lambda img=img: adapter.prepare(img)) if hasattr(img, "cached")
                    else adapter.prepare(img) for img in images]
        return self._predict_batch(name, adapter, prepared)

    def _executor_for(self, name: str) -> Executor:
        e = self._entry(name)
        return e.executor or self.pool

    async def call(self, name: str, fn, *args) -> Any:
        """Run `fn(adapter, *args)` on the model's executor, loading it first if needed. The call holds
        a lease from before it is queued until it returns, so an idle unload never pulls the model
        from under it."""
        self._entry(name)
        loop = asyncio.get_running_loop()
        adapter = self._try_acquire(name) or await loop.run_in_executor(self.pool, self._acquire, name)

        def run() -> Any:
            try:
                return fn(adapter, *args)
            finally:
                self._release(name)

        job = self._executor_for(name).submit(run)
        try:
            return await asyncio.wrap_future(job)
        except asyncio.CancelledError:
            if job.cancel():  # never started: its lease is still ours to give back
                self._release(name)
            raise

    async def run(self, name: str, images: Sequence[Any]) -> list[Any]:
        """Async: prepare and run one batch of images off the event loop."""
        return await self.call(name, lambda adapter, imgs: self._run_batch(name, adapter, imgs), images)

    async def predict(self, name: str, inputs: Sequence[Any]) -> list[Any]:
        """Async: run one batch of already prepared inputs off the event loop."""
        return await self.call(name, lambda adapter, xs: self._predict_batch(name, adapter, xs), inputs)

    def start_ttl_task(self) -> None:
        if self.settings.model_ttl_s <= 0:
            return

        async def sweep() -> None:
            interval = max(1.0, min(60.0, self.settings.model_ttl_s / 4))
            while True:
                await asyncio.sleep(interval)
                await asyncio.get_running_loop().run_in_executor(self.pool, self.unload_idle)

        self._ttl_task = asyncio.get_running_loop().create_task(sweep())

    def shutdown(self) -> None:
        if self._ttl_task:
            self._ttl_task.cancel()
        for e in self._entries.values():
            if e.executor is not None:
                e.executor.shutdown(wait=False, cancel_futures=True)
