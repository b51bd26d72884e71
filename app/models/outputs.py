"""What each scoring model returns: its range and which end is better, declared once.

The adapters declare these (`ModelAdapter.output`), the OpenAPI schema states them
(`app.schemas.analysis`), and the quality score maps them (`app.services.score`): one
declaration, so a range can never be written differently in two places. Kept free of
heavy imports so that schemas can use it without loading numpy, OpenCV or torch.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Output:
    """A model's score: `lo`..`hi` (None: unbounded on that side) and its direction."""

    lo: float | None
    hi: float | None
    higher_is_better: bool | None
    meaning: str = ""

    @property
    def range(self) -> tuple[float | None, float | None]:
        return self.lo, self.hi


BRISQUE = Output(0.0, 100.0, False, "BRISQUE distortion (LIVE-trained SVR); about 0..100, can leave that range")
NIQE = Output(0.0, None, False, "NIQE distance to the pristine natural-scene model")
NIMA_TECHNICAL = Output(0.0, 1.0, True, "NIMA technical quality (KonIQ-10k MOS, rescaled)")
NIMA_AESTHETIC = Output(1.0, 10.0, True, "NIMA aesthetic mean rating (AVA, 10 bins)")
LAION_AESTHETIC = Output(1.0, 10.0, True, "LAION aesthetic predictor rating")
