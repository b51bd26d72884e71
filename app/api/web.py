"""The try-it page at GET / and its static files under /static (bundled in app/static; nothing external)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).resolve().parents[1] / "static"

web_router = APIRouter(include_in_schema=False)
web_router.mount("/static", StaticFiles(directory=STATIC, check_dir=False), name="static")


@web_router.get("/")
async def index():
    page = STATIC / "index.html"
    if page.exists():
        return FileResponse(page, media_type="text/html", headers={"Cache-Control": "no-cache"})
    return RedirectResponse("/docs")
