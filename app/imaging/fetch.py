"""SSRF-safe image download.

The guard sits where the socket is opened: a custom httpcore network backend
resolves the host, refuses it when ANY of its addresses is not a public unicast
address (loopback, private, link-local such as 169.254.169.254, CGNAT,
multicast, reserved, unspecified, IPv4-mapped/6to4/NAT64 forms of those), and
then connects to the very address it checked. There is no window between the
check and the connect for DNS rebinding, odd spellings (`2130706433`,
`0x7f.1`, `[::ffff:127.0.0.1]`) resolve to the address that is checked, and
every redirect hop goes through the same backend because redirects are followed
here, one at a time, up to FETCH_MAX_REDIRECTS.

Bodies are streamed: a declared Content-Length over the limit is refused before
reading, and reading stops as soon as the limit is passed. The whole fetch has a
total deadline (FETCH_TIMEOUT_S) on top of httpx's connect timeout.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin

import httpcore
import httpx

from app.core.config import VERSION, Settings
from app.core.errors import ImageTooLarge, UnreachableUrl, UpstreamTimeout, UrlNotAllowed
from app.core.metrics import BYTES_FETCHED

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def _embedded_ipv4(addr: IPAddress) -> ipaddress.IPv4Address | None:
    """IPv4 carried inside an IPv6 address (mapped, 6to4, NAT64, compat)."""
    if not isinstance(addr, ipaddress.IPv6Address):
        return None
    if addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    if addr.sixtofour is not None:
        return addr.sixtofour
    if addr in _NAT64:
        return ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
    if int(addr) >> 32 == 0 and int(addr) > 1:  # deprecated IPv4-compatible ::a.b.c.d
        return ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
    return None


def address_refusal(addr: IPAddress) -> str | None:
    """Why this address may not be fetched, or None when it is a public unicast address."""
    inner = _embedded_ipv4(addr)
    if inner is not None:
        reason = address_refusal(inner)
        return f"{reason} (inside {addr})" if reason else None
    checks = (
        ("unspecified", addr.is_unspecified),
        ("loopback", addr.is_loopback),
        ("link-local", addr.is_link_local),
        ("multicast", addr.is_multicast),
        ("private", addr.is_private),
        ("reserved", addr.is_reserved),
        ("site-local", getattr(addr, "is_site_local", False)),
    )
    for name, hit in checks:
        if hit:
            return f"{addr} is a {name} address"
    if not addr.is_global:
        return f"{addr} is not a public address"
    return None


def parse_ip_literal(host: str) -> IPAddress | None:
    """The address a host spelled as an IP literal names, including legacy IPv4 forms."""
    host = host.strip("[]")
    try:
        return ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        pass
    try:  # inet_aton accepts decimal (2130706433), hex (0x7f000001), octal and short forms (127.1)
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        return None


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """Resolves, checks and connects to the checked address."""

    def __init__(self, allow_private: bool, inner: httpcore.AsyncNetworkBackend | None = None):
        self.allow_private = allow_private
        self.inner = inner or httpcore.AnyIOBackend()

    async def resolve(self, host: str, port: int) -> list[str]:
        literal = parse_ip_literal(host)
        if literal is not None:
            addrs = [literal]
        else:
            loop = asyncio.get_running_loop()
            try:
                infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except socket.gaierror as exc:
                raise UnreachableUrl(f"The host {host!r} could not be resolved.", detail={"host": host}) from exc
            addrs = []
            for info in infos:
                a = ipaddress.ip_address(str(info[4][0]).split("%")[0])  # the host text (IPv6: may end in %scope)
                if a not in addrs:
                    addrs.append(a)
        if not self.allow_private:
            for a in addrs:
                reason = address_refusal(a)
                if reason:
                    raise UrlNotAllowed(
                        f"URLs that resolve to non-public addresses are not allowed: {reason}.",
                        detail={"host": host, "address": str(a)},
                    )
        return [str(a) for a in addrs]

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None, socket_options: Any = None):
        addrs = await self.resolve(host, port)
        last: Exception | None = None
        for addr in addrs:
            try:
                return await self.inner.connect_tcp(addr, port, timeout=timeout,
                                                    local_address=local_address, socket_options=socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
        assert last is not None
        raise last

    async def connect_unix_socket(self, *args, **kwargs):  # pragma: no cover - never used for URLs
        raise UrlNotAllowed("Unix sockets are not allowed.")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


class GuardedTransport(httpx.AsyncHTTPTransport):
    """httpx's transport over an httpcore pool whose network backend is the guard.

    httpx takes no network backend, so the pool it builds is replaced by one built here from our own
    settings (public httpx / httpcore API), and `use_pool` is the one place that relies on httpx's
    private `_pool` attribute: tests/unit/test_fetch_guard.py fails loudly if an upgrade renames it."""

    def __init__(self, allow_private: bool, limits: httpx.Limits):
        super().__init__(limits=limits, retries=0, trust_env=False)
        use_pool(self, httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(trust_env=False),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            http1=True, http2=False, retries=0,
            network_backend=GuardedBackend(allow_private),
        ))


def use_pool(transport: httpx.AsyncHTTPTransport, pool: httpcore.AsyncConnectionPool) -> None:
    """Make `transport` send through `pool` (httpx 0.28 keeps it as `_pool` and reads nothing else of it)."""
    if not isinstance(getattr(transport, "_pool", None), httpcore.AsyncConnectionPool):
        raise RuntimeError("httpx.AsyncHTTPTransport no longer keeps its connection pool in `_pool`: "
                           "the SSRF guard cannot be installed; pin httpx or update app.imaging.fetch.use_pool")
    transport._pool = pool


def make_client(settings: Settings) -> httpx.AsyncClient:
    timeout = httpx.Timeout(settings.fetch_timeout_s, connect=settings.fetch_connect_timeout_s)
    return httpx.AsyncClient(
        transport=GuardedTransport(settings.allow_private_urls,
                                   httpx.Limits(max_connections=64, max_keepalive_connections=16)),
        timeout=timeout,
        follow_redirects=False,
        trust_env=False,  # never route image fetches through an env proxy
        headers={"User-Agent": f"Loupe/{VERSION} (+image analysis)", "Accept": "image/*,*/*;q=0.5"},
    )


@dataclass
class Fetched:
    data: bytes
    final_url: str
    content_type: str | None
    redirects: int


def check_url(url: str) -> httpx.URL:
    try:
        parsed = httpx.URL(url)
    except Exception as exc:  # noqa: BLE001
        raise UrlNotAllowed(f"The URL is not valid: {exc}", detail={"url": url[:200]}) from exc
    if parsed.scheme not in ("http", "https"):
        raise UrlNotAllowed("Only http and https URLs can be fetched.", detail={"scheme": parsed.scheme})
    if not parsed.host:
        raise UrlNotAllowed("The URL has no host.", detail={"url": url[:200]})
    return parsed


async def fetch_url(client: httpx.AsyncClient, url: str, settings: Settings) -> Fetched:
    """Download `url` within the size, time and redirect limits. Raises ApiError subclasses."""
    limit = settings.max_read_bytes  # until the first bytes say which limit applies
    try:
        async with asyncio.timeout(settings.fetch_timeout_s):
            current = check_url(url)
            for hop in range(settings.fetch_max_redirects + 1):
                request = client.build_request("GET", current)
                response = await client.send(request, stream=True)
                try:
                    if response.is_redirect:
                        location = response.headers.get("location")
                        if not location:
                            raise UnreachableUrl("The server sent a redirect without a location.")
                        current = check_url(urljoin(str(current), location))
                        continue
                    if response.status_code >= 400:
                        raise UnreachableUrl(
                            f"The image URL answered HTTP {response.status_code}.",
                            detail={"status_code": response.status_code, "url": str(current)[:500]},
                        )
                    declared = response.headers.get("content-length")
                    if declared and declared.isdigit() and int(declared) > limit:
                        raise ImageTooLarge(
                            f"The image is {int(declared)} bytes; the limit is {limit} (MAX_IMAGE_MB, or MAX_RAW_MB "
                            "for camera RAW).",
                            detail={"declared_bytes": int(declared), "max_bytes": limit},
                        )
                    chunks: list[bytes] = []
                    total = 0
                    setting = "MAX_IMAGE_MB, or MAX_RAW_MB for camera RAW"
                    decided = False
                    async for chunk in response.aiter_bytes():
                        if not decided and total + len(chunk) >= 16:  # enough of the head to tell a RAW
                            decided = True
                            limit, setting = settings.byte_limit(b"".join(chunks) + chunk)
                            if declared and declared.isdigit() and int(declared) > limit:  # known now: not a RAW
                                raise ImageTooLarge(
                                    f"The image is {int(declared)} bytes; the limit is {limit} ({setting}).",
                                    detail={"declared_bytes": int(declared), "max_bytes": limit},
                                )
                        total += len(chunk)
                        if total > limit:
                            BYTES_FETCHED.inc(total)
                            raise ImageTooLarge(
                                f"The image is larger than the limit of {limit} bytes ({setting}).",
                                detail={"max_bytes": limit},
                            )
                        chunks.append(chunk)
                    BYTES_FETCHED.inc(total)
                    return Fetched(b"".join(chunks), str(current), response.headers.get("content-type"), hop)
                finally:
                    await response.aclose()
            raise UnreachableUrl(
                f"Too many redirects (more than FETCH_MAX_REDIRECTS={settings.fetch_max_redirects}).",
                detail={"max_redirects": settings.fetch_max_redirects},
            )
    except TimeoutError as exc:
        raise UpstreamTimeout(
            f"Fetching the image took longer than {settings.fetch_timeout_s} s.",
            detail={"timeout_s": settings.fetch_timeout_s},
        ) from exc
    except httpx.TimeoutException as exc:
        raise UpstreamTimeout(f"Fetching the image timed out ({type(exc).__name__}).") from exc
    except httpx.HTTPError as exc:
        raise UnreachableUrl(f"The image URL could not be reached: {type(exc).__name__}.",
                             detail={"reason": str(exc)[:200]}) from exc
