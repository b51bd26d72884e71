"""`score --tasks FILE`: the task list of /v1/tasks/batch instead of the analyses of /v1/analyze/batch.

What differs from a plain `score` lives here: reading and checking the tasks file,
the CSV of that mode (one column per operation_id, each task's answer in one
compact value), and the crops written with --crops. The flow (batching,
concurrency, resuming, error rows) stays the one of commands.py.
"""

from __future__ import annotations

import base64
import binascii
import csv
import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.cli.errors import UsageError

TASK_CSV_HEAD = ("path", "image_id", "width", "height")
TASK_CSV_TAIL = ("error",)

#: the key number of each whole-image analysis task (its `data` is the /v1/analyze result of that analysis)
ANALYSIS_KEYS = {"blur": "laplacian_variance", "exposure": "mean_brightness", "quality": "score",
                 "aesthetic": "nima_score", "faces": "count", "emotion": "count"}

TASKS_CSV_HELP = (
    "CSV columns with --tasks: " + ", ".join(TASK_CSV_HEAD) + ", then one column per operation_id (in the order of "
    "the tasks file), then error. A task's column holds its status when that is not success (skipped, error); "
    "on success: detect_bounding_box the box as \"x0 y0 x1 y1\" (original-image pixels); tag_imagenet the top "
    "label and its confidence, \"label (0.873)\" (empty when no label passes minconf); embed_clip / embed_dinov2 "
    "/ embed_mobilenet the vector's dimension; blur the Laplacian variance, exposure the mean brightness, quality "
    "the 0-1 score, aesthetic the NIMA score, faces and emotion the number of faces (or that analysis' own status "
    "when it is not ok). The JSONL line holds the image's full /v1/tasks result; with --crops, each task's "
    "cropped_image_base64 is replaced by cropped_image_path, the PNG written to DIR/<image path>/<operation_id>.png.")


@dataclass
class TaskRun:
    """A checked tasks file, and where its crops go."""

    source: Path
    tasks: list[Any]
    crops_dir: Path | None = None
    types: dict[str, str] = field(default_factory=dict)  # operation_id → type, for the CSV

    @property
    def operation_ids(self) -> list[str]:
        return list(self.types)

    @property
    def csv_fields(self) -> tuple[str, ...]:
        return (*TASK_CSV_HEAD, *self.operation_ids, *TASK_CSV_TAIL)


def read_task_run(path: Path, crops_dir: Path | None = None) -> TaskRun:
    """The tasks file: JSON, an array (its entries are the server's to judge: a bad one is its 422).
    UsageError for a file that cannot be read, is not JSON, or is not an array."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise UsageError(f"cannot read the tasks file {path}: {reason}") from exc
    try:
        tasks = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"the tasks file {path} is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})") from exc
    if not isinstance(tasks, list):
        raise UsageError(f"the tasks file {path} must hold a JSON array of tasks (the `tasks` of /v1/tasks, e.g. "
                         '[{"operation_id": "person", "type": "detect_bounding_box"}]), not '
                         f"{json_kind(tasks)}")
    types: dict[str, str] = {}
    for t in tasks:
        if isinstance(t, dict) and isinstance(t.get("operation_id"), str):
            types.setdefault(t["operation_id"], str(t.get("type")))
    clash = sorted(set(types) & {*TASK_CSV_HEAD, *TASK_CSV_TAIL})
    if clash:
        raise UsageError(f"the tasks file {path}: operation_id {', '.join(repr(c) for c in clash)} would clash with the "
                         f"CSV column of the same name ({', '.join((*TASK_CSV_HEAD, *TASK_CSV_TAIL))}); rename it")
    return TaskRun(source=path, tasks=tasks, crops_dir=crops_dir, types=types)


def json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return "a string" if isinstance(value, str) else "an object"


def compact(kind: str | None, res: Any) -> Any:
    """One task's result → the value of its CSV column (see TASKS_CSV_HELP)."""
    if not isinstance(res, dict):
        return ""
    status = res.get("status")
    if status != "success":
        return status or ""
    data = res.get("data")
    if not isinstance(data, dict):
        return status
    if kind == "detect_bounding_box":
        box = data.get("box")
        return " ".join(str(v) for v in box) if isinstance(box, list) else status
    if kind == "tag_imagenet":
        labels = data.get("labels") or []
        if not labels or not isinstance(labels[0], dict):
            return ""
        top = labels[0]
        conf = top.get("confidence")
        return f"{top.get('label')} ({conf:.3f})" if isinstance(conf, int | float) else str(top.get("label"))
    if kind is not None and kind.startswith("embed_"):
        dim = data.get("dim")
        if dim is None and isinstance(data.get("vector"), list):
            dim = len(data["vector"])
        return "" if dim is None else dim
    if kind in ANALYSIS_KEYS:
        if data.get("status") != "ok":
            return data.get("status") or ""
        value = data.get(ANALYSIS_KEYS[kind])
        return "" if value is None else value
    return status  # a type this CLI does not know (a newer server): the status at least


