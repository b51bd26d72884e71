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

        try:
            texts = await orch.registry.call("caption", caption, images)
        except Exception as exc:  # noqa: BLE001 - the model's failure is these tasks' error
            for k in ks:
                out[k] = ("error", f"The caption model failed: {message(exc)}")
            continue
        for k, text in zip(ks, texts):
            out[k] = ("success", text)
    return out
