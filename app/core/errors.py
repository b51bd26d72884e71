"""The one error envelope: `{"error": {"type", "message", "detail", "request_id"}}`.

Every error the service returns — ours, FastAPI's validation errors, Starlette's
404/405, slowapi's 429 and unexpected exceptions — goes through `error_response`.
"""

from __future__ import annotations

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

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.error_type, "message": self.message, "detail": self.detail}


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


class NotFound(ApiError):
    status_code = 404
    error_type = "not_found"


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


class UpstreamError(ApiError):
    status_code = 502
    error_type = "upstream_error"


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
