"""The try-it page at GET / (static files bundled in app/static)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, RedirectResponse

STATIC = Path(__file__).resolve().parents[1] / "static"

web_router = APIRouter(include_in_schema=False)


@web_router.get("/")
async def index():
    page = STATIC / "index.html"
    if page.exists():
        return FileResponse(page, media_type="text/html")
    return RedirectResponse("/docs")
