"""The rate limiter's storage (RATE_LIMIT_STORAGE_URI): built once per app, its secrets kept out of every
message, and its health — reachable or not, the back-off after a failure, the log lines and the metric —
for `app.core.ratelimit`, which decides what a request gets while it is away (RATE_LIMIT_STORAGE_FAILURE)."""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit

from limits.errors import ConfigurationError
from limits.storage import Storage, storage_from_string

from app.core.config import RATE_LIMIT_STORAGE_SCHEMES
from app.core.metrics import RATE_LIMIT_STORAGE_UP

log = logging.getLogger("loupe.ratelimit")

FailureMode = Literal["local", "open", "closed"]
#: after a storage failure, requests are decided by the failure mode without calling the storage for this long
RECHECK_S = 1.0
#: while the storage stays unreachable, one log line per this many seconds (with the count of failed calls)
LOG_EVERY_S = 60.0


# --- the storage -----------------------------------------------------------------------------------------


class StorageConfigError(ValueError):
    """RATE_LIMIT_STORAGE_URI cannot be used: raised by `create_app`, so start-up stops with this message."""


_SECRET_PARAMS = ("password", "sentinel_password", "token")


def redact_uri(uri: str) -> str:
    """The URI for logs and messages: user info and password-like query values replaced by ***."""
    try:
        parts = urlsplit(uri)
    except ValueError:
        return uri.split("://", 1)[0] + "://***"
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rsplit("@", 1)[1]
    query = urlencode([(k, "***" if any(w in k.lower() for w in _SECRET_PARAMS) else v)
                       for k, v in parse_qsl(parts.query, keep_blank_values=True)], safe="*")
    return f"{parts.scheme}://{netloc}{parts.path}" + (f"?{query}" if query else "")


def storage_scheme(uri: str) -> str:
    return uri.split("://", 1)[0].lower() if "://" in uri else ""


def _secrets(uri: str) -> list[str]:
    try:
        parts = urlsplit(uri)
        found = [parts.password or "", parts.username or ""]
        found += [v for k, v in parse_qsl(parts.query) if any(w in k.lower() for w in _SECRET_PARAMS)]
    except ValueError:
        found = []
    return [s for s in found if len(s) >= 3]


def storage_options(scheme: str, timeout_s: float) -> dict[str, Any]:
    """Keyword arguments for the storage's client (limits passes them to redis-py): a connect and read timeout,
    one immediate retry on a broken connection and none on a timeout, and a client name that says which
    process holds the connection (`CLIENT LIST`). Options in the URI's query string win (redis://, rediss://)."""
    if scheme == "memory":
        return {}
    from redis.backoff import NoBackoff
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.retry import Retry

    timeouts = {"socket_connect_timeout": timeout_s, "socket_timeout": timeout_s}
    options: dict[str, Any] = {**timeouts, "client_name": f"loupe-{os.getpid()}",
                               "retry": Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,))}
    if scheme == "redis+sentinel":
        options["sentinel_kwargs"] = dict(timeouts)  # the sentinels' own connections (limits passes {} otherwise)
    if scheme == "redis+cluster":
        options["cluster_error_retry_attempts"] = 1
    return options


