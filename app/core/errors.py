"""The one error envelope: `{"error": {"type", "message", "detail", "request_id"}}`.

Every error the service returns — ours, FastAPI's validation errors, Starlette's
404/405, the rate limiter's 429 and unexpected exceptions — is built by `error_body`
(through `app.main.envelope`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


class ApiError(Exception):
    """Base class: an error with an HTTP status and a stable machine-readable type."""

    status_code: int = 500
    error_type: str = "internal_error"

    def __init__(self, message: str, *, detail: Any = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.detail = detail
        self.headers = headers or {}


class BadRequest(ApiError):
    status_code = 400
    error_type = "bad_request"


class InvalidImage(ApiError):
    status_code = 400
    error_type = "invalid_image"


class UrlNotAllowed(ApiError):
    status_code = 400
    error_type = "url_not_allowed"


class Unauthorized(ApiError):
    status_code = 401
    error_type = "unauthorized"

    def __init__(self, message: str = "A valid API key is required.", **kw):
        kw.setdefault("headers", {"WWW-Authenticate": 'Bearer realm="loupe"'})
        super().__init__(message, **kw)


class ImageTooLarge(ApiError):
    status_code = 413
    error_type = "image_too_large"


class PayloadTooLarge(ApiError):
    status_code = 413
    error_type = "payload_too_large"


class UnsupportedMediaType(ApiError):
    status_code = 415
    error_type = "unsupported_media_type"


class ValidationFailed(ApiError):
    status_code = 422
    error_type = "validation_error"


class RateLimited(ApiError):
    status_code = 429
    error_type = "rate_limited"


class UnreachableUrl(ApiError):
    status_code = 502
    error_type = "unreachable_url"


class ServiceUnavailable(ApiError):
    status_code = 503
    error_type = "service_unavailable"


class ModelUnavailable(ApiError):
    status_code = 503
    error_type = "model_unavailable"


class UpstreamTimeout(ApiError):
    status_code = 504
    error_type = "upstream_timeout"


def validation_failed(errors: Sequence[Mapping[str, Any]], *, skip: tuple[str, ...] = ()) -> ValidationFailed:
    """The 422 for pydantic errors (`exc.errors()`, from a model or from FastAPI's request validation):
    the first error located in words, every error's loc / msg / type in `detail` — never the offending
    input, which may be a 20 MB base64 string. `skip`: loc parts that say nothing to the caller ("body")."""
    items: list[dict[str, Any]] = [
        {"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")} for e in errors]
    first: dict[str, Any] = items[0] if items else {"loc": [], "msg": "invalid request"}
    where = ".".join(str(p) for p in first["loc"] if p not in skip) or "body"
    return ValidationFailed(f"Invalid request: {where}: {first['msg']}", detail={"errors": items})


def error_body(error_type: str, message: str, detail: Any, request_id: str | None) -> dict[str, Any]:
    return {"error": {"type": error_type, "message": message, "detail": detail, "request_id": request_id}}


def detached(exc: BaseException) -> BaseException:
    """`exc` without its traceback and chained exceptions, for storing as a result.

    A stored exception keeps its traceback's frames alive, and those frames hold the very objects
    that store it (the request's images): a reference cycle that only the cyclic GC frees, long
    after the request. Measured with scripts/soak.py, those cycles kept every image of the last
    seconds of traffic resident. What is kept is what a response needs: type, message, detail.
    """
    exc.__traceback__ = None
    exc.__cause__ = None
    exc.__context__ = None
    return exc
