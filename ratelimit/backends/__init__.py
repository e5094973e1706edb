"""Backends: where counters live. ``memory`` needs nothing; ``redis`` needs redis-py."""

from __future__ import annotations

from .base import Backend, BackendError, RawResult, SyncBackend
from .memory import MemoryBackend

__all__ = ["Backend", "BackendError", "MemoryBackend", "RawResult", "SyncBackend"]
