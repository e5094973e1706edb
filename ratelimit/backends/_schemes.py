"""Storage URLs to backends: a registry from URL scheme to the backend that serves it.

``Limiter("redis://...")`` looks the scheme up here instead of walking an if-ladder, so
a backend (built in, or a user's) is one :func:`register_scheme` call. Factories are
called lazily: the Redis backend, which needs redis-py, is imported only for a Redis URL.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .base import Backend

__all__ = ["BackendOptions", "backend_from_url", "register_scheme"]


@dataclass(frozen=True)
class BackendOptions:
    """The Limiter arguments a backend built from a URL may use."""

    timeout: float = 0.05
    coalesce: bool = True
    max_keys: int = 100_000
    clock: Callable[[], float] | None = None


BackendFactory = Callable[[str, BackendOptions], Backend]
"""Builds a backend from its URL and the options: ``factory(url, options) -> Backend``."""

_SCHEMES: dict[str, BackendFactory] = {}


def register_scheme(factory: BackendFactory, *schemes: str) -> None:
    """Serve storage URLs of ``schemes`` (``"redis"``, ``"memory"``...) with ``factory``."""
    for scheme in schemes:
        _SCHEMES[scheme.lower()] = factory


def backend_from_url(url: str, options: BackendOptions) -> Backend:
    """The backend for ``url``; ValueError naming the known schemes when none serves it."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    factory = _SCHEMES.get(scheme)
    if factory is None:
        known = ", ".join(f"{s}://" for s in sorted(_SCHEMES))
        raise ValueError(f"unknown storage {url!r}: use one of {known}")
    return factory(url, options)


def _memory(url: str, options: BackendOptions) -> Backend:
    from .memory import MemoryBackend

    return MemoryBackend(max_keys=options.max_keys, clock=options.clock)


def _redis(url: str, options: BackendOptions) -> Backend:
    if options.clock is not None:
        raise ValueError(
            "clock= applies to the memory backend only: Redis TIME is the clock of Redis backends"
        )
    from .redis import RedisBackend

    return RedisBackend(url, timeout=options.timeout, coalesce=options.coalesce)


register_scheme(_memory, "memory")
register_scheme(
    _redis, "redis", "rediss", "unix", "redis+cluster", "rediss+cluster", "redis+sentinel", "rediss+sentinel"
)
