"""The `describe` task: a caption of the target region, through the registry's `caption` model.

Every describe task of a request is captioned in one call per `max_length` (prepared inputs are
cached on each crop, generation is batched by the adapter), on the caption model's own executor,
with the model pinned while it runs (`ModelRegistry.call`)."""

from __future__ import annotations

from typing import Any

from app.tasks.stages import message


async def run_describe(orch: Any, params: list[Any], crops: list[Any]) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = [("error", "not run")] * len(params)
    by_length: dict[int, list[int]] = {}
    for k, p in enumerate(params):
        by_length.setdefault(int(p.max_length), []).append(k)
    for max_length, ks in by_length.items():
        images = [crops[k] for k in ks]

        def caption(adapter: Any, imgs: list[Any], n: int = max_length) -> list[str]:
            prepared = [img.cached(("prepare", "caption"), lambda img=img: adapter.prepare(img)) for img in imgs]
            return adapter.caption(prepared, n)

        for k, outcome in zip(ks, await captions(orch, caption, images)):
            out[k] = outcome
    return out


async def captions(orch: Any, caption: Any, images: list[Any]) -> list[tuple[str, Any]]:
    """One batched call; when it fails, each image on its own, so one bad crop fails only its tasks (as
    `Orchestrator.run_model` isolates the other models)."""
    try:
        return [("success", text) for text in await orch.registry.call("caption", caption, images)]
    except Exception as exc:  # noqa: BLE001 - the model's failure is these tasks' error
        if len(images) == 1:
            return [("error", f"The caption model failed: {message(exc)}")]
    return [outcome for image in images for outcome in await captions(orch, caption, [image])]
