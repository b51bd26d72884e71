"""The one HTTP client both commands talk through: the real app in this process, or a running server.

The CLI never calls the services directly: in-process it runs the real app (its
lifespan included) behind an ASGI transport, so a CLI run takes exactly the code
path of a server request, and --server only swaps the transport. Connection and
authentication failures become `ServerError` here, so the commands see either an
answer (status, body) or one error that maps to exit code 3.
"""

from __future__ import annotations

import sys
from contextlib import AsyncExitStack
from typing import Any

import httpx

from app.cli.errors import ServerError
from app.cli.tasks import TaskRun


def located_in(err: dict[str, Any], field: str) -> bool:
    """A 422 whose every error is located in the request's `field` (e.g. its images: one bad file or URL),
    not elsewhere (e.g. its task list)."""
    detail = err.get("detail")
    errors = detail.get("errors") if isinstance(detail, dict) else None
    if not isinstance(errors, list) or not errors:
        return False
    return all(isinstance(e, dict) and isinstance(e.get("loc"), list) and e["loc"][:1] == [field] for e in errors)


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
                 overrides: dict[str, Any] | None = None, settings: Any = None):
        self.server = server.rstrip("/") if server else None
        self.base_settings = settings  # in-process: these Settings (a Ray actor gets the driver's), else the environment's
        self.api_key = api_key
        self.timeout = timeout
        self.verbose = verbose
        self.overrides = overrides or {}
        self.stack = AsyncExitStack()
        self.client: httpx.AsyncClient | None = None
        self.settings = None
        self.app: Any = None  # in-process: the app (its state holds the orchestrator and the registry)

    @property
    def where(self) -> str:
        return self.server or "in-process Loupe"

    async def __aenter__(self) -> Api:
        headers = {"User-Agent": "loupe-cli"}
        if self.server:
            if self.api_key:
                headers["X-Api-Key"] = self.api_key
            self.client = await self.stack.enter_async_context(httpx.AsyncClient(
                base_url=self.server, headers=headers, timeout=httpx.Timeout(self.timeout, connect=10.0)))
        else:
            self.app = app = build_app(self.verbose, self.overrides, self.base_settings)
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

    async def catalog(self) -> dict[str, Any]:
        """GET /v1/operations: {operations: [...], tasks: [...]} (also a check that the server answers)."""
        try:
            status, body = await self.call("GET", "/v1/operations")
        except httpx.TimeoutException as exc:
            raise ServerError(f"no answer from {self.where} within {self.timeout:g} s") from exc
        if status == 404 and self.server:
            raise ServerError(f"{self.server} does not look like a Loupe server (GET /v1/operations answered 404)")
        if status != 200 or not isinstance(body, dict):
            raise ServerError(f"{self.where}: GET /v1/operations failed: {describe_error(body, status)['message']}")
        return body

    async def operations(self) -> list[dict[str, Any]]:
        return (await self.catalog()).get("operations", [])


def cli_settings(verbose: bool, overrides: dict[str, Any] | None = None):
    """The settings of the environment / .env, minus what makes no sense in-process (auth, rate limits)."""
    from app.core.config import Settings

    return Settings(**{"log_level": "INFO" if verbose else "ERROR", "log_json": False, "rate_limit": "",
                       "api_keys": "", "api_key": "", **(overrides or {})})


def build_app(verbose: bool, overrides: dict[str, Any], settings: Any = None):
    """The real app with `settings` (default: `cli_settings`), `overrides` applied."""
    import logging

    from app.main import create_app

    settings = cli_settings(verbose, overrides) if settings is None else settings.model_copy(update=overrides)
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


def warn_unavailable_tasks(catalog: dict[str, Any], run: TaskRun, where: str) -> None:
    """A note for each task of `run` whose type the server lists as not available."""
    kinds = {t.get("type"): t for t in catalog.get("tasks") or [] if isinstance(t, dict)}
    for op, kind in run.types.items():
        info = kinds.get(kind)
        if info is not None and not info.get("available") and not info.get("ready"):
            print(f"note: task {op!r} ({kind}) is not fully available on {where} (its model files, or those of the "
                  "person or face detector it may need, are missing); it may come back as error", file=sys.stderr)
