"""What to analyse: the images of a folder, or the entries of a manifest, as `Item`s.

Both commands start from here. An `Item` keeps the key the user will see in the
outputs (path relative to the folder, or the manifest entry as written), which is
also what `score` resumes by; reading stays free of HTTP so scripts such as
scripts/tune_blur.py can walk a folder exactly the way the CLI does.

A folder is read as shots: a camera RAW and a JPEG or HEIC/HEIF with the same name
(case-insensitive) in the same folder are one shot (`pair_shots`), analysed once from
the JPEG (else the HEIC/HEIF), the other files being its `companions`.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from app.cli.errors import UsageError
from app.imaging.formats import HEIF_EXTENSIONS, RAW_EXTENSIONS
from app.imaging.formats import IMAGE_EXTENSIONS as PILLOW_EXTENSIONS

#: every extension the CLI picks up in a folder (case-insensitive): Pillow's formats, HEIF/HEIC/AVIF, camera RAW
IMAGE_EXTENSIONS = PILLOW_EXTENSIONS + HEIF_EXTENSIONS + RAW_EXTENSIONS
#: the same without the camera RAWs (what a browser or Pillow-based tool may open)
NON_RAW_EXTENSIONS = PILLOW_EXTENSIONS + HEIF_EXTENSIONS
#: the files a RAW pairs with (same folder, same name): the camera's JPEG, else its HEIC/HEIF, is the one analysed
PAIR_EXTENSIONS = (".jpg", ".jpeg") + tuple(e for e in HEIF_EXTENSIONS if e != ".avif")
MANIFEST_EXTENSIONS = (".csv", ".jsonl", ".ndjson", ".txt")
SOURCE_COLUMNS = ("path", "url", "file", "filename", "image", "source", "src", "uri")
ID_COLUMNS = ("image_id", "id")


def is_image_name(name: str, extensions: tuple[str, ...] = IMAGE_EXTENSIONS) -> bool:
    """A file name a folder (or an object-store prefix) contributes: not hidden, an image extension (any case)."""
    return not name.startswith(".") and name.lower().endswith(extensions)


def iter_images(root: Path, exclude: Iterable[Path] = (), extensions: tuple[str, ...] = IMAGE_EXTENSIONS) -> Iterator[Path]:
    """Image files under `root` (recursively, sorted, by extension, case-insensitive: every format Loupe reads,
    RAW included, unless `extensions` says otherwise), skipping hidden files and folders and anything under
    `exclude`. Every file is listed: `pair_shots` / `iter_shots` make shots of them."""
    excluded = [p.resolve() for p in exclude]
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")
                             and not any((here / d).resolve() == ex for ex in excluded))
        for name in sorted(filenames):
            if is_image_name(name, extensions):
                yield here / name


def is_raw_file(path: Path) -> bool:
    return path.suffix.lower() in RAW_EXTENSIONS


def pair_shots(paths: Iterable[Path]) -> list[tuple[Path, list[Path]]]:
    """(the file analysed, its companions) for each shot, in the order of `paths`.

    Files in the same folder whose names differ only by the extension (compared case-insensitively) are one
    shot when at least one is a camera RAW and at least one a JPEG or HEIC/HEIF (PAIR_EXTENSIONS): the shot is
    analysed from the JPEG (else the HEIC/HEIF; the first by name when there are several) and the RAWs and the
    other JPEG/HEIC files are its companions. Any other file stays a shot of its own (a.jpg and a.png are two
    shots; a RAW without a JPEG or HEIC is analysed from the RAW)."""
    paths = list(paths)
    by_stem: dict[tuple[Path, str], list[Path]] = {}
    for p in paths:
        by_stem.setdefault((p.parent, p.stem.lower()), []).append(p)
    companions_of: dict[Path, list[Path]] = {}
    absorbed: set[Path] = set()
    for same in by_stem.values():
        raws = [p for p in same if is_raw_file(p)]
        pairable = [p for p in same if p.suffix.lower() in PAIR_EXTENSIONS]
        if not raws or not pairable:
            continue
        jpegs = [p for p in pairable if p.suffix.lower() in (".jpg", ".jpeg")]
        main = min(jpegs or pairable, key=lambda p: (p.name.lower(), p.name))
        others = [p for p in same if p != main and (p in raws or p in pairable)]
        companions_of[main] = sorted(others, key=lambda p: p.name.lower())
        absorbed.update(others)
    return [(p, companions_of.get(p, [])) for p in paths if p not in absorbed]


def iter_shots(root: Path, exclude: Iterable[Path] = ()) -> list[tuple[Path, list[Path]]]:
    """The shots of a folder (`iter_images` paired by `pair_shots`): (the file analysed, its companions)."""
    return pair_shots(iter_images(root, exclude))


@dataclass
class Item:
    key: str  # what identifies the image in the outputs (and for resuming): path relative to the folder, or the manifest entry
    image_id: str
    path: Path | None = None
    url: str | None = None
    #: files of the same shot that are not analysed (a RAW beside its JPEG or HEIC, …): listed and exported with it
    companions: list[Path] = field(default_factory=list)
    #: the bytes when already read (the Ray engine's read tasks, an object-store key): sent as they are
    data: bytes | None = field(default=None, repr=False, compare=False)

    @property
    def companion_keys(self) -> list[str]:
        """The companions as the outputs name them: beside the key (same folder, relative to the scanned one)."""
        parent = PurePosixPath(self.key).parent
        return [(parent / c.name).as_posix() for c in self.companions]

    @property
    def files(self) -> list[Path]:
        """Every file of the shot: the one analysed, then its companions."""
        return ([self.path] if self.path is not None else []) + list(self.companions)


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
        return [Item(key=p.relative_to(source).as_posix(), image_id=p.relative_to(source).as_posix(), path=p,
                     companions=companions) for p, companions in iter_shots(source, exclude)]
    if source.is_file():
        if source.suffix.lower() not in MANIFEST_EXTENSIONS:
            raise UsageError(f"{source} is neither a folder nor a manifest ({', '.join(MANIFEST_EXTENSIONS)})")
        return read_manifest(source)
    raise UsageError(f"{source}: no such folder or manifest")


def b64_of(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode("ascii")
