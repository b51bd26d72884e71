"""Where an image's bytes come from: a URL (fetched safely), base64 (raw or data URI), or an upload."""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
from starlette.datastructures import UploadFile

from app.core.config import Settings
from app.core.errors import BadRequest, ImageTooLarge, InvalidImage
from app.imaging.fetch import fetch_url

_DATA_URI = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w-]+=[^;,]*)*)(?P<b64>;base64)?,", re.I)
_WS = re.compile(r"\s+")


@dataclass
class ImageSource:
    """One image of a request, before its bytes are read."""

    image_id: str | None = None
    url: str | None = None
    base64: str | None = None
    upload: UploadFile | None = None
    data: bytes | None = None  # bytes already in hand (CLI, tests)

    @property
    def kind(self) -> str:
        return "url" if self.url else "base64" if self.base64 else "upload" if self.upload else "bytes"


def decode_base64(text: str, max_bytes: int) -> bytes:
    """Raw base64 or a data URI → bytes; the size is checked before decoding."""
    match = _DATA_URI.match(text[:256])
    if match:
        if not match.group("b64"):
            raise InvalidImage("Only base64 data URIs are accepted (…;base64,…).")
        text = text[match.end():]
    text = _WS.sub("", text)
    if not text:
        raise InvalidImage("The base64 string is empty.")
    if len(text) * 3 // 4 > max_bytes + 3:
        raise ImageTooLarge(
            f"The base64 image decodes to about {len(text) * 3 // 4} bytes; the limit is {max_bytes} (MAX_IMAGE_MB, "
            "or MAX_RAW_MB for camera RAW).",
            detail={"max_bytes": max_bytes},
        )
    text = text.replace("-", "+").replace("_", "/")  # accept the URL-safe alphabet too
    text += "=" * (-len(text) % 4)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidImage("The base64 string is not valid base64.", detail={"reason": str(exc)}) from exc


async def read_upload(upload: UploadFile, settings: Settings) -> bytes:
    """Read an upload in chunks, stopping as soon as it passes its limit (Settings.byte_limit: from the
    first bytes, MAX_RAW_MB for a camera RAW, else MAX_IMAGE_MB)."""
    chunks: list[bytes] = []
    total = 0
    max_bytes, setting = settings.max_read_bytes, "MAX_IMAGE_MB"
    while True:
        chunk = await upload.read(1 << 20)
        if not chunk:
            break
        if not chunks:  # a 1 MiB read: the head is all there unless the file is smaller
            max_bytes, setting = settings.byte_limit(chunk)
        total += len(chunk)
        if total > max_bytes:
            raise ImageTooLarge(
                f"The upload is larger than the limit of {max_bytes} bytes ({setting}).",
                detail={"max_bytes": max_bytes, "filename": upload.filename},
            )
        chunks.append(chunk)
    return b"".join(chunks)


def check_bytes(data: bytes, settings: Settings) -> None:
    """413 when `data` is over its limit (MAX_RAW_MB for a camera RAW, MAX_IMAGE_MB for the rest)."""
    from app.imaging.formats import is_raw, sniff_format

    raw = is_raw(sniff_format(data[:65536]))
    limit, setting = (settings.max_raw_bytes, "MAX_RAW_MB") if raw else (settings.max_image_bytes, "MAX_IMAGE_MB")
    if len(data) > limit:
        raise ImageTooLarge(f"The image is {len(data)} bytes; the limit is {limit} ({setting}).",
                            detail={"max_bytes": limit, "received_bytes": len(data)})


async def read_source(src: ImageSource, client: httpx.AsyncClient, settings: Settings,
                      offload: Callable[..., Awaitable[Any]] | None = None) -> tuple[bytes, str | None]:
    """The image's bytes and, for URLs, the final URL after redirects. `offload(fn, *args)` runs the CPU
    work (base64 decoding: up to MAX_IMAGE_MB per image) off the event loop; without it, inline."""
    if src.url:
        fetched = await fetch_url(client, src.url, settings)
        return fetched.data, fetched.final_url
    if src.base64 is not None:
        if offload is not None:
            return await offload(decode_base64, src.base64, settings.max_read_bytes), None
        return decode_base64(src.base64, settings.max_read_bytes), None
    if src.upload is not None:
        return await read_upload(src.upload, settings), None
    if src.data is not None:
        return src.data, None
    raise BadRequest("Each image needs one of: url, base64, or an uploaded file.")
