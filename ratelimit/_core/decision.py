"""Decisions: what a hit was answered, with everything response headers need."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .rate import Rate

if TYPE_CHECKING:
    from .plan import Plan

__all__ = ["Decision", "LimitStatus", "Receipt"]


class Receipt:
    """What an allowed hit charged, so that it can be given back once.

    :meth:`ratelimit.Limiter.refund` takes a Decision's receipt: the first refund gets
    the charge, every later one (from any thread or task) gets nothing, so a charge is
    never given back twice.
    """

    __slots__ = ("_once",)

    def __init__(self, plan: Plan, nows: Sequence[int]) -> None:
        self._once = iter(((plan, nows),))

    def take(self) -> tuple[Plan, Sequence[int]] | None:
        """The charge (the plan and the server times it was counted at), the first time only."""
        # next() on a C iterator is one atomic step: two concurrent takers cannot both win.
        return next(self._once, None)


@dataclass(frozen=True, slots=True)
class LimitStatus:
    """How one limit of a request stood after the decision.

    Attributes:
        identity: what the limit counts per (as given to ``hit``).
        rate: the limit.
        cost: what the request was charged (or would have been) on this limit.
        allowed: whether this limit alone admitted the request.
        remaining: hits of cost 1 still possible now (never negative).
        reset_after: seconds until this counter has fully decayed to zero.
        retry_after: seconds until the same cost would fit (0 when it fits now).
    """

    identity: str | bytes
    rate: Rate
    cost: int
    allowed: bool
    remaining: int
    reset_after: float
    retry_after: float

    @property
    def limit(self) -> int:
        """The number of hits the window allows."""
        return self.rate.limit


class Decision:
    """The answer to a hit: allowed or not, plus header material, from one round trip.

    ``limit``, ``remaining`` and ``reset_after`` describe the tightest limit of the
    request: when denied, the one that keeps it denied longest; when allowed, the one
    with the fewest hits left. ``limits`` has a :class:`LimitStatus` for every limit,
    in the order requested. ``retry_after`` is 0 when allowed, else the seconds until
    the same request would be allowed assuming no other traffic. ``fallback`` is true
    when the backend failed and the limiter's failure policy answered instead.

    A Decision is truthy when allowed::

        if not limiter.hit(user, "10/second"):
            ...

    Decisions are values: compare them with ``==``; they are read-only. ``receipt`` is
    set on an allowed hit that charged counters (for :meth:`ratelimit.Limiter.refund`);
    ``from_cache`` is true when the deny cache answered without the backend.
    """

    __slots__ = (
        "_limits",
        "_make_limits",
        "allowed",
        "fallback",
        "from_cache",
        "limit",
        "receipt",
        "remaining",
        "reset_after",
        "retry_after",
    )

    def __init__(
        self,
        allowed: bool,
        limit: int,
        remaining: int,
        reset_after: float,
        retry_after: float,
        limits: tuple[LimitStatus, ...] | Callable[[], tuple[LimitStatus, ...]] = (),
        fallback: bool = False,
        *,
        receipt: Receipt | None = None,
        from_cache: bool = False,
    ) -> None:
        self.allowed = allowed
        self.limit = limit
        self.remaining = remaining
        self.reset_after = reset_after
        self.retry_after = retry_after
        self.fallback = fallback
        self.from_cache = from_cache
        self.receipt = receipt
        # ``limits`` may be a function that builds them on first access (most callers
        # never look at them, and building them is most of a decision's cost).
        self._make_limits = limits if callable(limits) else None
        self._limits: tuple[LimitStatus, ...] = () if callable(limits) else limits

    @property
    def limits(self) -> tuple[LimitStatus, ...]:
        """Every limit of the request, in order (built on first access)."""
        if self._make_limits is not None:
            self._limits = self._make_limits()
            self._make_limits = None
        return self._limits

    def __bool__(self) -> bool:
        return self.allowed

    @property
    def denied(self) -> bool:
        """``not allowed``, for readability at call sites."""
        return not self.allowed

    def _fields(self) -> tuple[object, ...]:
        return (
            self.allowed,
            self.limit,
            self.remaining,
            self.reset_after,
            self.retry_after,
            self.limits,
            self.fallback,
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Decision):
            return NotImplemented
        return self._fields() == other._fields()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (
            f"Decision(allowed={self.allowed!r}, limit={self.limit!r}, remaining={self.remaining!r}, "
            f"reset_after={self.reset_after!r}, retry_after={self.retry_after!r}, "
            f"limits={self.limits!r}, fallback={self.fallback!r})"
        )

    def replace(self, **changes: Any) -> Decision:
        """A copy with some fields changed (like ``dataclasses.replace``)."""
        get = changes.get
        return Decision(
            get("allowed", self.allowed),
            get("limit", self.limit),
            get("remaining", self.remaining),
            get("reset_after", self.reset_after),
            get("retry_after", self.retry_after),
            get("limits", self.limits),
            get("fallback", self.fallback),
        )

    @classmethod
    def from_limits(
        cls,
        allowed: bool,
        limits: tuple[LimitStatus, ...],
        fallback: bool = False,
        *,
        receipt: Receipt | None = None,
    ) -> Decision:
        """Build a Decision whose headline numbers are those of the tightest limit."""
        if not limits:
            return cls(True, 0, 0, 0.0, 0.0, (), fallback, receipt=receipt)
        if allowed:
            tight = min(limits, key=_allowed_order)
            retry = 0.0
        else:
            tight = max(limits, key=_denied_order)
            retry = tight.retry_after
        return cls(
            allowed,
            tight.rate.limit,
            tight.remaining,
            tight.reset_after,
            retry,
            limits,
            fallback,
            receipt=receipt,
        )


def _allowed_order(s: LimitStatus) -> tuple[int, int, float]:
    return (s.remaining, s.rate.limit, -s.reset_after)


def _denied_order(s: LimitStatus) -> tuple[bool, float, int]:
    return (not s.allowed, s.retry_after, -s.remaining)
