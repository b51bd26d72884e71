"""Loupe: self-hosted image analysis."""

from app.core.memory import limit_malloc_arenas

limit_malloc_arenas()
