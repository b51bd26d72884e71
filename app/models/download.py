"""One way to fetch a model file: first working URL, streamed with a progress bar, sha256-checked,
written atomically (`.part` then rename). Used by every adapter's `download` (never at run time
unless ALLOW_MODEL_DOWNLOADS).

Also one way to find a single-file model: `weights_file` reads a path setting that may name the
file itself or the folder holding it, the same rule for `load` and for where `download` writes."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

log = logging.getLogger("loupe.models.download")


def weights_file(path: Path, name: str, suffixes: Sequence[str] = ()) -> Path:
    """`path` itself when it ends in one of `suffixes` (default: `name`'s suffix), else `path / name`.

    So YUNET_PATH, MOBILENET_PATH … may name the weights file or the folder that holds it."""
    return path if path.suffix in (tuple(suffixes) or (Path(name).suffix,)) else path / name


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _chunks(url: str, client: Any) -> tuple[Iterator[bytes], int | None, Any]:
    if urlparse(url).scheme == "file":  # local mirrors (and offline tests)
        path = Path(urlparse(url).path)
        fh = open(path, "rb")
        return iter(lambda: fh.read(1 << 20), b""), path.stat().st_size, fh
    stream = client.stream("GET", url)
    resp = stream.__enter__()
    resp.raise_for_status()
    total = int(resp.headers.get("content-length") or 0) or None

    class Closer:
        def close(self) -> None:
            stream.__exit__(None, None, None)

    return resp.iter_bytes(1 << 16), total, Closer()


def fetch(urls: str | Sequence[str], dest: Path, sha256: str | None = None, *, client: Any = None) -> Path:
    """Download the first of `urls` that works to `dest`.

    `sha256`: the full digest or a prefix of it; a mismatch discards the file and tries the next URL.
    An existing `dest` is kept when its digest matches, or when no digest is known.
    """
    import httpx
    from tqdm import tqdm

    urls = [urls] if isinstance(urls, str) else list(urls)
    dest = Path(dest)
    if dest.is_file() and (not sha256 or sha256_file(dest).startswith(sha256.lower())):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    own = client is None
    client = client or httpx.Client(follow_redirects=True, timeout=httpx.Timeout(60.0, connect=15.0))
    errors = []
    try:
        for url in urls:
            try:
                digest = hashlib.sha256()
                chunks, total, closer = _chunks(url, client)
                try:
                    with open(part, "wb") as out, tqdm(total=total, unit="B", unit_scale=True, desc=dest.name) as bar:
                        for chunk in chunks:
                            out.write(chunk)
                            digest.update(chunk)
                            bar.update(len(chunk))
                finally:
                    closer.close()
                got = digest.hexdigest()
                if sha256 and not got.startswith(sha256.lower()):
                    raise ValueError(f"sha256 {got} does not match the expected {sha256}")
                part.replace(dest)
                log.info("downloaded %s (sha256 %s) from %s", dest, got, url)
                return dest
            except Exception as exc:  # noqa: BLE001 - try the next source
                errors.append(f"{url}: {exc}")
                part.unlink(missing_ok=True)
    finally:
        if own:
            client.close()
    raise RuntimeError(f"could not download {dest.name}: " + "; ".join(errors))


def hub_snapshot(dest: Path, repo_id: str, patterns: Sequence[str]) -> Path:
    """The files of a Hugging Face repo that match `patterns`, into `dest` (the `save_pretrained` layout the
    transformers adapters read). Only where there is internet; nothing calls it at run time unless
    ALLOW_MODEL_DOWNLOADS is set."""
    from huggingface_hub import snapshot_download

    dest = Path(dest).expanduser()
    dest.mkdir(parents=True, exist_ok=True)
    snapshot_download(repo_id=repo_id, local_dir=str(dest), allow_patterns=list(patterns))
    return dest
