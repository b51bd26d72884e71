"""The outputs of `score`: one JSONL line and one CSV row per image, appended as results come.

Appending and flushing per image is what makes a run resumable: `load_done`
reads back which images are already in the JSONL, and `OutputLock` keeps two runs
from appending to the same files. The CSV carries the key numbers (`flatten`; with
--tasks, tasks.py's `task_row`), the JSONL the full result or error. Both name the
shot's companions (the RAW beside an analysed JPEG, …): a list in the JSONL, `;`-joined
in the CSV's `companions` column (plain runs; the --tasks CSV has no such column).
A CSV written before a column was added gets its header upgraded when resumed.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Protocol, TextIO

from app.cli.errors import UsageError
from app.cli.manifest import Item

CSV_FIELDS = ("path", "image_id", "companions", "format", "decoded_from", "width", "height", "laplacian_variance", "is_blurry", "mean_brightness", "verdict",
              "quality_score", "quality_band", "quality_is_ok", "brisque", "nima", "aesthetic", "aesthetic_laion",
              "faces", "emotions", "error")

#: (key, image_id, result, error) → the CSV row
RowFn = Callable[[str, str, dict[str, Any] | None, dict[str, Any] | None], dict[str, Any]]


def flatten(key: str, image_id: str, result: dict[str, Any] | None, error: dict[str, Any] | None) -> dict[str, Any]:
    row: dict[str, Any] = {k: "" for k in CSV_FIELDS}
    row["path"], row["image_id"] = key, image_id
    if error:
        row["error"] = f"{error.get('type')}: {error.get('message')}"
    if not result:
        return row

    def ok(section: str) -> dict[str, Any] | None:
        v = result.get(section)
        return v if isinstance(v, dict) and v.get("status") == "ok" else None

    def val(v: Any) -> Any:
        return "" if v is None else v

    row["width"], row["height"] = val(result.get("width_px")), val(result.get("height_px"))
    row["format"], row["decoded_from"] = val(result.get("format")), val(result.get("decoded_from"))
    if b := ok("blur"):
        row["laplacian_variance"], row["is_blurry"] = val(b.get("laplacian_variance")), val(b.get("is_blurry"))
    if e := ok("exposure"):
        row["mean_brightness"], row["verdict"] = val(e.get("mean_brightness")), val(e.get("verdict"))
    if q := ok("quality"):
        row["quality_score"], row["quality_band"], row["quality_is_ok"] = (
            val(q.get("score")), val(q.get("band")), val(q.get("is_ok")))
        row["brisque"], row["nima"] = val(q.get("brisque")), val(q.get("nima_technical"))
    if a := ok("aesthetic"):
        row["aesthetic"], row["aesthetic_laion"] = val(a.get("nima_score")), val(a.get("laion_score"))
    faces = ok("faces")
    emo = ok("emotion")
    if faces:
        row["faces"] = faces.get("count", 0)
    elif emo:
        row["faces"] = emo.get("count", 0)
    if emo:
        row["emotions"] = ";".join(f.get("dominant_emotion", "") for f in emo.get("faces", []))
    return row


class RowSink(Protocol):
    """Where each image's row goes: the Writer (in-process engine), or the Ray actors' collector (ray_engine.Rows)."""

    def write(self, item: Item, result: dict[str, Any] | None, error: dict[str, Any] | None) -> None: ...


def jsonl_record(item: Item, result: dict[str, Any] | None, error: dict[str, Any] | None) -> dict[str, Any]:
    """One image's JSONL line (both engines: in-process and Ray): the result or the error, where it came from."""
    if error is not None:
        error = {k: error.get(k) for k in ("type", "message", "detail", "status_code") if k in error}
    source = item.url if item.url else str(item.path)
    return {"path": item.key, "image_id": item.image_id, "source": source, "companions": item.companion_keys,
            "error": error, "result": result, "scored_at": datetime.now(UTC).isoformat(timespec="seconds")}


