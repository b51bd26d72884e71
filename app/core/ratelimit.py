"""Per-client rate limits (RATE_LIMIT, e.g. "60/minute"), keyed by API key when one is sent, else client IP.

slowapi's Limiter holds the `limits` storage and strategy (moving window, in
memory). It is applied as a dependency of the /v1 router, so probes (/health,
/v1/version, /metrics) and the page are never limited, and a 429 comes back in
the one error envelope with Retry-After and X-RateLimit-* headers.
"""

from __future__ import annotations

import hashlib
import math
import time

from fastapi import Request, Response
from limits import parse_many
from slowapi import Limiter
from slowapi.util import get_remote_address

from app.core.errors import RateLimited
from app.core.security import presented_key


def client_key(request: Request) -> str:
    key = presented_key(request)
    if key:
        # Never keep the key itself in the limiter's storage.
        return "key:" + hashlib.sha256(key.encode()).hexdigest()[:16]
    return "ip:" + (get_remote_address(request) or "unknown")


def make_limiter(rate_limit: str) -> Limiter:
    limits = [rate_limit] if rate_limit.strip() else []
    limiter = Limiter(key_func=client_key, default_limits=limits, enabled=bool(limits),
                      headers_enabled=True, storage_uri="memory://", strategy="moving-window")
    limiter.loupe_items = parse_many(rate_limit) if limits else []  # type: ignore[attr-defined]
    return limiter


async def enforce_rate_limit(request: Request, response: Response) -> None:
    """FastAPI dependency: count this request against every configured limit for its client."""
    limiter: Limiter = request.app.state.limiter
    items = getattr(limiter, "loupe_items", [])
    if not limiter.enabled or not items:
        return
    key = client_key(request)
    strategy = limiter.limiter
    for item in items:
        if not strategy.hit(item, key):
            stats = strategy.get_window_stats(item, key)
            retry = max(1, math.ceil(stats.reset_time - time.time()))
            raise RateLimited(
                f"Rate limit exceeded: {item}. Retry in {retry} s.",
                detail={"limit": str(item), "retry_after_s": retry},
                headers={"Retry-After": str(retry), "X-RateLimit-Limit": str(item.amount),
                         "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(int(stats.reset_time))},
            )
    first = items[0]
    stats = strategy.get_window_stats(first, key)
    response.headers["X-RateLimit-Limit"] = str(first.amount)
    response.headers["X-RateLimit-Remaining"] = str(max(0, stats.remaining))
    response.headers["X-RateLimit-Reset"] = str(int(stats.reset_time))
