"""One model over a list of images inside a task request, isolated per image (shared by the engine and the
task types with their own runner)."""

from __future__ import annotations

from typing import Any

from app.services.orchestrator import Ingested, Orchestrator
from app.services.results import failure


def message(value: Any) -> str:
    """The words of a stored model failure."""
    return failure(value)[1].message if isinstance(value, BaseException) else "the model returned nothing"


async def run_stage(orch: Orchestrator, model: str, images: list[Any]) -> list[Any]:
    """`model` over `images` (DecodedImages) in one batch, isolated the orchestrator's way (a failing batch is
    retried image by image): the result, or the exception, of each."""
    if not images:
        return []
    tmp = [Ingested(index=k, image_id=str(k), image=img) for k, img in enumerate(images)]
    await orch.run_model(model, tmp)
    return [it.models.get(model) for it in tmp]
