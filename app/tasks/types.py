"""The task types: what each one runs, on which targets, and how its model output becomes `data`.

Adding a type is one entry here (and its request model in app.schemas.tasks): a region task
names the registry model it runs on the region's crop and a function from that model's output
to the task's `data`; the engine (app.tasks.engine) resolves regions, batches every model's
crops across the images of a request, and isolates failures per task.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel

from app.schemas import tasks as T
from app.tasks.classify import run_classify
from app.tasks.describe import run_describe

REGION_TARGETS = ("whole_image", "prominent_person", "prominent_face")


def vector_data(model_name: str) -> Callable[[Any, BaseModel, Any], dict[str, Any]]:
    def data(output: Any, params: BaseModel, adapter: Any) -> dict[str, Any]:
        v = np.asarray(output, dtype=np.float32).reshape(-1)
        return {"model": str(getattr(adapter, "model_name", None) or model_name), "dim": int(v.size),
                "vector": [round(float(x), 6) for x in v]}
    return data


def tag_data(output: Any, params: BaseModel, adapter: Any) -> dict[str, Any]:
    from app.models.tags import top_labels

    assert isinstance(params, T.TagParams)
    labels = top_labels(np.asarray(output), adapter.labels, top=params.top, minconf=params.minconf)
    return {"model": str(getattr(adapter, "model_name", None) or "imagenet"), "top": params.top,
            "minconf": params.minconf, "labels": labels}


@dataclass(frozen=True)
class TaskType:
    name: str
    description: str
    targets: tuple[str, ...]
    default_target: str
    params: type[BaseModel]
    #: registry model run on the region's crop (None: the box itself, or a whole-image analysis)
    model: str | None = None
    #: model output for one region → the task's `data`
    data: Callable[[Any, BaseModel, Any], Any] | None = None
    #: a whole-image analysis: the /v1/analyze result field it returns
    analysis: str | None = None
    #: its own runner, for types that are more than "a model over the crop": (orchestrator, each task's
    #: params, each task's crop) → per task ("success", data) | ("skipped", why) | ("error", why)
    runner: Callable[[Any, list[Any], list[Any]], Awaitable[list[tuple[str, Any]]]] | None = None


TASK_TYPES: dict[str, TaskType] = {t.name: t for t in (
    TaskType("detect_bounding_box", "The box of the prominent person or face, with its score and area share.",
             ("prominent_person", "prominent_face"), "prominent_person", T.BoxParams),
    TaskType("embed_clip", "CLIP image embedding of the target region (L2-normalised).", REGION_TARGETS,
             "whole_image", T.RegionParams, model="clip", data=vector_data("clip")),
    TaskType("embed_dinov2", "DINOv2 CLS embedding of the target region (L2-normalised).", REGION_TARGETS,
             "whole_image", T.RegionParams, model="dinov2", data=vector_data("dinov2")),
    TaskType("embed_mobilenet", "MobileNetV1 feature embedding of the target region (L2-normalised, 1024-d).",
             REGION_TARGETS, "whole_image", T.RegionParams, model="mobilenet", data=vector_data("mobilenet_v1")),
    TaskType("tag_imagenet", "ImageNet-1K labels of the target region: at most `top`, each at least `minconf`.",
             REGION_TARGETS, "whole_image", T.TagParams, model="tags", data=tag_data),
    TaskType("classify", "Is the target region in a collection? The collection's best classifier (CLASSIFIER_DIR) "
             "embeds it with its own embedding model and answers with a probability and its threshold.",
             REGION_TARGETS, "whole_image", T.ClassifyParams, runner=run_classify),
    TaskType("describe", "A caption of the target region (the caption model; at most `max_length` tokens).",
             REGION_TARGETS, "whole_image", T.DescribeParams, runner=run_describe),
    *(TaskType(name, f"The whole-image `{name}` analysis, as /v1/analyze returns it.", ("whole_image",),
               "whole_image", T.WholeImageParams, analysis=name)
      for name in ("blur", "exposure", "quality", "aesthetic", "faces", "emotion")),
)}
