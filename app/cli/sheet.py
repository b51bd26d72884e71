"""The outputs of `cluster`: a self-contained HTML contact sheet, the groups as JSON, the keepers.

Pure presentation of the /v1/cluster/images answer: thumbnails are embedded as
data URIs so the sheet is one file that can be mailed or archived; the JSON maps
the API's image ids back to the user's paths; `export_best` copies or links the
best shot of each group and every unique shot.

A shot may be several files (a RAW beside the JPEG or HEIC it is analysed from): the
sheet and the JSON list its companions under its name, and the export takes them all.
Thumbnails are decoded by Loupe itself (`app.imaging.decode`), so HEIC, AVIF and camera
RAW get a JPEG thumbnail that any browser shows.
"""

from __future__ import annotations

import base64
import html
import io
import shutil
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

#: the pixel limit of a thumbnail's decode when the caller gives none (Settings' MAX_IMAGE_PIXELS default)
THUMB_MAX_PIXELS = 60_000_000


def thumbnail_data_uri(path: Path, size: int = 256, max_pixels: int = THUMB_MAX_PIXELS) -> str | None:
    """A JPEG thumbnail (longest side `size`) of any image Loupe reads, as a data: URI; None when the file cannot
    be read or decoded (the sheet shows a placeholder).

    The file is decoded the way the service decodes it (`decode_image`: format sniffed from the bytes, EXIF /
    HEIF orientation applied, alpha on white), asking for at least twice the thumbnail's size, so a large JPEG
    is decoded reduced and a camera RAW from its embedded preview or a half-size demosaic."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    return thumbnail_of_bytes(data, size, max_pixels)


def thumbnail_of_bytes(data: bytes, size: int = 256, max_pixels: int = THUMB_MAX_PIXELS) -> str | None:
    """`thumbnail_data_uri` of bytes in hand (the Ray engine's actors make the thumbnails where the bytes are)."""
    from PIL import Image

    from app.imaging.decode import decode_image

    try:
        decoded = decode_image(data, max_pixels=max_pixels, min_dim=size * 2)
        im = Image.fromarray(decoded.rgb)
        im.thumbnail((size, size), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=82, optimize=True)
    except Exception:  # noqa: BLE001 - an unreadable file gets a placeholder
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _fmt(v: Any, digits: int = 2) -> str:
    if v is None or v == "":
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


CONTACT_CSS = """
:root{--ok:#1b7f3b;--bad:#8a8a8a;--fg:#1d1f23;--muted:#5b6270;--line:#dde1e7}
*{box-sizing:border-box}body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;color:var(--fg);margin:0;padding:24px;background:#f6f7f9}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:0 0 6px}.meta{color:var(--muted);margin:0 0 16px}
section{background:#fff;border:1px solid var(--line);border-radius:10px;padding:14px 16px;margin:14px 0}
.reason{color:var(--muted);margin:0 0 10px}.grid{display:flex;flex-wrap:wrap;gap:14px}
figure{margin:0;width:272px;border:2px solid var(--line);border-radius:8px;padding:7px;background:#fff;position:relative}
figure img{display:block;max-width:256px;max-height:256px;margin:0 auto;border-radius:4px}
figure.best{border-color:var(--ok);box-shadow:0 0 0 2px #1b7f3b33}
figure.rejected img{filter:grayscale(1);opacity:.45}
.badge{position:absolute;top:10px;left:10px;background:var(--ok);color:#fff;font-weight:600;padding:2px 8px;border-radius:999px;font-size:12px}
figcaption{font-size:12px;margin-top:6px}figcaption .name{font-weight:600;overflow-wrap:anywhere}
.scores{color:var(--muted)}.why{color:#9a3412;margin-top:3px}.ph{width:256px;height:160px;display:flex;align-items:center;justify-content:center;background:#eee;color:#888;border-radius:4px}
.band{display:inline-block;padding:0 6px;border-radius:4px;color:#fff;font-size:11px}
.very_poor{background:#b91c1c}.poor{background:#c2410c}.decent{background:#a16207}.good{background:#4d7c0f}.excellent{background:#15803d}
.err{color:#b91c1c}.companions{color:var(--muted);overflow-wrap:anywhere}.fmt{color:var(--muted);font-weight:400}
"""


def render_contact_sheet(root: Path | str, resp: dict[str, Any], key_of: dict[str, str], thumbs: dict[str, str | None],
                         elapsed_s: float, companions: dict[str, list[str]] | None = None) -> str:
    """The HTML sheet. `companions`: key → the relative paths of the shot's other files (listed under its name)."""
    results = {r.get("image_id"): r for r in resp.get("results", []) if isinstance(r, dict)}
    companions = companions or {}
    esc = html.escape

    def others(key: str) -> str:
        names = companions.get(key) or []
        return "".join(f'<div class="companions">+ {esc(PurePosixPath(c).name)}</div>' for c in names)

    def figure(image_id: str, member: dict[str, Any] | None, extra_class: str = "") -> str:
        key = key_of.get(image_id, image_id)
        r = results.get(image_id) or {}
        q = r.get("quality") or {}
        b = r.get("blur") or {}
        e = r.get("exposure") or {}
        thumb = thumbs.get(image_id)
        img = (f'<img src="{thumb}" alt="{esc(key)}" loading="lazy">' if thumb
               else f'<div class="ph" role="img" aria-label="{esc(key)}">no preview</div>')
        cls = extra_class
        badge = ""
        why = ""
        score_txt = ""
        if member is not None:
            if member.get("is_best"):
                cls += " best"
                badge = '<span class="badge">★ Best shot</span>'
            else:
                cls += " rejected"
                if member.get("rejected_reason"):
                    why = f'<div class="why">Rejected: {esc(str(member["rejected_reason"]))}</div>'
            basis = "quality score" if member.get("ranked_by") == "quality_score" else "sharpness + exposure"
            score_txt = f"rank {member.get('rank')} · ranking score {_fmt(member.get('quality_score'), 3)} ({basis})<br>"
        band = q.get("band")
        band_html = f' <span class="band {esc(band)}">{esc(band.replace("_", " "))}</span>' if band else ""
        scores = (f'{score_txt}quality {_fmt(q.get("score"), 3)}{band_html}<br>'
                  f'sharpness (Laplacian var.) {_fmt(b.get("laplacian_variance"), 1)}'
                  f'{" · blurry" if b.get("is_blurry") else ""}<br>'
                  f'brightness {_fmt(e.get("mean_brightness"), 1)} · {esc(str(e.get("verdict") or "–"))}')
        fmt = r.get("format")
        fmt_html = f' <span class="fmt">({esc(str(fmt))})</span>' if fmt else ""
        return (f'<figure class="{cls.strip()}">{badge}{img}<figcaption><div class="name">{esc(key)}{fmt_html}</div>'
                f'{others(key)}<div class="scores">{scores}</div>{why}</figcaption></figure>')

    parts = [f"<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Loupe contact sheet — {esc(str(root))}</title>"
             f"<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\"><style>{CONTACT_CSS}</style></head><body>"]
    groups = resp.get("groups", [])
    singles = resp.get("singletons", [])
    failed = resp.get("failed", [])
    n_files = len(key_of) + sum(len(companions.get(k) or []) for k in key_of.values())
    files_txt = f" ({n_files} files)" if n_files != len(key_of) else ""
    parts.append(f"<h1>Contact sheet: {esc(str(root))}</h1><p class=\"meta\">{len(key_of)} shots{files_txt} · {len(groups)} "
                 f"group(s) of near-duplicates · {len(singles)} unique shot(s) · {len(failed)} failed · features: "
                 f"{esc(', '.join(resp.get('features_used', [])) or '–')} · made by Loupe in {elapsed_s:.1f} s on "
                 f"{datetime.now().strftime('%Y-%m-%d %H:%M')}</p>")
    for n, g in enumerate(groups, 1):
        members = "".join(figure(m["image_id"], m) for m in g.get("members", []))
        parts.append(f'<section aria-labelledby="g{n}"><h2 id="g{n}">Group {n} — '
                     f'{g.get("size", len(g.get("members", [])))} shots, linked by {esc(" and ".join(g.get("linked_by", [])))}'
                     f'</h2><p class="reason">{esc(str(g.get("reason", "")))}</p><div class="grid">{members}</div></section>')
    if singles:
        parts.append('<section aria-labelledby="singles"><h2 id="singles">Unique shots (no near-duplicate)</h2>'
                     f'<div class="grid">{"".join(figure(i, None) for i in singles)}</div></section>')
    if failed:
        items = "".join(f'<li><span class="name">{esc(key_of.get(f["image_id"], f["image_id"]))}</span>: '
                        f'<span class="err">{esc(str((f.get("error") or {}).get("message", "")))}</span>'
                        f'{others(key_of.get(f["image_id"], f["image_id"]))}</li>' for f in failed)
        parts.append(f'<section aria-labelledby="failed"><h2 id="failed">Could not be read</h2><ul>{items}</ul></section>')
    parts.append("</body></html>")
    return "".join(parts)


def groups_json(root: Path | str, resp: dict[str, Any], key_of: dict[str, str],
                companions: dict[str, list[str]] | None = None) -> dict[str, Any]:
    """The summary: paths are the keys (relative to the folder); `companions` (key → the relative paths of the
    shot's other files) is given for every member, failure and under "companions" (shots that have some), and
    "keep_files" lists every file of the kept shots (what --copy-best / --link-best export)."""
    def k(image_id: str) -> str:
        return key_of.get(image_id, image_id)

    companions = companions or {}
    results = {r.get("image_id"): r for r in resp.get("results", []) if isinstance(r, dict)}
    groups = [{
        "group_id": g["group_id"], "size": g.get("size"), "best": k(g["best_image_id"]), "reason": g.get("reason"),
        "linked_by": g.get("linked_by", []),
        "members": [{"path": k(m["image_id"]), "companions": companions.get(k(m["image_id"]), []),
                     "format": (results.get(m["image_id"]) or {}).get("format"),
                     "decoded_from": (results.get(m["image_id"]) or {}).get("decoded_from"),
                     "rank": m.get("rank"), "is_best": m.get("is_best"),
                     "quality_score": m.get("quality_score"), "ranked_by": m.get("ranked_by"),
                     "rejected_reason": m.get("rejected_reason")} for m in g.get("members", [])],
    } for g in resp.get("groups", [])]
    singles = [k(i) for i in resp.get("singletons", [])]
    keep = [g["best"] for g in groups] + singles
    return {
        "folder": str(root), "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "features_used": resp.get("features_used", []), "params": resp.get("params", {}),
        "groups": groups, "singletons": singles,
        "failed": [{"path": k(f["image_id"]), "companions": companions.get(k(f["image_id"]), []), "error": f.get("error")}
                   for f in resp.get("failed", [])],
        "companions": {key: list(c) for key, c in companions.items() if c},
        "keep": keep,
        "keep_files": [f for key in keep for f in (key, *companions.get(key, []))],
    }


def export_best(keep: list[str], path_of_key: dict[str, Path], dest: Path, link: bool,
                companions_of_key: dict[str, list[Path]] | None = None) -> tuple[int, int]:
    """Copy (or symlink) every shot of `keep` into `dest` at its relative path, the file analysed and its
    companions beside it. Returns (shots, files)."""
    dest.mkdir(parents=True, exist_ok=True)
    shots = files = 0
    for key in keep:
        src = path_of_key[key]
        parent = PurePosixPath(key).parent
        for rel, path in [(key, src)] + [((parent / c.name).as_posix(), c) for c in (companions_of_key or {}).get(key, [])]:
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.is_symlink() or target.exists():
                target.unlink()
            if link:
                target.symlink_to(path.resolve())
            else:
                shutil.copy2(path, target)
            files += 1
        shots += 1
    return shots, files
