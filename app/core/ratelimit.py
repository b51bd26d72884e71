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

Counters live in the `limits` library's storage (moving window, in memory per worker process).
Probes (/health, /v1/version, /metrics) and the page are not under the /v1 router's dependency.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
import time
from dataclasses import dataclass, field

from fastapi import Request, Response
from limits import RateLimitItem, parse_many
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

from app.core.config import Settings
from app.core.errors import RateLimited, Unauthorized
from app.core.security import key_is_valid, presented_key

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


@dataclass
class AccessControl:
    """The limits of one app: parsed once from the settings at start-up."""

    keys: list[str]
    rate_items: list[RateLimitItem]
    auth_fail_items: list[RateLimitItem]
    trusted: list[Network] | None
    strategy: MovingWindowRateLimiter = field(default_factory=lambda: MovingWindowRateLimiter(MemoryStorage()))

    @classmethod
    def from_settings(cls, settings: Settings) -> AccessControl:
        return cls(keys=settings.api_key_list,
                   rate_items=parse_many(settings.rate_limit) if settings.rate_limit.strip() else [],
                   auth_fail_items=parse_many(settings.auth_fail_limit) if settings.auth_fail_limit.strip() else [],
                   trusted=parse_networks(settings.forwarded_allow_ips))

    def client_ip(self, request: Request) -> str:
        peer = request.client.host if request.client else None
        return client_ip(peer, request.headers.getlist("x-forwarded-for"), self.trusted)

    def _refuse(self, item: RateLimitItem, bucket: str, what: str) -> RateLimited:
        stats = self.strategy.get_window_stats(item, bucket)
        retry = max(1, math.ceil(stats.reset_time - time.time()))
        return RateLimited(
            f"{what}: {item}. Retry in {retry} s.", detail={"limit": str(item), "retry_after_s": retry},
            headers={"Retry-After": str(retry), "X-RateLimit-Limit": str(item.amount),
                     "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(int(stats.reset_time))})

    def check(self, request: Request, response: Response, key: str | None = None) -> None:
        """`key`: the key a route reads from elsewhere than the headers (Sightengine's `api_secret`);
        the headers' key wins when both are sent."""
        ip = self.client_ip(request)
        request.state.client_ip = ip
        if self.keys:
            fail_bucket = "authfail:" + ip
            for item in self.auth_fail_items:
                if not self.strategy.test(item, fail_bucket):
                    raise self._refuse(item, fail_bucket, "Too many failed authentications from this address")
            candidate = presented_key(request) or (key.strip() if key and key.strip() else None)
            if candidate is None or not key_is_valid(candidate, self.keys):
                for item in self.auth_fail_items:
                    self.strategy.hit(item, fail_bucket)
                if candidate is None:
                    raise Unauthorized("An API key is required: send it as X-Api-Key or Authorization: Bearer.")
                raise Unauthorized("The API key is not valid.")
            # never keep the key itself in the limiter's storage
            bucket = "key:" + hashlib.sha256(candidate.encode()).hexdigest()[:16]
        else:
            bucket = "ip:" + ip
        if not self.rate_items:
            return
        for item in self.rate_items:
            if not self.strategy.hit(item, bucket):
                raise self._refuse(item, bucket, "Rate limit exceeded")
        first = self.rate_items[0]
        stats = self.strategy.get_window_stats(first, bucket)
        response.headers["X-RateLimit-Limit"] = str(first.amount)
        response.headers["X-RateLimit-Remaining"] = str(max(0, stats.remaining))
        response.headers["X-RateLimit-Reset"] = str(int(stats.reset_time))


async def guard(request: Request, response: Response) -> None:
    """FastAPI dependency of every protected route: authentication and rate limits, in that order."""
    request.app.state.access.check(request, response)
