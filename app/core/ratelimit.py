"""Who a request is, and how much it may do: API keys, per-client rate limits, failed-auth limits.

One dependency (`guard`) of the /v1 router does both checks in an order that leaves a caller
nothing to dodge:

1. The client IP is the TCP peer; X-Forwarded-For is read only when the peer is a proxy named in
   FORWARDED_ALLOW_IPS, walking from the right past trusted proxies (the first untrusted hop is
   the client; hops a client wrote itself, further left, are ignored).
2. With API keys configured, an IP that has failed authentication AUTH_FAIL_LIMIT times is
   refused (429) *before* its key is looked at, so a key guesser learns nothing more until the
   window moves on. A missing or wrong key counts one failure against the IP and answers 401.
3. RATE_LIMIT is counted per *valid* key, else per client IP. A made-up key never gets a bucket
   of its own: without API_KEYS every request counts against its IP.

Counters live in the `limits` library's storage (moving window) named by RATE_LIMIT_STORAGE_URI:
`memory://` (the default) keeps them in each worker process, so N workers allow N times RATE_LIMIT;
`redis://…` (also `rediss://`, `redis+unix://`, `redis+sentinel://`, `redis+cluster://`) shares them, so
every worker and replica enforces one budget per key. The storage is built once per app (`create_app`):
a bad URI, an unsupported scheme or a missing client library stops start-up with a message that names
the scheme and host, never the password.

Redis calls are blocking (limits' async storages need other client libraries): the whole check then runs
in a worker thread (`guard` → `check_async`), never on the event loop; with `memory://` it stays inline
(microseconds). Every Redis call has RATE_LIMIT_STORAGE_TIMEOUT_S as connect and read timeout and one
immediate retry on a broken connection (a Redis restart), none on a timeout, instead of redis-py's
default of three retries with back-off (seconds per call against a dead host).

Storage failures (any exception from the storage) are never a 500. The request is decided by
RATE_LIMIT_STORAGE_FAILURE: `local` (default) counts it in this worker's memory instead (limits keep
working, per worker, as with memory://), `open` lets it through uncounted, `closed` refuses it with 503
and Retry-After. After a failure the storage is left alone for RECHECK_S, so a dead host costs one
timeout per second per worker, not one per request. Each such request counts in
`loupe_rate_limit_storage_errors_total{mode}`; the log says when the storage goes away (once), how many
calls failed (at most once a minute) and when it is back. API keys are checked in every mode.

Probes (/health, /v1/version, /metrics) and the page are not under the /v1 router's dependency.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import logging
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import anyio.to_thread
from fastapi import Request, Response
from limits import RateLimitItem, parse_many
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

from app.core.config import Settings
from app.core.errors import RateLimited, ServiceUnavailable, Unauthorized
from app.core.metrics import RATE_LIMIT_STORAGE_ERRORS, RATE_LIMIT_STORAGE_UP
from app.core.ratelimit_storage import (
    RECHECK_S,
    FailureMode,
    StorageDown,
    StorageState,
    make_storage,
    storage_scheme,
)
from app.core.security import key_is_valid, presented_key

log = logging.getLogger("loupe.ratelimit")


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(spec: str) -> list[Network] | None:
    """FORWARDED_ALLOW_IPS → networks; None means every peer ("*")."""
    items = [s.strip() for s in spec.split(",") if s.strip()]
    if "*" in items:
        return None
    return [ipaddress.ip_network(s, strict=False) for s in items]


def _in(addr: str, networks: list[Network] | None) -> bool:
    if networks is None:
        return True
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return False
    return any(ip in n for n in networks)


def client_ip(peer: str | None, forwarded_for: list[str], trusted: list[Network] | None) -> str:
    """The client's address: the peer, unless the peer is a trusted proxy; then the right-most
    X-Forwarded-For hop that is not itself a trusted proxy."""
    peer = peer or "unknown"
    if trusted == [] or not _in(peer, trusted):
        return peer
    hops = [h.strip() for header in forwarded_for for h in header.split(",") if h.strip()]
    for hop in reversed(hops):
        if not _in(hop, trusted):
            return hop
    return hops[0] if hops else peer


#: where a check counts: "main" (the app's storage), this worker's fallback counters, or nowhere (None)
Counters = Literal["main"] | MovingWindowRateLimiter | None


# --- the checks ------------------------------------------------------------------------------------------


@dataclass
class AccessControl:
    """The limits of one app: parsed once from the settings at start-up, with their storage."""

    keys: list[str]
    rate_items: list[RateLimitItem]
    auth_fail_items: list[RateLimitItem]
    trusted: list[Network] | None
    strategy: MovingWindowRateLimiter = field(default_factory=lambda: MovingWindowRateLimiter(MemoryStorage()))
    storage_uri: str = "memory://"
    failure_mode: FailureMode = "local"
    timeout_s: float = 0.5
    state: StorageState = field(init=False)
    #: this worker's own counters: the `local` failure mode's fallback
    local: MovingWindowRateLimiter = field(default_factory=lambda: MovingWindowRateLimiter(MemoryStorage()))
    _build_lock: threading.Lock = field(default_factory=threading.Lock)
    _pending: bool = False  # the shared storage is still to be built (its servers did not answer at start-up)

    def __post_init__(self) -> None:
        self.state = StorageState(self.storage_uri, self.failure_mode)
        RATE_LIMIT_STORAGE_UP.set(1)  # until a call says otherwise (memory:// never fails)

    @classmethod
    def from_settings(cls, settings: Settings) -> AccessControl:
        uri = settings.rate_limit_storage_uri.strip()
        storage = make_storage(uri, settings.rate_limit_storage_timeout_s)
        access = cls(keys=settings.api_key_list,
                     rate_items=parse_many(settings.rate_limit) if settings.rate_limit.strip() else [],
                     auth_fail_items=parse_many(settings.auth_fail_limit) if settings.auth_fail_limit.strip() else [],
                     trusted=parse_networks(settings.forwarded_allow_ips),
                     storage_uri=uri, failure_mode=settings.rate_limit_storage_failure,
                     timeout_s=settings.rate_limit_storage_timeout_s)
        if storage is not None:
            access.strategy = MovingWindowRateLimiter(storage)
        else:
            access._pending = True
        return access

    @property
    def shared(self) -> bool:
        """Counters in a storage outside this process (calls that may block, fail or time out)."""
        return storage_scheme(self.storage_uri) != "memory"

    def _shared_strategy(self) -> MovingWindowRateLimiter:
        if self._pending:
            with self._build_lock:
                if self._pending:
                    storage = make_storage(self.storage_uri, self.timeout_s)
                    if storage is None:
                        raise ConnectionError("the storage's servers did not answer")
                    self.strategy, self._pending = MovingWindowRateLimiter(storage), False
        return self.strategy

    def _call(self, where: Counters, op: str, item: RateLimitItem, bucket: str) -> Any:
        """`op(item, bucket)` on the app's storage ("main") or on `where`; a failure of a shared storage (or a
        recent one) raises StorageDown."""
        if where != "main":
            assert where is not None
            return getattr(where, op)(item, bucket)
        if not self.shared:
            return getattr(self.strategy, op)(item, bucket)
        if self.state.backing_off():
            raise StorageDown
        try:
            out = getattr(self._shared_strategy(), op)(item, bucket)
        except Exception as exc:  # noqa: BLE001 - whatever the storage raises, the failure mode decides, never a 500
            self.state.failed(exc)
            raise StorageDown from exc
        self.state.succeeded()
        return out

    def probe(self) -> bool:
        """One call to the storage (start-up): records and returns whether it answered."""
        if not self.shared:
            return True
        try:
            storage = self._shared_strategy().storage
            connection = getattr(storage, "get_connection", None)  # the redis client: its PING says why it fails
            if not (connection().ping() if connection is not None else storage.check()):
                raise ConnectionError("no answer to PING")
        except Exception as exc:  # noqa: BLE001
            self.state.failed(exc)
            return False
        self.state.succeeded()
        return True

    def client_ip(self, request: Request) -> str:
        peer = request.client.host if request.client else None
        return client_ip(peer, request.headers.getlist("x-forwarded-for"), self.trusted)

    def _refuse(self, strategy: Counters, item: RateLimitItem, bucket: str,
                what: str) -> RateLimited:
        stats = self._call(strategy, "get_window_stats", item, bucket)
        retry = max(1, math.ceil(stats.reset_time - time.time()))
        return RateLimited(
            f"{what}: {item}. Retry in {retry} s.", detail={"limit": str(item), "retry_after_s": retry},
            headers={"Retry-After": str(retry), "X-RateLimit-Limit": str(item.amount),
                     "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(int(stats.reset_time))})

    def check(self, request: Request, response: Response, key: str | None = None) -> None:
        """`key`: the key a route reads from elsewhere than the headers (Sightengine's `api_secret`);
        the headers' key wins when both are sent. Blocking with a shared storage: see `check_async`."""
        ip = self.client_ip(request)
        request.state.client_ip = ip
        try:
            self._check(request, response, key, ip, "main")
        except StorageDown:
            RATE_LIMIT_STORAGE_ERRORS.labels(self.failure_mode).inc()
            if self.failure_mode == "closed":
                raise ServiceUnavailable(
                    "Rate limits cannot be checked now (their storage is unreachable). Retry shortly.",
                    detail={"reason": "rate_limit_storage_unreachable", "storage": self.state.scheme,
                            "retry_after_s": math.ceil(RECHECK_S)},
                    headers={"Retry-After": str(math.ceil(RECHECK_S))}) from None
            self._check(request, response, key, ip, self.local if self.failure_mode == "local" else None)

    async def check_async(self, request: Request, response: Response, key: str | None = None) -> None:
        """`check`, in a worker thread when the storage is shared (its calls block up to the timeout)."""
        if self.shared:
            await anyio.to_thread.run_sync(functools.partial(self.check, request, response, key))
        else:
            self.check(request, response, key)

    def _check(self, request: Request, response: Response, key: str | None, ip: str,
               strategy: Counters) -> None:
        """The checks against `strategy`'s counters ("main": the app's storage; None: count nothing, the `open`
        failure mode)."""
        if self.keys:
            fail_bucket = "authfail:" + ip
            for item in self.auth_fail_items if strategy is not None else ():
                if not self._call(strategy, "test", item, fail_bucket):
                    raise self._refuse(strategy, item, fail_bucket, "Too many failed authentications from this address")
            candidate = presented_key(request) or (key.strip() if key and key.strip() else None)
            if candidate is None or not key_is_valid(candidate, self.keys):
                for item in self.auth_fail_items if strategy is not None else ():
                    self._call(strategy, "hit", item, fail_bucket)
                if candidate is None:
                    raise Unauthorized("An API key is required: send it as X-Api-Key or Authorization: Bearer.")
                raise Unauthorized("The API key is not valid.")
            # never keep the key itself in the limiter's storage
            bucket = "key:" + hashlib.sha256(candidate.encode()).hexdigest()[:16]
        else:
            bucket = "ip:" + ip
        if not self.rate_items or strategy is None:
            return
        for item in self.rate_items:
            if not self._call(strategy, "hit", item, bucket):
                raise self._refuse(strategy, item, bucket, "Rate limit exceeded")
        first = self.rate_items[0]
        stats = self._call(strategy, "get_window_stats", first, bucket)
        response.headers["X-RateLimit-Limit"] = str(first.amount)
        response.headers["X-RateLimit-Remaining"] = str(max(0, stats.remaining))
        response.headers["X-RateLimit-Reset"] = str(int(stats.reset_time))


async def guard(request: Request, response: Response) -> None:
    """FastAPI dependency of every protected route: authentication and rate limits, in that order."""
    await request.app.state.access.check_async(request, response)
