"""How an error reads on a compatibility route: each replaced service's own error shape.

Loupe's errors have one envelope, `{"error": {"type", "message", "detail", "request_id"}}`. A client
written for another service parses that service's errors, so on that service's routes the same error
is rendered in its dialect, keeping every field of the envelope beside the service's own:

* quality gate and image_embed (FastAPI services): `{"detail": …, "error": {envelope}}` — `detail` is
  the message, or FastAPI's list of `{loc, msg, type}` for a 422.
* image_tagger: `{"error": {"type": "InvalidImage" | "UnreachableURL" | "ValidationError", "detail",
  "message", "request_id", "loupe_type"}}` with its statuses (an unreachable image is its 404).
* Sightengine: `{"status": "failure", "request": {"id", "timestamp", "operations"}, "error": {"type",
  "code", "message", "detail", "request_id", "loupe_type"}}`, with Sightengine's error types.

Every error path (handlers, the body-size cap, crashes) renders through `render_error`, so an error
on a compat route can never come out in the wrong shape.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from app.core.errors import error_body


@dataclass(frozen=True)
class ErrorParts:
    status: int
    error_type: str  # Loupe's type
    message: str
    detail: Any
    request_id: str | None
    #: a service-specific error code (Sightengine's `error.code`), when the raiser set one
    code: int | None = None

    @property
    def envelope(self) -> dict[str, Any]:
        return error_body(self.error_type, self.message, self.detail, self.request_id)["error"]

    @property
    def validation_errors(self) -> list[Any] | None:
        """FastAPI's `[{loc, msg, type}]` for a 422 (Loupe keeps them in `detail.errors`)."""
        if self.error_type == "validation_error" and isinstance(self.detail, dict) and "errors" in self.detail:
            return list(self.detail["errors"])
        return None


Render = Callable[[ErrorParts], tuple[int, dict[str, Any]]]


def fastapi_style(p: ErrorParts) -> tuple[int, dict[str, Any]]:
    """FastAPI's `{"detail": …}` (what the quality gate and image_embed answer), with the envelope beside it."""
    errors = p.validation_errors
    return p.status, {"detail": errors if errors is not None else p.message, "error": p.envelope}


#: Loupe's type → image_tagger's (status, type); other errors keep Loupe's status and type
TAGGER_TYPES: dict[str, tuple[int, str]] = {
    "invalid_image": (400, "InvalidImage"), "unsupported_media_type": (400, "InvalidImage"),
    "unreachable_url": (404, "UnreachableURL"), "upstream_timeout": (404, "UnreachableURL"),
    "url_not_allowed": (404, "UnreachableURL"), "validation_error": (422, "ValidationError"),
}


def tagger_style(p: ErrorParts) -> tuple[int, dict[str, Any]]:
    status, kind = TAGGER_TYPES.get(p.error_type, (p.status, p.error_type))
    errors = p.validation_errors
    return status, {"error": {"type": kind, "detail": errors if errors is not None else p.message,
                              "message": p.message, "request_id": p.request_id, "loupe_type": p.error_type,
                              "loupe_detail": p.detail}}


#: Loupe's type → (status, Sightengine error type, code). Sightengine's codes are support references; these
#: are Loupe's (README, "Switching from another service"). A raiser may set a more precise code (`ErrorParts.code`).
SIGHTENGINE_TYPES: dict[str, tuple[int, str, int]] = {
    "unauthorized": (401, "credentials_error", 1),
    "rate_limited": (429, "usage_limit", 32),
    "validation_error": (400, "argument_error", 20),
    "bad_request": (400, "argument_error", 20),
    "unsupported_media_type": (415, "media_error", 6),
    "invalid_image": (400, "media_error", 6),
    "image_too_large": (413, "media_error", 2),
    "payload_too_large": (413, "media_error", 2),
    "url_not_allowed": (400, "media_error", 3),
    "unreachable_url": (502, "media_error", 3),
    "upstream_timeout": (504, "media_error", 3),
    "model_unavailable": (503, "api_error", 10),
    "service_unavailable": (503, "api_error", 10),
    "server_busy": (503, "api_error", 10),
    "internal_error": (500, "unknown_error", 0),
}


def sightengine_request(request_id: str | None, operations: int) -> dict[str, Any]:
    """Sightengine's `request` object: `req_` + Loupe's request id (the X-Request-ID of the logs)."""
    rid = re.sub(r"[^A-Za-z0-9]", "", request_id or "")[:64] or "0"
    return {"id": f"req_{rid}", "timestamp": round(time.time(), 6), "operations": operations}


def sightengine_style(p: ErrorParts) -> tuple[int, dict[str, Any]]:
    status, kind, code = SIGHTENGINE_TYPES.get(p.error_type, (p.status, "request_error", 0))
    return status, {"status": "failure", "request": sightengine_request(p.request_id, 0),
                    "error": {"type": kind, "code": p.code if p.code is not None else code, "message": p.message,
                              "detail": p.detail, "request_id": p.request_id, "loupe_type": p.error_type}}


_DIALECTS: dict[str, Render] = {}


def register(paths: list[str], render: Render) -> None:
    """Errors on these paths (with or without a trailing slash) render with `render`."""
    for path in paths:
        _DIALECTS[path.rstrip("/") or "/"] = render


def render_error(path: str, parts: ErrorParts) -> tuple[int, dict[str, Any]]:
    """(status, body) of an error on `path`: the route's dialect, or Loupe's envelope."""
    render = _DIALECTS.get(path.rstrip("/") or "/")
    if render is None:
        return parts.status, error_body(parts.error_type, parts.message, parts.detail, parts.request_id)
    return render(parts)
