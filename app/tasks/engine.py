"""Run a task list over the images of a request: regions once, each model once per request.

1. Detect what the tasks need: the prominent person (for person targets, and as the default
   context of face targets), faces in each context used.
2. Run the person model once over all images, then YuNet once per face context over the context
   crops (a person's crop, or the whole image), mapping faces back to original pixels.
3. Resolve every task's region (or skip it: a face target without a face), cut each crop once.
4. Run every region model (CLIP, DINOv2, MobileNet, the tagger) once over all the crops that
   need it, across images; give the types with their own runner (classify, describe) all their
   tasks at once; run the whole-image analyses through the orchestrator's own pipeline.
5. Build the image_embed-shaped results, one per operation_id.

Failures are isolated the orchestrator's way (`Orchestrator.run_model`: a batch that fails is
retried image by image), so one bad image or one failing model fails only its own tasks.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from app.core.config import API_VERSION
from app.schemas import tasks as T
from app.services.orchestrator import Ingested, Orchestrator, Plan
from app.services.results import assemble
from app.tasks.regions import ImageRegions, Region, png_base64, shift_faces
from app.tasks.stages import message, run_stage
from app.tasks.types import TASK_TYPES


@dataclass
class Pending:
    """One task on one image, once its region is known."""

    item: Ingested
    task: Any  # one of app.schemas.tasks' task models
    region: Region


def target_of(task: Any) -> T.Target:
    target: T.Target = getattr(task.params, "target", "whole_image")
    return target


def face_context_of(task: Any) -> str:
    return str(getattr(task.params, "face_context", "prominent_person"))


async def run_tasks(orch: Orchestrator, items: list[Ingested], opts: T.TaskOptions) -> list[T.TasksResponse]:
    settings = orch.settings
    tasks = opts.tasks
    ok = [it for it in items if it.image is not None]
    regions = {it.index: ImageRegions(it.image) for it in ok if it.image is not None}
    timings: dict[str, float] = {}
    results: dict[int, dict[str, T.TaskResult]] = {it.index: {} for it in items}

    targets = {target_of(t) for t in tasks}
    contexts = {face_context_of(t) for t in tasks if target_of(t) == "prominent_face"}

    # -- 1-2. regions ------------------------------------------------------------------------------
    t0 = time.perf_counter()
    if ok and ("prominent_person" in targets or "prominent_person" in contexts):
        for it, out in zip(ok, await run_stage(orch, "person", [it.image for it in ok])):
            if isinstance(out, list):
                regions[it.index].persons = out
            else:
                regions[it.index].person_error = message(out)
        timings["person_ms"] = (time.perf_counter() - t0) * 1000
    for ctx in sorted(contexts):
        t1 = time.perf_counter()
        usable = [it for it in ok if ctx == "whole_image" or regions[it.index].person_error is None]
        boxes = [regions[it.index].face_context(ctx).box for it in usable]
        crops = [regions[it.index].crop(b) for it, b in zip(usable, boxes)]
        for it, box, out in zip(usable, boxes, await run_stage(orch, "faces", crops)):
            reg = regions[it.index]
            if isinstance(out, list):
                reg.faces[ctx] = shift_faces(out, (box[0], box[1]), (reg.image.width, reg.image.height))
            else:
                reg.face_error[ctx] = message(out)
        timings[f"faces_{ctx}_ms"] = (time.perf_counter() - t1) * 1000

    # -- 3. each task's region ----------------------------------------------------------------------
    pending: list[Pending] = []
    for it in ok:
        reg = regions[it.index]
        for task in tasks:
            res, region = resolve(reg, task)
            if res is not None:
                results[it.index][task.operation_id] = res
            elif region is not None:
                pending.append(Pending(it, task, region))

    # -- 4a/4b. region models (each once over the distinct regions that need it) and the types with their own
    # runner (classify, describe: every task of the type in one call), all at once ---------------------
    by_model: dict[str, list[Pending]] = {}
    by_runner: dict[str, list[Pending]] = {}
    for p in pending:
        kind = TASK_TYPES[p.task.type]
        if kind.model is not None:
            by_model.setdefault(kind.model, []).append(p)
        elif kind.runner is not None:
            by_runner.setdefault(p.task.type, []).append(p)

    async def model_stage(model: str, group: list[Pending]) -> None:
        t1 = time.perf_counter()
        keys = list(dict.fromkeys((p.item.index, p.region.box) for p in group))  # a region once per model
        outs = dict(zip(keys, await run_stage(orch, model, [regions[i].crop(box) for i, box in keys])))
        timings[f"{model}_ms"] = (time.perf_counter() - t1) * 1000
        adapter = orch.registry.loaded(model)
        for p in group:
            kind = TASK_TYPES[p.task.type]
            out = outs[(p.item.index, p.region.box)]
            if out is None or isinstance(out, BaseException):
                results[p.item.index][p.task.operation_id] = error_result(p, message(out))
                continue
            assert kind.data is not None
            try:
                data = kind.data(out, p.task.params, adapter)
            except Exception as exc:  # noqa: BLE001 - one task's failure stays its own
                results[p.item.index][p.task.operation_id] = error_result(p, f"{type(exc).__name__}: {exc}")
                continue
            results[p.item.index][p.task.operation_id] = success(p, data)

    async def runner_stage(name: str, group: list[Pending]) -> None:
        t1 = time.perf_counter()
        runner = TASK_TYPES[name].runner
        assert runner is not None
        crops = [regions[p.item.index].crop(p.region.box) for p in group]
        try:
            outcomes = await runner(orch, [p.task.params for p in group], crops)
        except Exception as exc:  # noqa: BLE001 - the type's failure stays its tasks'
            outcomes = [("error", f"{type(exc).__name__}: {exc}")] * len(group)
        timings[f"{name}_ms"] = (time.perf_counter() - t1) * 1000
        for p, (status, value) in zip(group, outcomes):
            if status == "success":
                results[p.item.index][p.task.operation_id] = success(p, value)
            elif status == "skipped":
                results[p.item.index][p.task.operation_id] = T.TaskResult(
                    status="skipped", target=target_of(p.task), cropped_image_bbox=list(p.region.box), error_message=value)
            else:
                results[p.item.index][p.task.operation_id] = error_result(p, str(value))

    await asyncio.gather(*(model_stage(m, g) for m, g in by_model.items()),
                         *(runner_stage(n, g) for n, g in by_runner.items()))

    # -- 4c. boxes and whole-image analyses ----------------------------------------------------------
    analyses = {TASK_TYPES[p.task.type].analysis for p in pending if TASK_TYPES[p.task.type].analysis}
    assembled: dict[int, Any] = {}
    if analyses:
        t1 = time.perf_counter()
        plan = Plan(blur="blur" in analyses, exposure="exposure" in analyses, quality="quality" in analyses,
                    aesthetic="aesthetic" in analyses, emotion="emotion" in analyses, faces="faces" in analyses,
                    embedding=False)
        await orch.analyse(ok, plan)
        assembled = {it.index: assemble(it, plan, settings, orch.registry) for it in ok}
        timings["analyses_ms"] = (time.perf_counter() - t1) * 1000
    for p in pending:
        kind = TASK_TYPES[p.task.type]
        if kind.analysis is not None:
            field = getattr(assembled[p.item.index], kind.analysis)
            results[p.item.index][p.task.operation_id] = success(p, field.model_dump(mode="json"))
        elif kind.model is None and kind.runner is None:  # detect_bounding_box: the region itself is the answer
            r = p.region
            data = {"box": list(r.box), "kind": r.kind, "score": r.score, "area_share": r.area_share}
            results[p.item.index][p.task.operation_id] = success(p, data)

    if opts.return_crops:
        t1 = time.perf_counter()
        await add_crops(orch, pending, results, regions, settings.crop_max_dim)
        timings["crops_ms"] = (time.perf_counter() - t1) * 1000
    return [response(it, results[it.index], timings) for it in items]


def resolve(reg: ImageRegions, task: Any) -> tuple[T.TaskResult | None, Region | None]:
    """(a finished result, None) when the task cannot run on this image, else (None, its region)."""
    target = target_of(task)
    if target == "whole_image":
        return None, Region(reg.whole, "whole_image")
    if target == "prominent_person":
        if reg.person_error is not None:
            return T.TaskResult(status="error", target="prominent_person",
                                error_message=f"The person model is not available: {reg.person_error}"), None
        region = reg.person()
        if region.fallback and task.type == "detect_bounding_box":
            return T.TaskResult(status="skipped", target="prominent_person",
                                error_message="No person found in the image."), None
        return None, region
    ctx = face_context_of(task)
    if ctx == "prominent_person" and reg.person_error is not None:
        return T.TaskResult(status="error", target="prominent_face",
                            error_message=f"The person model (the face context) is not available: {reg.person_error}"), None
    if ctx in reg.face_error:
        return T.TaskResult(status="error", target="prominent_face",
                            error_message=f"The face detector is not available: {reg.face_error[ctx]}"), None
    face = reg.face(ctx)
    if face is None:
        where = "in the prominent person" if ctx == "prominent_person" and reg.persons else "in the image"
        return T.TaskResult(status="skipped", target="prominent_face", error_message=f"No face found {where}."), None
    return None, face


def success(p: Pending, data: Any) -> T.TaskResult:
    """A successful result; its crop's PNG is added at the end (`add_crops`), once per region."""
    return T.TaskResult(status="success", data=data, target=target_of(p.task), fallback=p.region.fallback,
                        cropped_image_bbox=list(p.region.box))