def make_storage(uri: str, timeout_s: float) -> Storage | None:
    """The storage of RATE_LIMIT_STORAGE_URI; StorageConfigError when it cannot be used (bad URI, unsupported
    scheme, missing client library); None when it is valid but could not be built now because its servers
    did not answer (redis+cluster connects while it is built): it is built again on first use."""
    scheme = storage_scheme(uri)
    shown = redact_uri(uri)
    if scheme not in RATE_LIMIT_STORAGE_SCHEMES:
        raise StorageConfigError(f"RATE_LIMIT_STORAGE_URI {shown}: scheme {scheme or '(none)'} is not supported; "
                                 f"use one of {', '.join(s + '://' for s in RATE_LIMIT_STORAGE_SCHEMES)}")
    try:
        options = storage_options(scheme, timeout_s)
    except ImportError as exc:
        raise StorageConfigError(f"RATE_LIMIT_STORAGE_URI {shown} needs the redis package ({exc})") from None
    try:
        storage = storage_from_string(uri, wrap_exceptions=True, **options)
    except (ConfigurationError, ValueError, TypeError, ImportError) as exc:
        raise StorageConfigError(f"RATE_LIMIT_STORAGE_URI {shown} cannot be used: "
                                 f"{_scrub(str(exc), uri)}") from None
    except Exception as exc:  # noqa: BLE001 - a client that connects while it is built; retried on first use
        log.warning("rate-limit storage %s could not be reached at start-up (%s: %s); it is tried again on the "
                    "first request", shown, type(exc).__name__, _scrub(str(exc), uri))
        return None
    if not isinstance(storage, Storage):
        raise StorageConfigError(f"RATE_LIMIT_STORAGE_URI {shown}: only synchronous storages are supported")
    return storage


def _scrub(text: str, uri: str) -> str:
    for secret in _secrets(uri):
        text = text.replace(secret, "***")
    return text[:300]


class StorageDown(Exception):
    """The shared storage failed (or is being left alone after a failure): the failure mode decides."""


@dataclass
class StorageState:
    """Whether the shared storage answered last time, for /health, the log and the back-off; thread safe
    (checks run in worker threads)."""

    uri: str
    failure_mode: FailureMode
    reachable: bool | None = None  # None: not called yet
    last_error: str | None = None
    last_change: float = field(default_factory=time.time)
    failed_calls: int = 0  # since it was last reachable
    _retry_at: float = 0.0
    _logged_at: float = 0.0
    _logged_count: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def scheme(self) -> str:
        return storage_scheme(self.uri)

    def backing_off(self) -> bool:
        return time.monotonic() < self._retry_at

    def failed(self, exc: BaseException) -> None:
        cause = exc.__cause__ if exc.__cause__ is not None else exc  # limits' StorageError wraps redis' error
        if hasattr(cause, "storage_error"):
            cause = cause.storage_error
        error = _scrub(f"{type(cause).__name__}: {cause}", self.uri)
        now = time.monotonic()
        with self._lock:
            self._retry_at = now + RECHECK_S
            self.failed_calls += 1
            self.last_error = error
            first = self.reachable is not False
            if first:
                self.reachable, self.last_change = False, time.time()
            due = first or now - self._logged_at >= LOG_EVERY_S
            if due:
                count, self._logged_at, self._logged_count = self.failed_calls - self._logged_count, now, self.failed_calls
        RATE_LIMIT_STORAGE_UP.set(0)
        if first:
            log.warning("rate-limit storage %s unreachable (%s); until it answers, requests are %s",
                        redact_uri(self.uri), error, _MODE_WORDS[self.failure_mode])
        elif due:
            log.warning("rate-limit storage %s still unreachable: %d failed calls in the last %.0f s (last: %s)",
                        redact_uri(self.uri), count, LOG_EVERY_S, error)

    def succeeded(self) -> None:
        if self.reachable:
            return
        with self._lock:
            was_down, failed = self.reachable is False, self.failed_calls
            self.reachable, self.last_error, self.failed_calls, self._logged_count = True, None, 0, 0
            self.last_change = time.time()
        RATE_LIMIT_STORAGE_UP.set(1)
        if was_down:
            log.warning("rate-limit storage %s reachable again (%d failed calls while it was not)",
                        redact_uri(self.uri), failed)

    def snapshot(self) -> dict[str, Any]:
        return {"storage": self.scheme, "shared": self.scheme != "memory", "failure_mode": self.failure_mode,
                "reachable": self.reachable, "last_error": self.last_error, "since": self.last_change}


_MODE_WORDS = {"local": "counted in each worker's memory instead (per-worker limits)",
               "open": "let through without rate limits", "closed": "refused with 503"}
