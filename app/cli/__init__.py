"""`loupe` / `python -m app.cli`: score a folder of photos, or group a burst and keep the best shots.

Both commands go through the HTTP API: in-process by default (the real app,
its lifespan run, behind an ASGI transport: no server needed, the same code path
as the server), or against a running Loupe with --server URL --api-key KEY.

The package is split by what each part holds: manifest.py (what to analyse),
client.py (the API, in-process or remote), writer.py (score's CSV + JSONL),
tasks.py (`score --tasks`: the tasks file, its CSV columns, the crops),
sheet.py (cluster's contact sheet and JSON), parser.py (flags and help),
commands.py (the runs and `main`), errors.py (failures → exit codes). The names
below are re-exported for tests and scripts that import them from `app.cli`.

`--engine ray` (ray_engine.py; its cluster half ray_cluster.py) runs the same two commands on a Ray cluster: read tasks,
then actors that each hold one in-process Loupe and call the same `score_batch` /
`score_tasks_batch` and row code; objectstore.py reads `s3://bucket/prefix` sources.
"""

from app.cli.commands import main, run_cluster, run_score, score_batch, score_items, score_tasks_batch
from app.cli.errors import (
    EXIT_CODES_HELP,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_SERVER,
    EXIT_USAGE,
    RefusedError,
    ServerError,
    UsageError,
)
from app.cli.manifest import IMAGE_EXTENSIONS, Item, collect, iter_images, iter_shots, pair_shots, read_manifest
from app.cli.parser import ANALYSES, build_parser
from app.cli.tasks import TASKS_CSV_HELP, TaskRun, read_task_run
from app.cli.writer import CSV_FIELDS, OutputLock, Writer

__all__ = [
    "ANALYSES", "CSV_FIELDS", "TASKS_CSV_HELP", "EXIT_CODES_HELP", "EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_REFUSED",
    "EXIT_SERVER", "EXIT_USAGE", "IMAGE_EXTENSIONS", "Item", "OutputLock", "RefusedError", "ServerError",
    "TaskRun", "UsageError", "Writer", "build_parser", "collect", "iter_images", "iter_shots", "main", "pair_shots",
    "read_manifest", "run_cluster",
    "read_task_run", "run_score", "score_batch", "score_items", "score_tasks_batch",
]
