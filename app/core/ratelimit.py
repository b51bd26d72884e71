"""Per-client rate limits with slowapi, keyed by API key when one is sent, else by client IP."""

from __future__ import annotations

import hashlib

from fastapi import Request
from slowapi import Limiter
from slowapi.util import get_remote_address

from app.core.security import presented_key


def client_key(request: Request) -> str:
    key = presented_key(request)
    if key:
        # Never keep the key itself in the limiter's storage.
        return "key:" + hashlib.sha256(key.encode()).hexdigest()[:16]
    return "ip:" + (get_remote_address(request) or "unknown")


def make_limiter(rate_limit: str) -> Limiter:
    limits = [rate_limit] if rate_limit.strip() else []
    return Limiter(
        key_func=client_key,
        default_limits=limits,
        enabled=bool(limits),
        headers_enabled=True,
        storage_uri="memory://",
    )
