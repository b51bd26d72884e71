"""create_app(): lifespan (pool, registry preload, HTTP client), middleware, routers, error handlers."""

from __future__ import annotations

import logging
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.compat.dialects import ErrorParts, render_error
from app.core.config import VERSION, Settings, get_settings
from app.core.errors import ApiError, PayloadTooLarge, validation_failed
from app.core.logging import request_id_var, setup_logging
from app.core.metrics import ERRORS, HTTP_LATENCY, HTTP_REQUESTS, REGISTRY
from app.core.ratelimit import AccessControl
from app.core.ratelimit_storage import redact_uri
from app.imaging.fetch import make_client
from app.models.registry import ModelRegistry
from app.services.orchestrator import Orchestrator

log = logging.getLogger("loupe")

_STATUS_TYPES = {
    400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
    406: "not_acceptable", 408: "request_timeout", 409: "conflict", 413: "payload_too_large",
    415: "unsupported_media_type", 422: "validation_error", 429: "rate_limited", 500: "internal_error",
    502: "upstream_error", 503: "service_unavailable", 504: "upstream_timeout",
}


def envelope(status: int, error_type: str, message: str, detail: Any = None,
             headers: dict[str, str] | None = None, *, path: str = "", code: int | None = None) -> JSONResponse:
    """The error response: Loupe's envelope, or on a compatibility route its service's shape
    (`app.api.compat.dialects`)."""
    ERRORS.labels(error_type).inc()
    status, body = render_error(path, ErrorParts(status, error_type, message, detail, request_id_var.get(), code))
    return JSONResponse(body, status_code=status, headers=headers)


class BodyTooLarge(PayloadTooLarge):
    """Raised by the capped `receive` when a body without (or beyond) its Content-Length passes the cap."""


def body_limits(settings: Settings) -> tuple[dict[str, int], int]:
    """The most bytes each route's body may have (single-image routes: one image; batches: a batch),
    and the cap of every other route. The largest image as base64 JSON is 4/3 of the larger of
    MAX_IMAGE_MB and MAX_RAW_MB (each image's own limit is checked when it is read)."""
    from app.schemas.review import LLM_GROUP_MAX

    per_image = settings.max_read_bytes * 4 // 3 + (64 << 10)
    slack = 1 << 20  # the JSON or multipart framing and the other fields
    batch = per_image * settings.max_batch_size + slack
    limits = {
        "/v1/analyze": per_image + slack, "/v1/quality": per_image + slack, "/v1/preview": per_image + slack, "/v1/analyze/llm": per_image + slack,
        "/v1/analyze/batch": batch, "/v1/tasks": per_image + slack, "/v1/tasks/batch": batch,
        # the compatibility routes (app.api.compat): one image each
        "/quality": per_image + slack, "/1.0/check.json": per_image + slack, "/analyze_image": per_image + slack,
        "/analyze_image_upload": per_image + slack,
        "/v1/analyze/llm/group": per_image * LLM_GROUP_MAX + slack,
        "/v1/cluster/images": per_image * min(settings.max_cluster_images, settings.max_batch_size) + slack,
        # N vectors as JSON numbers (about 10 bytes each, 512-d by default), never below a batch's size
        "/v1/cluster": max(batch, settings.max_cluster_items * 512 * 10 + slack),
    }
    return limits, slack


