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
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import threading
import time
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Sequence

from app.core.config import Settings
from app.core.errors import ModelUnavailable
from app.core.metrics import ANALYSIS_LATENCY, MODEL_LOAD_SECONDS, MODEL_LOADED
from app.models.base import ModelAdapter, ModelNotFound

log = logging.getLogger("loupe.models")

#: registry name → "module:Class"; imported only when the model is first needed
CATALOG: dict[str, str] = {
    "brisque": "app.models.brisque:BrisqueAdapter",
    "niqe": "app.models.niqe:NiqeAdapter",
    "nima_technical": "app.models.nima:NimaTechnicalAdapter",
    "nima_aesthetic": "app.models.nima:NimaAestheticAdapter",
    "clip": "app.models.clip:ClipAdapter",
    "laion_aesthetic": "app.models.clip:LaionAestheticAdapter",
    "faces": "app.models.faces:YunetAdapter",
    "emotion": "app.models.emotion:EmotionAdapter",
    "mobilenet": "app.models.mobilenet:MobileNetEmbedAdapter",
}

FAILED_RETRY_S = 30.0

STATES = ("not_loaded", "loading", "ready", "failed")


def adapter_class(name: str, catalog: dict[str, str] | None = None) -> type[ModelAdapter]:
    module_name, _, cls_name = (catalog or CATALOG)[name].partition(":")
    return getattr(importlib.import_module(module_name), cls_name)


def resolve_device(requested: str) -> str:
    if requested == "cpu":
        return "cpu"
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except Exception:  # noqa: BLE001
        has_cuda = False
    if requested == "cuda" and not has_cuda:
        log.warning("DEVICE=cuda but no CUDA device is available; using cpu")
    return "cuda" if has_cuda else "cpu"


