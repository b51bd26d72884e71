"""Optional API keys: `X-Api-Key: <key>` or `Authorization: Bearer <key>`, compared in constant time."""

from __future__ import annotations

import hmac

from fastapi import Request

from app.core.config import get_settings
from app.core.errors import Unauthorized


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


async def require_api_key(request: Request) -> None:
    """FastAPI dependency for every protected route. No keys configured = open."""
    keys = request.app.state.settings.api_key_list if hasattr(request.app.state, "settings") else get_settings().api_key_list
    if not keys:
        return
    candidate = presented_key(request)
    if candidate is None:
        raise Unauthorized("An API key is required: send it as X-Api-Key or Authorization: Bearer.")
    if not key_is_valid(candidate, keys):
        raise Unauthorized("The API key is not valid.")
