"""The process-wide decode memory budget: what a decode reserves, first come first served, 503 past the wait."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from app.imaging.budget import MemoryBudget, ServerBusy
from app.imaging.decode import decode_image, probe
from tests.helpers import encode, photo, ramp_png

MiB = 1 << 20


def test_reservations_are_granted_in_order_and_capped():
    async def scenario():
        budget = MemoryBudget(100 * MiB, wait_s=5)
        order: list[str] = []
        a = await budget.acquire(60 * MiB)
        assert budget.free == 40 * MiB

        async def take(name, n, hold):
            got = await budget.acquire(n)
            order.append(name)
            await asyncio.sleep(hold)
            budget.release(got)

        big = asyncio.create_task(take("big", 80 * MiB, 0.05))
        await asyncio.sleep(0.01)
        small = asyncio.create_task(take("small", 10 * MiB, 0))  # fits now, but queues behind "big"
        await asyncio.sleep(0.01)
        assert order == []
        budget.release(a)
        await asyncio.gather(big, small)
        assert order == ["big", "small"] and budget.free == budget.total
        # a decode larger than the whole budget gets the whole budget (it runs alone), not a refusal
        assert await budget.acquire(500 * MiB) == 100 * MiB
        budget.release(100 * MiB)

    asyncio.run(scenario())


def test_a_wait_past_decode_wait_s_is_503_with_retry_after_and_leaves_no_trace():
    async def scenario():
        budget = MemoryBudget(10 * MiB, wait_s=0.1)
        held = await budget.acquire(10 * MiB)
        with pytest.raises(ServerBusy) as info:
            await budget.acquire(1 * MiB)
        exc = info.value
        assert exc.status_code == 503 and exc.error_type == "server_busy"
        assert exc.headers["Retry-After"] == "1" and exc.detail["budget_mib"] == 10.0
        assert budget._waiters == deque_empty()
        budget.release(held)
        assert budget.free == budget.total
        # a cancelled waiter gives nothing away either
        held = await budget.acquire(10 * MiB)
        waiter = asyncio.create_task(budget.acquire(5 * MiB))
        await asyncio.sleep(0.01)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        budget.release(held)
        assert budget.free == budget.total and not budget._waiters

    asyncio.run(scenario())


def deque_empty():
    from collections import deque

    return deque()


@pytest.mark.parametrize("mode", ["L", "I;16", "RGBA"])
def test_near_limit_png_is_reduced_before_conversion_and_its_cost_is_known(mode):
    """A small file that decodes to millions of pixels: the estimate covers the decoder's buffer, and
    what is kept is no bigger than the analyses need (never a full-size RGB or float copy)."""
    side = 3000
    data = ramp_png(side, mode)
    assert len(data) < 200_000
    plan = probe(data, max_pixels=side * side, min_dim=1024, gray=False)
    bytes_per_px = {"L": 1, "I;16": 2, "RGBA": 4}[mode]
    assert plan.cost_bytes >= side * side * bytes_per_px
    img = decode_image(data, max_pixels=side * side, min_dim=1024, gray=False)
    assert (img.width, img.height) == (side, side)
    assert 1024 <= max(img.pixels.shape[:2]) < 2048 and img.pixels.dtype == np.uint8
    # the box reduction keeps the picture: a left-to-right ramp, composited over white for RGBA
    row = img.pixels[img.pixels.shape[0] // 2, :, 0].astype(int)
    black = 255 - 200 if mode == "RGBA" else 0  # alpha 200 over white lifts black to 55
    assert abs(row[0] - black) <= 3 and row[-1] >= 250 and np.all(np.diff(row) >= 0)


def test_reduced_png_measures_like_the_full_decode():
    """Box-reducing a large PNG before the analysis resize changes the gate's numbers by very little."""
    from app.imaging.decode import resize_max
    from app.services.blur import laplacian_variance

    big = np.ascontiguousarray(np.tile(photo("astronaut"), (6, 6, 1)))  # 3072 x 3072
    data = encode(big, "PNG")
    reduced = decode_image(data, max_pixels=10**8, min_dim=1024, gray=True)
    full = decode_image(data, max_pixels=10**8, min_dim=None, gray=True)
    a = laplacian_variance(reduced.gray_max(1024))
    b = laplacian_variance(resize_max(full.pixels, 1024))
    assert abs(a - b) / b < 0.02
