"""What to analyse: the images of a folder, or the entries of a manifest, as `Item`s.

Both commands start from here. An `Item` keeps the key the user will see in the
outputs (path relative to the folder, or the manifest entry as written), which is
also what `score` resumes by; reading stays free of HTTP so scripts such as
scripts/tune_blur.py can walk a folder exactly the way the CLI does.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from app.cli.errors import UsageError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")
MANIFEST_EXTENSIONS = (".csv", ".jsonl", ".ndjson", ".txt")
SOURCE_COLUMNS = ("path", "url", "file", "filename", "image", "source", "src", "uri")
ID_COLUMNS = ("image_id", "id")


def iter_images(root: Path, exclude: Iterable[Path] = ()) -> Iterator[Path]:
    """Image files under `root` (recursively, sorted, by extension, case-insensitive), skipping hidden
    files and folders and anything under `exclude`."""
    excluded = [p.resolve() for p in exclude]
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")
                             and not any((here / d).resolve() == ex for ex in excluded))
        for name in sorted(filenames):
            if not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS):
                yield here / name


@dataclass
class Item:
    key: str  # what identifies the image in the outputs (and for resuming): path relative to the folder, or the manifest entry
    image_id: str
    path: Path | None = None
    url: str | None = None


def is_url(text: str) -> bool:
    return text.lower().startswith(("http://", "https://"))


def _item(entry: str, image_id: str | None, base: Path) -> Item:
    entry = entry.strip()
    if is_url(entry):
        return Item(key=entry, image_id=image_id or entry, url=entry)
    path = Path(entry).expanduser()
    return Item(key=entry, image_id=image_id or entry, path=path if path.is_absolute() else base / path)


def read_manifest(path: Path) -> list[Item]:
    """CSV (a column named path/url/file/image/source, or the first column when there is no such header;
    optional image_id), JSONL (a string per line, or an object with path/url… and image_id) or TXT (one per
    line). Relative paths are relative to the manifest's folder."""
    base = path.parent
    items: list[Item] = []
    suffix = path.suffix.lower()
    text = path.read_text(encoding="utf-8-sig")
    if suffix == ".csv":
        rows = list(csv.reader(io.StringIO(text)))
        rows = [r for r in rows if any(c.strip() for c in r)]
        if not rows:
            return []
        header = [c.strip().lower() for c in rows[0]]
        src_col = next((header.index(c) for c in SOURCE_COLUMNS if c in header), None)
        id_col = next((header.index(c) for c in ID_COLUMNS if c in header), None)
        if src_col is None:  # no header: the first column is the source
            src_col, data = 0, rows
        else:
            data = rows[1:]
        for r in data:
            if len(r) > src_col and r[src_col].strip():
                iid = r[id_col].strip() if id_col is not None and len(r) > id_col and r[id_col].strip() else None
                items.append(_item(r[src_col], iid, base))
    elif suffix in (".jsonl", ".ndjson"):
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UsageError(f"{path}:{n}: not JSON: {exc}") from exc
            if isinstance(obj, str):
                items.append(_item(obj, None, base))
            elif isinstance(obj, dict):
                src = next((obj[k] for k in SOURCE_COLUMNS if isinstance(obj.get(k), str) and obj[k].strip()), None)
                if src is None:
                    raise UsageError(f"{path}:{n}: no path or url field (one of {', '.join(SOURCE_COLUMNS)})")
                iid = next((str(obj[k]) for k in ID_COLUMNS if obj.get(k) not in (None, "")), None)
                items.append(_item(src, iid, base))
            else:
                raise UsageError(f"{path}:{n}: expected a string or an object")
    else:
        items = [_item(line, None, base) for line in text.splitlines() if line.strip() and not line.startswith("#")]
    return items


def collect(source: Path, exclude: Iterable[Path] = ()) -> list[Item]:
    if source.is_dir():
        return [Item(key=p.relative_to(source).as_posix(), image_id=p.relative_to(source).as_posix(), path=p)
                for p in iter_images(source, exclude)]
    if source.is_file():
        if source.suffix.lower() not in MANIFEST_EXTENSIONS:
            raise UsageError(f"{source} is neither a folder nor a manifest ({', '.join(MANIFEST_EXTENSIONS)})")
        return read_manifest(source)
    raise UsageError(f"{source}: no such folder or manifest")


def b64_of(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode("ascii")
