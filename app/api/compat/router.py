"""Every compatibility route, in one router for create_app."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.compat import image_embed, image_tagger, quality_gate, sightengine

compat_router = APIRouter()
compat_router.include_router(quality_gate.router)
compat_router.include_router(quality_gate.public_router)
compat_router.include_router(sightengine.router)
compat_router.include_router(image_embed.router)
compat_router.include_router(image_tagger.router)
