"""Optional API keys: `X-Api-Key: <key>` or `Authorization: Bearer <key>`, compared in constant time.

The check itself runs in `app.core.ratelimit.guard`, together with the limits that depend on it."""

from __future__ import annotations

import hmac

from fastapi import Request


def presented_key(request: Request) -> str | None:
    key = request.headers.get("x-api-key")
    if key:
        return key.strip()
    auth = request.headers.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


def key_is_valid(candidate: str, keys: list[str]) -> bool:
    # Compare against every key (no early exit), each in constant time.
    ok = False
    cand = candidate.encode()
    for key in keys:
        ok |= hmac.compare_digest(cand, key.encode())
    return ok