async def add_crops(orch: Orchestrator, pending: list[Pending], results: dict[int, dict[str, T.TaskResult]],
                    regions: dict[int, ImageRegions], max_dim: int) -> None:
    """The PNG of every region a successful region task ran on: each encoded once, however many tasks share it,
    in the worker pool (a PNG of a 512-px crop takes ~10 ms: not on the event loop)."""
    wanted: dict[tuple[int, tuple[int, ...]], Any] = {}
    owners: list[tuple[T.TaskResult, tuple[int, tuple[int, ...]]]] = []
    for p in pending:
        res = results[p.item.index].get(p.task.operation_id)
        if res is not None and res.status == "success" and target_of(p.task) != "whole_image":
            key = (p.item.index, tuple(p.region.box))
            wanted.setdefault(key, regions[p.item.index].crop(p.region.box))
            owners.append((res, key))
    if not wanted:
        return
    pngs = await orch.in_pool(lambda: {key: png_base64(crop, max_dim) for key, crop in wanted.items()})
    for res, key in owners:
        res.cropped_image_base64 = pngs[key]


def error_result(p: Pending, text: str) -> T.TaskResult:
    return T.TaskResult(status="error", target=target_of(p.task),
                        cropped_image_bbox=list(p.region.box), error_message=text)


def response(it: Ingested, results: dict[str, T.TaskResult], timings: dict[str, float]) -> T.TasksResponse:
    image = it.image
    return T.TasksResponse(
        api_version=API_VERSION, image_id=it.image_id, source_url=it.source_url,
        width_px=image.width if image is not None else None, height_px=image.height if image is not None else None,
        results=results, timings_ms={**{k: round(v, 3) for k, v in it.timings.items()},
                                     **{k: round(v, 3) for k, v in timings.items()}},
        error=it.error)
