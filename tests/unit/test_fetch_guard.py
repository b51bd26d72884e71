"""The SSRF guard rides on httpx's private `_pool`: these fail loudly if an httpx upgrade moves it."""

from __future__ import annotations

import asyncio

import httpcore
import httpx
import pytest

from app.core.config import Settings
from app.core.errors import UrlNotAllowed
from app.imaging.fetch import GuardedBackend, GuardedTransport, make_client, use_pool


def test_httpx_still_keeps_its_pool_where_the_guard_replaces_it():
    plain = httpx.AsyncHTTPTransport()
    assert isinstance(plain._pool, httpcore.AsyncConnectionPool)  # what use_pool relies on
    guarded = GuardedTransport(False, httpx.Limits(max_connections=8, max_keepalive_connections=2))
    pool = guarded._pool
    assert isinstance(pool, httpcore.AsyncConnectionPool)
    assert isinstance(pool._network_backend, GuardedBackend)  # httpcore's own attribute, read only here


def test_use_pool_refuses_a_transport_without_one():
    class Odd(httpx.AsyncHTTPTransport):
        def __init__(self):  # noqa: D107 - a transport shaped like a future httpx
            self._connections = None

    with pytest.raises(RuntimeError, match="_pool"):
        use_pool(Odd(), httpcore.AsyncConnectionPool())


def test_the_client_from_settings_goes_through_the_guard():
    """A literal private address is refused before any connection, through the real client."""
    client = make_client(Settings(_env_file=None))

    async def go():
        try:
            await client.get("http://127.0.0.1:9/x.jpg")
        finally:
            await client.aclose()

    with pytest.raises(UrlNotAllowed):
        asyncio.run(go())
