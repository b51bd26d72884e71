"""Object-store inputs of the CLI (`s3://bucket/prefix`), through pyarrow's S3 filesystem.

Only the operator's command line chooses where Loupe connects here (flags and the usual AWS
variables); the HTTP API has no such field. `S3Options` is what a read needs, so the Ray
engine can hand it to its read tasks on other nodes: the endpoint and region (`--s3-endpoint`,
`--s3-region`, else AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL and AWS_REGION /
AWS_DEFAULT_REGION) and the keys (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN:
from the environment only, never flags, so they stay out of the shell history and the process
list; none: pyarrow's default chain, e.g. an instance role; `--s3-anonymous`: unsigned).

A prefix is listed recursively like a folder (same extensions, hidden names skipped, RAW +
JPEG pairs made shots by `pair_shots`); an item's key is its path below the prefix, its
`url` the full `s3://` URI.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from app.cli.errors import UsageError
from app.cli.manifest import Item, is_image_name, pair_shots

SCHEME = "s3://"


def is_object_uri(text: str | Path) -> bool:
    return isinstance(text, str) and text.lower().startswith(SCHEME)


@dataclass(frozen=True)
class S3Options:
    endpoint: str | None = None  # http(s)://host:port of an S3-compatible store; None: AWS
    region: str | None = None
    access_key: str | None = None
    secret_key: str | None = None
    session_token: str | None = None
    anonymous: bool = False

    def __repr__(self) -> str:  # never print the keys
        return f"S3Options(endpoint={self.endpoint!r}, region={self.region!r}, anonymous={self.anonymous})"

    @classmethod
    def from_env(cls, endpoint: str | None = None, region: str | None = None, anonymous: bool = False,
                 environ: dict[str, str] | None = None) -> S3Options:
        env = os.environ if environ is None else environ
        return cls(endpoint=endpoint or env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None,
                   region=region or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or None,
                   access_key=env.get("AWS_ACCESS_KEY_ID") or None, secret_key=env.get("AWS_SECRET_ACCESS_KEY") or None,
                   session_token=env.get("AWS_SESSION_TOKEN") or None, anonymous=anonymous)

    def filesystem(self) -> Any:
        """A pyarrow.fs.S3FileSystem for these options."""
        from pyarrow import fs

        kw: dict[str, Any] = {}
        if self.endpoint:
            scheme, sep, rest = self.endpoint.partition("://")
            kw["endpoint_override"], kw["scheme"] = (rest, scheme) if sep else (self.endpoint, "https")
        if self.region:
            kw["region"] = self.region
        if self.anonymous:
            kw["anonymous"] = True
        elif self.access_key and self.secret_key:
            kw.update(access_key=self.access_key, secret_key=self.secret_key)
            if self.session_token:
                kw["session_token"] = self.session_token
        return fs.S3FileSystem(**kw)


def split_uri(uri: str) -> str:
    """'s3://bucket/a/b' → 'bucket/a/b' (pyarrow's path)."""
    if not is_object_uri(uri):
        raise UsageError(f"{uri}: not an s3:// URI")
    return uri[len(SCHEME):].strip("/")


_FILESYSTEMS: dict[S3Options, Any] = {}


def filesystem(opts: S3Options) -> Any:
    """One filesystem per options and process (connections are reused across reads)."""
    if opts not in _FILESYSTEMS:
        _FILESYSTEMS[opts] = opts.filesystem()
    return _FILESYSTEMS[opts]


def list_prefix(uri: str, opts: S3Options, exclude_prefixes: tuple[str, ...] = ()) -> list[Item]:
    """The shots under `uri` (recursively, sorted; extensions, hidden names and pairs as for a folder)."""
    from pyarrow import fs as pafs

    root = split_uri(uri)
    try:
        infos = filesystem(opts).get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
    except OSError as exc:
        raise UsageError(f"cannot list {uri}: {exc}") from exc
    rels: list[Path] = []
    for info in infos:
        if info.type != pafs.FileType.File:
            continue
        rel = PurePosixPath(info.path).relative_to(root) if info.path != root else PurePosixPath(PurePosixPath(root).name)
        if any(part.startswith(".") for part in rel.parts[:-1]) or not is_image_name(rel.name):
            continue
        if any(rel.as_posix().startswith(p) for p in exclude_prefixes):
            continue
        rels.append(Path(rel.as_posix()))
    rels.sort(key=lambda p: p.as_posix())
    base = SCHEME + root
    return [Item(key=p.as_posix(), image_id=p.as_posix(), url=f"{base}/{p.as_posix()}", companions=companions)
            for p, companions in pair_shots(rels)]


def read_uri(uri: str, opts: S3Options) -> bytes:
    """The object's bytes (OSError when it cannot be read)."""
    with filesystem(opts).open_input_stream(split_uri(uri)) as fh:
        return fh.read()
