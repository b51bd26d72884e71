"""JPEG blocking seen in the pixels: the 8x8 grid a heavily compressed JPEG leaves behind.

JPEG codes 8x8 blocks independently; at low quality each block keeps little more than its mean,
and steps appear along the grid. The measure compares the mean absolute difference between
neighbouring pixels across one phase of the grid with the mean across the other seven phases,
per axis, with the phase found as the strongest (crops shift the grid) and the other phases
summarised by their median (a crop of a JPEG saved again has two grids): about 1.0–1.1 for an
image that was never JPEG-compressed or was saved at high quality, 1.3–2.8 at quality 40 and
2.7–10 at quality 5 on skimage's photos; noise does not move it (noise of std 25: 1.01–1.02).
Steps at every other column (an image enlarged 2x by repeating pixels, such as skimage's moon) are
told apart from a grid: there the phases 2, 4 and 6 away from the peak are as strong as it.

It is only meaningful on pixels at the file's own scale (a resize blurs the grid away), so the
gate measures it when the analysis image is the decoded image, and reports null otherwise.
While blocking is present, steps along the grid are not detail: the sharpness measures then use
the block interiors only (`interior_mask`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BLOCK = 8
#: a ratio at or above this is blocking (uncompressed and high-quality files read 1.0–1.1)
BLOCKING_MIN = 1.15
#: the compression component: 1 at ratio <= CLEAN, 0 at >= BAD, linear in log(ratio)
CLEAN, BAD = 1.1, 3.0


@dataclass(frozen=True)
class Blockiness:
    ratio: float  # >= ~1; the mean of both axes
    phase_x: int  # grid column where blocks meet: between x % 8 == phase and phase + 1
    phase_y: int

    @property
    def present(self) -> bool:
        return self.ratio >= BLOCKING_MIN


def _axis(diffs: np.ndarray) -> tuple[float, int]:
    n = len(diffs) - len(diffs) % BLOCK
    per_phase = diffs[:n].reshape(-1, BLOCK).mean(axis=0)
    phase = int(np.argmax(per_phase))
    others = float(np.median(np.delete(per_phase, phase)))  # median: a second, shifted grid (a re-save of a crop) does not dilute it
    # a pattern of period 2 (an image enlarged 2x by repeating pixels: steps at every other column) is
    # not a grid of period 8: the phases 2, 4 and 6 away are then as strong as the peak
    period_two = float(per_phase[(phase + np.array([2, 4, 6])) % BLOCK].min())
    return float(per_phase[phase]) / max(others, period_two, 1e-6), phase


def blockiness(gray: np.ndarray) -> Blockiness | None:
    """The grid ratio of a uint8 grey image; None when it is too small to hold a few blocks."""
    h, w = gray.shape[:2]
    if min(h, w) < 4 * BLOCK:
        return None
    g = gray.astype(np.float32)
    rx, px = _axis(np.abs(np.diff(g, axis=1)).mean(axis=0))
    ry, py = _axis(np.abs(np.diff(g, axis=0)).mean(axis=1))
    return Blockiness(ratio=(rx + ry) / 2, phase_x=px, phase_y=py)


def interior_mask(shape: tuple[int, int], b: Blockiness) -> np.ndarray:
    """True where a 3x3 Laplacian does not straddle a block boundary (the two pixel rows and columns
    on either side of each grid line are left out)."""
    h, w = shape[:2]
    cols = np.ones(w, bool)
    rows = np.ones(h, bool)
    cols[b.phase_x::BLOCK] = False
    cols[(b.phase_x + 1) % BLOCK::BLOCK] = False
    rows[b.phase_y::BLOCK] = False
    rows[(b.phase_y + 1) % BLOCK::BLOCK] = False
    return rows[:, None] & cols[None, :]


def blocking_to_unit(ratio: float) -> float:
    """1 at ratio <= 1.1, 0.01 at 3 (linear in log(ratio) in between) and falling beyond (as (3 / ratio)²)."""
    from app.services.score import tailed

    if ratio <= CLEAN:
        return 1.0
    unit = float(min(1.0, max(0.0, 1.0 - np.log(ratio / CLEAN) / np.log(BAD / CLEAN))))
    return tailed(unit, (BAD / ratio) ** 2)