def task_row(types: dict[str, str]) -> Callable[[str, str, dict[str, Any] | None, dict[str, Any] | None], dict[str, Any]]:
    """The CSV row function of a tasks run (the `flatten` of writer.py for that mode)."""
    fields = (*TASK_CSV_HEAD, *types, *TASK_CSV_TAIL)

    def row_of(key: str, image_id: str, result: dict[str, Any] | None, error: dict[str, Any] | None) -> dict[str, Any]:
        row: dict[str, Any] = {k: "" for k in fields}
        row["path"], row["image_id"] = key, image_id
        if error:
            row["error"] = f"{error.get('type')}: {error.get('message')}"
        if not result:
            return row
        for k, name in (("width", "width_px"), ("height", "height_px")):
            row[k] = "" if result.get(name) is None else result[name]
        results = result.get("results") or {}
        for op, kind in types.items():
            row[op] = compact(kind, results.get(op))
        return row

    return row_of


_UNSAFE = re.compile(r'[\x00-\x1f<>:"|?*]')


def safe_part(part: str) -> str:
    """One path component that is safe on every filesystem ('..' and reserved characters replaced, long ones
    shortened with a hash)."""
    if part == "..":
        return "__"
    part = _UNSAFE.sub("_", part)
    if len(part.encode("utf-8")) > 200:
        part = part[:100] + "-" + hashlib.sha1(part.encode("utf-8")).hexdigest()[:12]
    return part


def crop_folder(crops_dir: Path, key: str) -> Path:
    """DIR/<image key>: the key's components kept (a folder's relative path stays the same), never outside DIR
    (an absolute path or a URL of a manifest becomes relative: 'https://h/a.jpg' → 'https_/h/a.jpg')."""
    parts = [safe_part(p) for p in re.split(r"[/\\]+", key) if p not in ("", ".")]
    return crops_dir.joinpath(*(parts or ["_"]))


def save_crops(crops_dir: Path, key: str, result: dict[str, Any]) -> int:
    """Write each task's crop of `result` to DIR/<key>/<operation_id>.png and put its path in place of the
    base64 (`cropped_image_path`, null when the task has no crop). Returns the number written."""
    n = 0
    results = result.get("results")
    if not isinstance(results, dict):
        return 0
    for op, res in results.items():
        if not isinstance(res, dict):
            continue
        data = res.pop("cropped_image_base64", None)
        res["cropped_image_path"] = None
        if not data:
            continue
        try:
            png = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            res["crop_error"] = "the server's cropped_image_base64 is not base64"
            continue
        target = crop_folder(crops_dir, key) / f"{safe_part(str(op))}.png"
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(png)
        except OSError as exc:
            raise UsageError(f"cannot write the crop {target}: {exc.strerror or exc}") from exc
        res["cropped_image_path"] = str(target)
        n += 1
    return n


def check_csv_header(csv_path: Path, fields: tuple[str, ...]) -> None:
    """Resuming appends to PREFIX.csv: its header must be this run's columns."""
    if not csv_path.exists() or csv_path.stat().st_size == 0:
        return
    with csv_path.open(newline="", encoding="utf-8") as fh:
        header = next(csv.reader(fh), [])
    if tuple(header) != fields:
        raise UsageError(f"{csv_path} has other columns ({', '.join(header) or 'none'}) than this run "
                         f"({', '.join(fields)}): written with other tasks, or without --tasks; pass --no-resume to "
                         "start over, or another --out")
