"""What a hit is answered when the backend fails, and when to try the backend again."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Literal

__all__ = ["FAILURE_MODES", "CircuitBreaker", "FailureMode"]

FailureMode = Literal["open", "closed", "local"]
FAILURE_MODES: tuple[str, ...] = ("open", "closed", "local")

log = logging.getLogger("ratelimit")


class CircuitBreaker:
    """Stops asking a failing backend for a while, then lets one request probe it.

    After a failure the breaker opens for ``base`` seconds, doubling on each further
    failure up to ``cap``. While open, hits are answered by the failure policy at once
    (no connect attempt, no timeout wait). When the pause ends, the first hit probes the
    backend while the others keep falling back; a success closes the breaker.
    """

    __slots__ = ("_base", "_cap", "_clock", "_failures", "_open_until", "_probing")

    def __init__(
        self, base: float = 0.25, cap: float = 5.0, clock: Callable[[], float] | None = None
    ) -> None:
        self._base = base
        self._cap = cap
        self._clock = clock or time.monotonic
        self._failures = 0
        self._open_until = 0.0
        self._probing = False

    @property
    def is_open(self) -> bool:
        """True while failing (from the first failure until a success)."""
        return self._failures > 0

    def allow(self) -> bool:
        """May this hit ask the backend?"""
        if self._open_until == 0.0:
            return True
        now = self._clock()
        if now < self._open_until:
            return False
        # This caller probes; everyone else falls back until it reports.
        self._open_until = now + self._pause()
        self._probing = True
        return True

    def success(self) -> None:
        """The backend answered: close the breaker."""
        if self._failures:
            log.warning("rate limit backend recovered after %d failed attempt(s)", self._failures)
        self._failures = 0
        self._open_until = 0.0
        self._probing = False

    def failure(self, error: BaseException) -> None:
        """The backend failed: open the breaker, longer after each failed probe.

        Requests that were already in flight when the breaker opened fail too; they
        keep it open but do not lengthen the pause (only the first failure and failed
        probes do), so a burst of concurrent failures does not delay recovery.
        """
        if self._failures == 0 or self._probing:
            self._failures += 1
            self._probing = False
            if self._failures == 1:
                log.warning("rate limit backend failed, applying the failure policy: %s", error)
        self._open_until = max(self._open_until, self._clock() + self._pause())

    def _pause(self) -> float:
        return float(min(self._cap, self._base * 2 ** min(self._failures - 1, 16)))
