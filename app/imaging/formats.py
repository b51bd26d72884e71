"""Which image format some bytes are, from the bytes alone (never a file name or a Content-Type).

Pillow's formats (JPEG, PNG, WebP, GIF, BMP, TIFF), HEIF/HEIC and AVIF (ISO-BMFF files told apart by
their `ftyp` brands) and camera RAW: DNG and the TIFF-structured RAWs (CR2, NEF, ARW, PEF, SRW …,
recognised by their IFD0: a DNGVersion tag, Canon's `CR` marker, or a camera Make with SubIFDs),
Olympus ORF, Panasonic RW2, Fujifilm RAF and Canon CR3 (ISO-BMFF, brand `crx `). A TIFF-structured
file that may be a RAW is confirmed by LibRaw when it is opened (`app.imaging.raw`); one LibRaw does
not take is decoded as the TIFF it also is.
"""

from __future__ import annotations

import struct

PILLOW_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
BMFF_FORMATS = ("HEIF", "AVIF")
RAW_FORMATS = ("DNG", "CR2", "CR3", "NEF", "ARW", "PEF", "SRW", "ORF", "RW2", "RAF", "RAW")
SUPPORTED_FORMATS = PILLOW_FORMATS + BMFF_FORMATS + RAW_FORMATS
#: RAW kinds named from a TIFF's camera Make and SubIFDs only (no RAW marker): when LibRaw does not take the
#: file, it is read as the TIFF it also is. DNG and CR2 carry their own markers and are not guessed.
GUESSED_RAW = ("NEF", "ARW", "PEF", "SRW", "RAW")

#: file extensions of the formats above (the CLI picks files by them; the service never looks at names)
RAW_EXTENSIONS = (".dng", ".cr2", ".cr3", ".nef", ".nrw", ".arw", ".srf", ".sr2", ".pef", ".srw", ".orf", ".rw2",
                  ".raf", ".raw", ".rwl", ".3fr", ".iiq", ".erf", ".mef", ".mos", ".x3f", ".kdc", ".dcr")
HEIF_EXTENSIONS = (".heic", ".heif", ".hif", ".avif")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")

_SIGNATURES: tuple[tuple[bytes, int, str], ...] = (
    (b"\xff\xd8\xff", 0, "JPEG"),
    (b"\x89PNG\r\n\x1a\n", 0, "PNG"),
    (b"GIF87a", 0, "GIF"),
    (b"GIF89a", 0, "GIF"),
    (b"BM", 0, "BMP"),
    (b"IIRO", 0, "ORF"),
    (b"IIRS", 0, "ORF"),
    (b"MMOR", 0, "ORF"),
    (b"IIU\x00", 0, "RW2"),
    (b"FUJIFILMCCD-RAW ", 0, "RAF"),
)
_TIFF = (b"II*\x00", b"MM\x00*")
_AVIF_BRANDS = {b"avif", b"avis"}
_HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"hevm", b"hevs", b"mif1", b"msf1", b"mif2"}
_MAKES = {"NIKON": "NEF", "SONY": "ARW", "PENTAX": "PEF", "RICOH": "PEF", "SAMSUNG": "SRW", "CANON": "CR2"}
TAG_MAKE, TAG_SUBIFDS, TAG_DNG_VERSION = 271, 330, 50706


def bmff_brands(data: bytes) -> list[bytes]:
    """The major and compatible brands of an ISO-BMFF `ftyp` box at the start of `data` (empty: not one)."""
    if len(data) < 16 or data[4:8] != b"ftyp":
        return []
    size = struct.unpack(">I", data[:4])[0]
    end = min(len(data), size if 16 <= size <= 4096 else 16)
    return [data[8:12]] + [data[i:i + 4] for i in range(16, end - 3, 4)]


def tiff_ifd0(data: bytes) -> dict[int, tuple[int, int, bytes]] | None:
    """IFD0's entries (tag → (type, count, the 4 value/offset bytes)) of a TIFF-structured file, or None."""
    if data[:4] not in _TIFF or len(data) < 16:
        return None
    order = "<" if data[:2] == b"II" else ">"
    offset = struct.unpack(order + "I", data[4:8])[0]
    if offset + 2 > len(data):
        return None
    (n,) = struct.unpack(order + "H", data[offset:offset + 2])
    entries: dict[int, tuple[int, int, bytes]] = {}
    for k in range(min(n, 512)):
        at = offset + 2 + 12 * k
        if at + 12 > len(data):
            break
        tag, kind, count = struct.unpack(order + "HHI", data[at:at + 8])
        entries[tag] = (kind, count, data[at + 8:at + 12])
    return entries


def _ascii(data: bytes, entry: tuple[int, int, bytes], order: str) -> str:
    kind, count, raw = entry
    if kind != 2:
        return ""
    if count <= 4:
        return raw[:count].split(b"\0")[0].decode("latin-1")
    (at,) = struct.unpack(order + "I", raw)
    return data[at:at + min(count, 64)].split(b"\0")[0].decode("latin-1")


def tiff_raw_kind(data: bytes) -> str | None:
    """The RAW format of a TIFF-structured file, or None when it looks like a plain TIFF."""
    ifd = tiff_ifd0(data)
    if ifd is None:
        return None
    if data[8:10] == b"CR":
        return "CR2"
    if TAG_DNG_VERSION in ifd:
        return "DNG"
    if TAG_MAKE in ifd and TAG_SUBIFDS in ifd:
        make = _ascii(data, ifd[TAG_MAKE], "<" if data[:2] == b"II" else ">").upper()
        return next((kind for name, kind in _MAKES.items() if name in make), "RAW")
    return None


def sniff_format(data: bytes) -> str | None:
    """The format named by the file's first bytes, or None."""
    for magic, offset, fmt in _SIGNATURES:
        if data[offset:offset + len(magic)] == magic:
            return fmt
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data[:4] in _TIFF:
        return tiff_raw_kind(data) or "TIFF"
    brands = bmff_brands(data)
    if brands:
        if brands[0] == b"crx ":
            return "CR3"
        if _AVIF_BRANDS & set(brands):
            return "AVIF"
        if _HEIF_BRANDS & set(brands):
            return "HEIF"
    return None


def is_raw(fmt: str | None) -> bool:
    return fmt in RAW_FORMATS


def may_be_raw(head: bytes) -> bool:
    """From a file's first bytes: could it be a camera RAW (and so take MAX_RAW_MB rather than MAX_IMAGE_MB)?
    Every TIFF-structured file counts (its IFD0 may lie beyond `head`)."""
    fmt = sniff_format(head)
    return is_raw(fmt) or head[:4] in _TIFF
