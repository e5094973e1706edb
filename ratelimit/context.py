"""The request being served, as the middleware saw it, for route decorators to use.

HTTP middlewares (ASGI, WSGI, Django) set :data:`current` for the duration of a request
so that ``@limiter.limit(...)`` on an endpoint can find the request without the
endpoint having to take a ``request`` parameter, answer in the framework's own
response type, and hand headers back for the middleware to add to the response.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from ._core.decision import Decision
from ._engine.engine import Engine
from .enforce import Outcome
from .request import RequestInfo

__all__ = ["RequestContext", "current"]


@dataclass(slots=True)
class RequestContext:
    """One request in flight.

    Attributes:
        request: the neutral request.
        render: turns a deny/reject :class:`~ratelimit.enforce.Outcome` into the
            framework's native response (what an endpoint may return).
        headers: header fields that decorators add; the middleware appends them to
            the response it sends.
        charges: ``(limiter, decision)`` pairs the middleware charged for this request;
            a decorator that denies the request refunds them, so a denied request
            consumes nothing anywhere (see :meth:`ratelimit.Limiter.refund`).
    """

    request: RequestInfo
    render: Callable[[Outcome], Any]
    headers: list[tuple[str, str]] = field(default_factory=list)
    charges: list[tuple[Engine, Decision]] | None = None

    def add(self, outcome: Outcome) -> None:
        """Add an allowed ``outcome``'s header fields to the response."""
        self.headers.extend(outcome.headers)

    def record(self, limiter: Engine, outcome: Outcome) -> None:
        """Remember what an allowed ``outcome`` charged, for a later denial to refund."""
        for decision in (outcome.decision, outcome.shadow):
            if decision is not None and decision.receipt is not None:
                if self.charges is None:
                    self.charges = []
                self.charges.append((limiter, decision))

    def refund_sync(self) -> None:
        """Refund every recorded charge (a later check denied the request)."""
        charges, self.charges = self.charges, None
        for limiter, decision in charges or ():
            limiter.refund(decision)

    async def refund_async(self) -> None:
        """Async :meth:`refund_sync`."""
        charges, self.charges = self.charges, None
        for limiter, decision in charges or ():
            await limiter.arefund(decision)


current: ContextVar[RequestContext | None] = ContextVar("ratelimit_request", default=None)
"""The :class:`RequestContext` of the request being served, or None outside the middlewares."""