@dataclass
class ModelEntry:
    name: str
    adapter: ModelAdapter | None = None
    state: str = "not_loaded"
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
        self.entries = {name: ModelEntry(name) for name in self.catalog}
        self.device = resolve_device(settings.device)
        self._ttl_task: asyncio.Task | None = None

    # -- introspection -----------------------------------------------------------
    def names(self) -> list[str]:
        return list(self.entries)

    def _adapter_cls(self, name: str) -> type[ModelAdapter]:
        return adapter_class(name, self.catalog)

    def describe(self, name: str) -> dict[str, Any]:
        e = self.entries[name]
        info: dict[str, Any] = {
            "name": name,
            "state": e.state,
            "device": e.device,
            "load_time_s": round(e.load_time_s, 3) if e.load_time_s is not None else None,
            "last_error": e.last_error,
            "preload": name in self.preload_names(),
        }
        try:
            cls = self._adapter_cls(name)
            adapter = e.adapter or cls(self.settings)
            path = adapter.resolve_path()
            info.update(title=cls.title, path=str(path), files_present=path.exists(), source=cls.source)
        except Exception as exc:  # noqa: BLE001 - an import error is a state, not a crash
            info.update(title=name, path=None, files_present=False, source=None,
                        last_error=info["last_error"] or f"{type(exc).__name__}: {exc}")
        return info

    def status(self) -> dict[str, dict[str, Any]]:
        return {name: self.describe(name) for name in self.entries}

    def preload_names(self) -> list[str]:
        wanted = self.settings.preload_list
        if any(w.lower() == "all" for w in wanted):
            return self.names()
        return [w for w in wanted if w in self.entries]

    # -- lifecycle ---------------------------------------------------------------
    def ensure_loaded(self, name: str) -> ModelAdapter:
        """Blocking: load the model if needed (one loader at a time per model)."""
        if name not in self.entries:
            raise ModelUnavailable(f"Unknown model {name!r}.")
        e = self.entries[name]
        if e.state == "ready" and e.adapter is not None:
            e.last_used = time.monotonic()
            return e.adapter
        with e.lock:
            if e.state == "ready" and e.adapter is not None:
                e.last_used = time.monotonic()
                return e.adapter
            if e.state == "failed" and time.monotonic() - e.failed_at < FAILED_RETRY_S:
                raise ModelUnavailable(
                    f"The model {name!r} is not available: {e.last_error}",
                    detail={"model": name, "state": e.state},
                )
            e.state = "loading"
            t0 = time.perf_counter()
            try:
                cls = self._adapter_cls(name)
                adapter = cls(self.settings)
                device = self.device if cls.uses_torch else "cpu"
                path = adapter.resolve_path()
                adapter.load(path, device)
                adapter.device = device
            except Exception as exc:  # noqa: BLE001
                e.state = "failed"
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
            e.adapter = adapter
            e.device = device
            e.load_time_s = time.perf_counter() - t0
            e.last_error = None
            e.state = "ready"
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
        e = self.entries[name]
        with e.lock:
            with e.use_lock:
                if e.in_flight or (idle_before is not None and e.last_used >= idle_before):
                    return False
                adapter, e.adapter = e.adapter, None
                e.state = "not_loaded"
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
        for name, e in self.entries.items():
            if e.state == "ready" and not e.in_flight and now - e.last_used > ttl \
                    and self.unload(name, idle_before=now - ttl):
                dropped.append(name)
                log.info("model %s unloaded after %.0fs idle", name, ttl)
        return dropped

    # -- leases: a model in use is never unloaded -------------------------------
    def try_acquire(self, name: str) -> ModelAdapter | None:
        """The ready adapter with one more call in flight, or None when it is not loaded (non-blocking)."""
        e = self.entries[name]
        with e.use_lock:
            if e.state == "ready" and e.adapter is not None:
                e.in_flight += 1
                e.last_used = time.monotonic()
                return e.adapter
        return None

    def acquire(self, name: str) -> ModelAdapter:
        """Blocking: load if needed, then take a lease (raises ModelUnavailable)."""
        if name not in self.entries:
            raise ModelUnavailable(f"Unknown model {name!r}.")
        while True:
            adapter = self.try_acquire(name)
            if adapter is not None:
                return adapter
            self.ensure_loaded(name)  # an unload may slip in between: then load again

    def release(self, name: str) -> None:
        e = self.entries[name]
        with e.use_lock:
            e.in_flight -= 1
            e.last_used = time.monotonic()

    def preload(self) -> dict[str, str | None]:
        """Load every PRELOAD_MODELS entry; failures are recorded, never raised."""
        out: dict[str, str | None] = {}
        for name in self.preload_names():
            try:
                self.ensure_loaded(name)
                out[name] = None
            except ModelUnavailable as exc:
                out[name] = exc.message
        return out

    # -- inference ---------------------------------------------------------------
    def predict_with(self, name: str, adapter: ModelAdapter, inputs: Sequence[Any]) -> list[Any]:
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

    def run_with(self, name: str, adapter: ModelAdapter, images: Sequence[Any]) -> list[Any]:
        """Blocking: prepare each image (cached on the image) and run one batched predict."""
        prepared = [
            img.cached(("prepare", name), lambda img=img: adapter.prepare(img)) if hasattr(img, "cached") else adapter.prepare(img)
            for img in images
        ]
        return self.predict_with(name, adapter, prepared)

    def executor_for(self, name: str) -> Executor:
        e = self.entries[name]
        return e.executor or self.pool

    async def call(self, name: str, fn, *args) -> Any:
        """Run `fn(adapter, *args)` on the model's executor, loading it first if needed. The call holds
        a lease from before it is queued until it returns, so an idle unload never pulls the model
        from under it."""
        if name not in self.entries:
            raise ModelUnavailable(f"Unknown model {name!r}.")
        loop = asyncio.get_running_loop()
        adapter = self.try_acquire(name) or await loop.run_in_executor(self.pool, self.acquire, name)

        def run() -> Any:
            try:
                return fn(adapter, *args)
            finally:
                self.release(name)

        job = self.executor_for(name).submit(run)
        try:
            return await asyncio.wrap_future(job)
        except asyncio.CancelledError:
            if job.cancel():  # never started: its lease is still ours to give back
                self.release(name)
            raise

    async def run(self, name: str, images: Sequence[Any]) -> list[Any]:
        """Async: prepare and run one batch of images off the event loop."""
        return await self.call(name, lambda adapter, imgs: self.run_with(name, adapter, imgs), images)

    async def predict(self, name: str, inputs: Sequence[Any]) -> list[Any]:
        """Async: run one batch of already prepared inputs off the event loop."""
        return await self.call(name, lambda adapter, xs: self.predict_with(name, adapter, xs), inputs)

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
        for e in self.entries.values():
            if e.executor is not None:
                e.executor.shutdown(wait=False, cancel_futures=True)
