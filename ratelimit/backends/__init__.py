"""Backends: where counters live. ``memory`` needs nothing; ``redis`` needs redis-py."""

from __future__ import annotations

from ._schemes import BackendOptions, register_scheme
from .base import Backend, BackendError, RawResult, SyncBackend
from .memory import MemoryBackend

__all__ = [
    "Backend",
    "BackendError",
    "BackendOptions",
    "MemoryBackend",
    "RawResult",
    "SyncBackend",
    "register_scheme",
]
