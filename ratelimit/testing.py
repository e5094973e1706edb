"""Helpers for testing code that uses ratelimit: a clock you move by hand."""

from __future__ import annotations

__all__ = ["FakeClock"]


class FakeClock:
    """A ``time.time`` stand-in for ``Limiter(clock=...)`` on the memory backend.

    >>> from ratelimit import Limiter
    >>> clock = FakeClock()
    >>> limiter = Limiter(clock=clock)
    >>> limiter.hit("bob", "1/minute").allowed, limiter.hit("bob", "1/minute").allowed
    (True, False)
    >>> clock.advance(120)
    >>> limiter.hit("bob", "1/minute").allowed
    True
    """

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = float(start)

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds``."""
        if seconds < 0:
            raise ValueError("a clock only moves forward")
        self.now += seconds

    def set(self, when: float) -> None:
        """Jump to ``when`` (seconds since the epoch)."""
        self.now = float(when)