def table_row(line: dict[str, Any], fields: Sequence[str] = CSV_FIELDS, row: RowFn = flatten) -> dict[str, Any]:
    """The CSV row (in-process) or Parquet row (Ray) of a JSONL line: the same columns either way."""
    out = row(line["path"], line["image_id"], line.get("result"), line.get("error"))
    if "companions" in fields:
        out["companions"] = ";".join(line.get("companions") or [])
    return out


def jsonl_lines(jsonl: Path) -> Iterator[dict[str, Any]]:
    """The output's lines that name a path, in order (a line cut by a crash is skipped: that image is simply
    done again)."""
    if not jsonl.exists():
        return
    with jsonl.open(encoding="utf-8") as fh:
        for text in fh:
            try:
                obj = json.loads(text)
            except json.JSONDecodeError:
                continue
            if isinstance(obj, dict) and isinstance(obj.get("path"), str):
                yield obj


def load_done(jsonl: Path) -> tuple[set[str], set[str]]:
    """Keys already in the JSONL output: (all, those whose last row is an error)."""
    last_error = {obj["path"]: obj.get("error") is not None for obj in jsonl_lines(jsonl)}
    return set(last_error), {k for k, v in last_error.items() if v}


def load_done_sha256(jsonl: Path) -> dict[str, tuple[str | None, bool]]:
    """The last row of each key in the JSONL: key → (the sha256 of the bytes it was scored from, or None when
    the line does not say; whether it is an error). The Ray engine resumes by (path, sha256) from this."""
    last: dict[str, tuple[str | None, bool]] = {}
    for obj in jsonl_lines(jsonl):
        result = obj.get("result")
        sha = obj.get("sha256") or (result.get("sha256") if isinstance(result, dict) else None)
        last[obj["path"]] = (sha if isinstance(sha, str) else None, obj.get("error") is not None)
    return last


class Writer:
    """Appends one JSONL line and one CSV row per image, flushed as they come (so a crash loses nothing).

    `fields` and `row` are the CSV's columns and the function that fills them (`score --tasks` has its own);
    `lazy` opens the files at the first row, so a run refused before any answer leaves the outputs as they were."""

    def __init__(self, prefix: Path, fresh: bool, fields: Sequence[str] = CSV_FIELDS, row: RowFn = flatten,
                 lazy: bool = False):
        self.jsonl_path = prefix.with_name(prefix.name + ".jsonl")
        self.csv_path = prefix.with_name(prefix.name + ".csv")
        self.fresh = fresh
        self.fields = tuple(fields)
        self.row = row
        self.jsonl: IO[str] | None = None
        self.csv_fh: IO[str] | None = None
        self.csv: csv.DictWriter | None = None
        self.rows = 0
        self.failed = 0
        if not lazy:
            self.open()

    def open(self) -> None:
        self.jsonl_path.parent.mkdir(parents=True, exist_ok=True)
        mode = "w" if self.fresh else "a"
        new_csv = self.fresh or not self.csv_path.exists() or self.csv_path.stat().st_size == 0
        if not new_csv:
            upgrade_csv_header(self.csv_path, self.fields)
        self.jsonl = self.jsonl_path.open(mode, encoding="utf-8")
        self.csv_fh = csv_fh = self.csv_path.open(mode, newline="", encoding="utf-8")
        self.csv = csv.DictWriter(csv_fh, fieldnames=self.fields)
        if new_csv:
            self.csv.writeheader()

    def write(self, item: Item, result: dict[str, Any] | None, error: dict[str, Any] | None) -> None:
        if self.jsonl is None:
            self.open()
        assert self.jsonl is not None and self.csv is not None and self.csv_fh is not None
        line = jsonl_record(item, result, error)
        self.jsonl.write(json.dumps(line, ensure_ascii=False) + "\n")
        self.jsonl.flush()
        self.csv.writerow(table_row(line, self.fields, self.row))
        self.csv_fh.flush()
        self.rows += 1
        self.failed += line["error"] is not None

    def close(self) -> None:
        if self.jsonl is not None:
            self.jsonl.close()
        if self.csv_fh is not None:
            self.csv_fh.close()


