"""Loupe: self-hosted image analysis."""

from app.core.memory import tune_malloc

tune_malloc()
