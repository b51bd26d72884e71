"""The contract every model adapter follows.

An adapter knows where its weights live (a sub-path of MODEL_DIR, or a per-model
setting), how to load them from that local path, how to make its input from a
`DecodedImage` (once per image, cached on the image), and how to run one batched
forward pass over many prepared inputs. The registry (`registry.py`) owns the
lifecycle: state, lock, device, load time, last error, idle unload.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar, Sequence

from app.core.config import Settings
from app.imaging.decode import DecodedImage


class ModelNotFound(FileNotFoundError):
    """The model's files are not at the resolved local path."""


class ModelAdapter(ABC):
    #: registry key, e.g. "brisque"
    name: ClassVar[str]
    #: one line for /v1/operations and /health
    title: ClassVar[str]
    #: Settings attribute that overrides the path ("" = use MODEL_DIR / default_subdir)
    path_setting: ClassVar[str | None] = None
    #: folder under MODEL_DIR when the setting is empty
    default_subdir: ClassVar[str]
    #: where scripts/download_models.py gets it (hub id or URL); documentation only at run time
    source: ClassVar[str] = ""
    #: False → the registry runs it on its own single-thread executor (DeepFace)
    thread_safe: ClassVar[bool] = True
    #: True → uses torch and can run on cuda
    uses_torch: ClassVar[bool] = False
    #: largest batch one forward pass gets (memory bound on CPU)
    max_batch: ClassVar[int] = 16

    def __init__(self, settings: Settings):
        self.settings = settings
        self.device = "cpu"

    # -- paths ----------------------------------------------------------------
    def resolve_path(self) -> Path:
        override = getattr(self.settings, self.path_setting, "") if self.path_setting else ""
        if override:
            return Path(override).expanduser()
        return Path(self.settings.model_dir).expanduser() / self.default_subdir

    # -- lifecycle ---------------------------------------------------------------
    @abstractmethod
    def load(self, path: Path, device: str) -> None:
        """Load weights from the local `path` onto `device`. Raise ModelNotFound if absent."""

    def unload(self) -> None:
        """Drop references to weights (idle TTL). Override when more is held."""
        for attr in list(vars(self)):
            if attr not in ("settings", "device"):
                setattr(self, attr, None)

    # -- inference -----------------------------------------------------------------
    def prepare(self, image: DecodedImage) -> Any:
        """Per-image input (resized / normalised array). Runs once per image; cached by callers."""
        return image

    @abstractmethod
    def predict(self, batch: Sequence[Any]) -> list[Any]:
        """One batched forward pass over prepared inputs; one result per input, in order."""