def upgrade_csv_header(csv_path: Path, fields: Sequence[str]) -> None:
    """Before appending to `csv_path`: a header with fewer of `fields` (a CSV written by an older Loupe, before
    the companions, format and decoded_from columns) is rewritten with `fields`, the old rows kept with the new
    columns empty; a header with columns that are not in `fields` is a UsageError (another kind of run wrote it)."""
    with csv_path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        header = list(reader.fieldnames or [])
        if header == list(fields):
            return
        if not header or set(header) - set(fields):
            raise UsageError(f"{csv_path} has other columns ({', '.join(header) or 'none'}) than this run "
                             f"({', '.join(fields)}); pass --no-resume to start over, or another --out")
        rows = list(reader)
    tmp = csv_path.with_name(f".{csv_path.name}.{os.getpid()}.tmp")
    with tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(fields), restval="")
        writer.writeheader()
        writer.writerows({k: v for k, v in r.items() if k in fields} for r in rows)
    os.replace(tmp, csv_path)
    added = [f for f in fields if f not in header]
    print(f"note: {csv_path} gets the new column(s) {', '.join(added)} (empty for the rows written before)",
          file=sys.stderr)


class OutputLock:
    """An exclusive lock on PREFIX.lock while a run writes PREFIX.csv/.jsonl, so that two runs never append
    to the same files (POSIX flock: released by the OS if the process dies; the file is removed at the end)."""

    def __init__(self, prefix: Path):
        self.path = prefix.with_name(prefix.name + ".lock")
        self.fh: TextIO | None = None

    def __enter__(self) -> OutputLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fh = self.path.open("a")
        try:
            import fcntl

            fcntl.flock(self.fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # not POSIX: no lock
            pass
        except OSError as exc:
            self.fh.close()
            self.fh = None
            raise UsageError(f"another run is writing {self.path.with_suffix('')}.* (locked: {self.path})") from exc
        return self

    def __exit__(self, *exc) -> None:
        if self.fh is not None:
            self.path.unlink(missing_ok=True)
            self.fh.close()


# --- Parquet (the Ray engine's table output) ---------------------------------------------------------------
def parquet_path_of(out: Path) -> Path:
    return out.with_name(out.name + ".parquet")


def arrow_column(values: list[Any]) -> Any:
    """A Parquet column of CSV-row values ('' = empty): bool, int64, float64 or string, whichever holds them all."""
    import pyarrow as pa

    vals = [None if v == "" else v for v in values]
    present = [v for v in vals if v is not None]
    if present and all(isinstance(v, bool) for v in present):
        return pa.array(vals, pa.bool_())
    if present and all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        return pa.array(vals, pa.int64())
    if present and all(isinstance(v, int | float) and not isinstance(v, bool) for v in present):
        return pa.array([None if v is None else float(v) for v in vals], pa.float64())
    return pa.array([None if v is None else str(v) for v in vals], pa.string())


def write_parquet(jsonl_path: Path, parquet_path: Path, fields: tuple[str, ...], row: RowFn) -> int:
    """PREFIX.parquet from PREFIX.jsonl: the CSV's columns (`table_row`), the last row of each path (a resumed
    or --retry-failed image counts once), in the order paths first appeared. Written aside, then renamed."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    last = {line["path"]: line for line in jsonl_lines(jsonl_path)}
    rows = [table_row(line, fields, row) for line in last.values()]
    table = pa.table({f: arrow_column([r.get(f, "") for r in rows]) for f in fields})
    tmp = parquet_path.with_name(f".{parquet_path.name}.{os.getpid()}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, parquet_path)
    return len(rows)


def check_parquet_columns(parquet_path: Path, fields: tuple[str, ...]) -> None:
    if not parquet_path.exists():
        return
    import pyarrow.parquet as pq

    names = tuple(pq.read_schema(parquet_path).names)
    if names != fields:
        raise UsageError(f"{parquet_path} has other columns ({', '.join(names)}) than this run ({', '.join(fields)}): "
                         "written with other tasks, or without --tasks; pass --no-resume to start over, or another --out")
