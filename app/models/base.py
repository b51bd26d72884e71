"""The contract every model adapter follows.

An adapter *declares* what the rest of Loupe needs to know about its model, as class
attributes read without loading anything: the files it loads and where they come
from (with their sha256 where published), the score it returns (range and direction,
`app.models.outputs`), the largest batch one forward pass takes, whether it is
thread safe, whether it runs on torch, and which other models' outputs it consumes
(`depends`: the LAION head scores CLIP embeddings). The registry, /health,
`scripts/download_models.py`, the OpenAPI schema and the orchestrator's scheduling all
read these declarations instead of knowing each model.

It *does* three things: load its weights from a local path, make its input from a
`DecodedImage` (once per image, cached on the image), and run one batched forward
pass over many prepared inputs. The registry (`registry.py`) owns the lifecycle:
state, lock, device, load time, last error, idle unload.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from enum import StrEnum
from pathlib import Path
from typing import Any, ClassVar

from app.core.config import Settings
from app.imaging.decode import DecodedImage
from app.models.outputs import Output


class State(StrEnum):
    """A model's lifecycle state in the registry (its value is what /health shows)."""

    NOT_LOADED = "not_loaded"
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"


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
    #: what a complete model folder holds, relative to the resolved path (empty: the path is one file)
    files: ClassVar[tuple[str, ...]] = ()
    #: published sha256 of those files where known (download checks them; a prefix is enough)
    sha256: ClassVar[dict[str, str]] = {}
    #: the score it returns (range, direction); None for models whose output is not one number
    #: (embeddings, face boxes, emotion distributions)
    output: ClassVar[Output | None] = None
    #: registry models whose outputs are this model's inputs (run first; one dependency at most)
    depends: ClassVar[tuple[str, ...]] = ()
    #: False → the registry runs it on its own single-thread executor (DeepFace)
    thread_safe: ClassVar[bool] = True
    #: True → uses torch and can run on cuda
    uses_torch: ClassVar[bool] = False
    #: largest batch one forward pass gets (memory bound on CPU)
    max_batch: ClassVar[int] = 16

    def __init__(self, settings: Settings):
        self.settings = settings
        self.device = "cpu"
        #: the precision an ONNX model runs at (QUANTIZE, app.models.quantize); None for the others
        self.precision: Any = None

    @classmethod
    def on_torch(cls, settings: Settings) -> bool:
        """Whether this model runs on torch under `settings`: a torch model that has an ONNX export
        (`export_onnx`) runs on ONNX Runtime / OpenVINO unless INFERENCE_RUNTIME=torch. Only then does the
        registry resolve the torch device for it (which imports torch)."""
        return cls.uses_torch and (settings.inference_runtime == "torch" or not hasattr(cls, "export_onnx"))

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
            if attr not in ("settings", "device", "precision"):
                setattr(self, attr, None)

    # -- inference -----------------------------------------------------------------
    def prepare(self, image: DecodedImage) -> Any:
        """Per-image input (resized / normalised array). Runs once per image; cached by callers."""
        return image

    @abstractmethod
    def predict(self, batch: Sequence[Any]) -> list[Any]:
        """One batched forward pass over prepared inputs; one result per input, in order."""