class RequestContextMiddleware:
    """Request id in and out, one JSON access-log line, Prometheus counters, per-route body-size cap."""

    def __init__(self, app: ASGIApp, limits: dict[str, int], default_limit: int):
        self.app = app
        self.limits = limits
        self.default_limit = default_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        rid = headers.get("x-request-id", "")[:128] or uuid.uuid4().hex[:16]
        token = request_id_var.set(rid)
        start = time.perf_counter()
        status_holder = {"status": 500}
        method = scope["method"]
        max_body = self.limits.get(scope.get("path", "").rstrip("/") or "/", self.default_limit)

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_holder["status"] = message["status"]
                status_holder["sent"] = True
                message.setdefault("headers", [])
                message["headers"] = list(message["headers"]) + [(b"x-request-id", rid.encode())]
            await send(message)

        def too_large(size: str) -> JSONResponse:
            return envelope(413, "payload_too_large", f"The request body is {size}; the limit for "
                            f"{scope.get('path')} is {max_body} bytes.", {"max_body_bytes": max_body},
                            path=scope.get("path", ""))

        try:
            declared = headers.get("content-length")
            if declared and declared.isdigit() and int(declared) > max_body:
                await too_large(f"{declared} bytes")(scope, receive, send_wrapper)
                return
            received = 0

            async def receive_capped() -> Message:
                nonlocal received
                message = await receive()
                if message["type"] == "http.request":
                    received += len(message.get("body", b""))
                    if received > max_body:
                        raise BodyTooLarge(f"The request body is larger than {max_body} bytes, the limit for "
                                           f"{scope.get('path')}.", detail={"max_body_bytes": max_body})
                return message

            try:
                await self.app(scope, receive_capped, send_wrapper)
            except BodyTooLarge:  # raised outside the app's own handlers (e.g. while streaming)
                if status_holder.get("sent"):
                    raise
                await too_large(f"more than {max_body} bytes")(scope, receive, send_wrapper)
            except Exception:  # noqa: BLE001 - the envelope (with request id) even for crashes
                log.exception("unhandled error")
                if status_holder.get("sent"):
                    raise
                await envelope(500, "internal_error", "Internal server error.", path=scope.get("path", ""))(
                    scope, receive, send_wrapper)
        finally:
            elapsed = time.perf_counter() - start
            route = scope.get("route")
            # FastAPI keeps included routers nested, so route.path lacks the prefix; none of our
            # routes has path parameters, so the matched path itself is the template. Unmatched
            # paths share one label (no cardinality explosion from scanners).
            route_path = getattr(route, "path", None)
            template = ("unmatched" if route_path is None
                        else route_path if "{" in route_path else scope.get("path", route_path))
            HTTP_REQUESTS.labels(template, method, str(status_holder["status"])).inc()
            HTTP_LATENCY.labels(template, method).observe(elapsed)
            if not template.startswith(("/health", "/metrics")):
                log.info("request", extra={"method": method, "path": scope.get("path"), "route": template,
                                           "status": status_holder["status"], "duration_ms": round(elapsed * 1000, 2),
                                           "client": (scope.get("client") or ("-",))[0]})
            request_id_var.reset(token)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return envelope(exc.status_code, exc.error_type, exc.message, exc.detail, exc.headers or None,
                        path=request.url.path, code=getattr(exc, "code", None))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        err = validation_failed(list(exc.errors()), skip=("body",))
        return envelope(err.status_code, err.error_type, err.message, err.detail, path=request.url.path)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        etype = _STATUS_TYPES.get(exc.status_code, "http_error")
        message = exc.detail if isinstance(exc.detail, str) else etype.replace("_", " ")
        if exc.status_code == 404:
            message = f"No route {request.url.path}."
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}."
        return envelope(exc.status_code, etype, message, None, getattr(exc, "headers", None), path=request.url.path)

    @app.exception_handler(Exception)
    async def _unhandled(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return envelope(500, "internal_error", "Internal server error.", None, path=request.url.path)


@asynccontextmanager
async def lifespan(app: FastAPI):
    settings: Settings = app.state.settings
    pool = ThreadPoolExecutor(max_workers=settings.threads, thread_name_prefix="loupe-cpu")
    registry = ModelRegistry(settings, pool)
    client = make_client(settings)
    app.state.pool = pool
    app.state.registry = registry
    app.state.http = client
    app.state.orchestrator = Orchestrator(settings, registry, pool, client)
    app.state.started_at = time.time()
    if sys.modules.get("torch") is not None:  # never imported for it: on ONNX Runtime / OpenVINO the service runs without torch
        sys.modules["torch"].set_num_threads(settings.threads)
    if registry.preload_names():
        import asyncio

        failed = await asyncio.get_running_loop().run_in_executor(pool, registry.preload)
        for name, err in failed.items():
            if err:
                log.error("preload of %s failed: %s", name, err)
    registry.start_ttl_task()
    access: AccessControl = app.state.access
    if access.shared:  # one PING off the loop: the log says at once whether the shared rate limits work
        import anyio.to_thread

        if await anyio.to_thread.run_sync(access.probe):
            log.info("rate limits shared in %s (if it fails: %s)", redact_uri(access.storage_uri), access.failure_mode)
    app.state.accepting = True
    try:
        yield
    finally:
        app.state.accepting = False
        registry.shutdown()
        await client.aclose()
        pool.shutdown(wait=False, cancel_futures=True)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    setup_logging(settings.log_level, settings.log_json)
    app = FastAPI(
        title="Loupe",
        version=VERSION,
        summary="Self-hosted image analysis: sharpness, exposure, quality, aesthetics, faces, emotion, embeddings.",
        description=(
            "Every score states its range and which direction is better (`x-range`, `x-higher-is-better` and the "
            "field description); every decision returns the thresholds it applied. Errors always have the shape "
            "`{\"error\": {\"type\", \"message\", \"detail\", \"request_id\"}}`."
        ),
        lifespan=lifespan,
        responses={},
    )
    app.state.settings = settings
    app.state.access = AccessControl.from_settings(settings)

    from app.api.compat.router import compat_router
    from app.api.v1.router import public_router, v1_router
    from app.api.web import web_router

    app.include_router(public_router)
    app.include_router(v1_router)
    app.include_router(compat_router)
    app.include_router(web_router)

    if settings.prometheus_enabled:
        @app.get("/metrics", include_in_schema=False)
        async def metrics() -> Response:
            return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    install_error_handlers(app)
    limits, default_limit = body_limits(settings)
    app.add_middleware(RequestContextMiddleware, limits=limits, default_limit=default_limit)

    def custom_openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, summary=app.summary,
                             description=app.description, routes=app.routes)
        from app.api.v1.openapi_extra import add_component_schemas

        add_component_schemas(schema)
        app.openapi_schema = schema
        return schema

    app.openapi = custom_openapi  # type: ignore[method-assign]
    return app


app = create_app()
