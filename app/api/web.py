"""The try-it page at GET / and its static files under /static (bundled in app/static; nothing external).

GET / is also image_tagger's version document: a client that asks for JSON (`Accept: application/json`,
or `*/*` as HTTP libraries send) gets it; a browser (which names text/html) gets the page."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from app.api.compat.image_tagger import version_document, wants_json

STATIC = Path(__file__).resolve().parents[1] / "static"

web_router = APIRouter(include_in_schema=False)
web_router.mount("/static", StaticFiles(directory=STATIC, check_dir=False), name="static")


@web_router.get("/")
async def index(request: Request) -> Response:
    if wants_json(request.headers.get("accept", "")):
        return JSONResponse(version_document(request), headers={"Vary": "Accept"})
    page = STATIC / "index.html"
    if page.exists():
        return FileResponse(page, media_type="text/html", headers={"Cache-Control": "no-cache", "Vary": "Accept"})
    return RedirectResponse("/docs")
