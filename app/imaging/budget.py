"""A process-wide budget of decode working memory (DECODE_MEMORY_MB).

Each decode reserves its estimated peak (`decode.probe(...).cost_bytes`: the decoder's
buffer from the header's size and mode, plus the reduced copy's conversions) before it
starts and gives it back when it ends. Reservations are granted first come, first served,
so a large image is not starved by a stream of small ones; a decode larger than the whole
budget is granted the whole budget (it then runs alone). A reservation not granted within
DECODE_WAIT_S is refused with 503 `server_busy` and Retry-After, in the image's own result:
in a batch only that image fails.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from app.core.errors import ServiceUnavailable
from app.core.metrics import DECODE_BUDGET_IN_USE


class ServerBusy(ServiceUnavailable):
    error_type = "server_busy"


class MemoryBudget:
    def __init__(self, total_bytes: int, wait_s: float):
        self.total = max(1, int(total_bytes))
        self.wait_s = wait_s
        self.free = self.total
        self._waiters: deque[tuple[int, asyncio.Future]] = deque()

    @property
    def in_use(self) -> int:
        return self.total - self.free

    def _grant_waiters(self) -> None:
        while self._waiters and self._waiters[0][0] <= self.free:
            n, fut = self._waiters.popleft()
            if fut.done():  # given up on; nothing to grant
                continue
            self.free -= n
            fut.set_result(None)
        DECODE_BUDGET_IN_USE.set(self.in_use)

    def release(self, n: int) -> None:
        self.free += n
        self._grant_waiters()

    async def acquire(self, nbytes: int) -> int:
        """Reserve `nbytes` (capped at the whole budget); returns what was reserved."""
        n = min(max(0, int(nbytes)), self.total)
        if not self._waiters and n <= self.free:
            self.free -= n
            DECODE_BUDGET_IN_USE.set(self.in_use)
            return n
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        entry = (n, fut)
        self._waiters.append(entry)
        try:
            async with asyncio.timeout(self.wait_s):
                await asyncio.shield(fut)
            return n
        except BaseException as exc:
            if fut.done() and not fut.cancelled():  # granted in the same instant: hand it back
                self.release(n)
            else:
                fut.cancel()
                try:
                    self._waiters.remove(entry)
                except ValueError:
                    pass
                self._grant_waiters()  # the head may have changed
            if isinstance(exc, TimeoutError):
                retry = max(1, math.ceil(self.wait_s))
                raise ServerBusy(
                    f"The server is decoding other large images; this one needs about {n >> 20} MiB of the "
                    f"{self.total >> 20} MiB decode budget (DECODE_MEMORY_MB), which did not free up within "
                    f"{self.wait_s:g} s. Retry in {retry} s.",
                    detail={"needed_mib": round(n / 2**20, 1), "budget_mib": round(self.total / 2**20, 1),
                            "retry_after_s": retry},
                    headers={"Retry-After": str(retry)}) from None
            raise

    @asynccontextmanager
    async def reserve(self, nbytes: int) -> AsyncIterator[int]:
        n = await self.acquire(nbytes)
        try:
            yield n
        finally:
            self.release(n)
