"""``@limiter.limit(...)``: limits on one endpoint, sync or async, any signature.

The endpoint keeps its own signature (no ``request`` parameter is forced on it): the
request comes from :data:`ratelimit.context.current`, which the HTTP middlewares set,
or from a framework hook that provides the same (see ``ratelimit.flask``). Stacked
decorators on one endpoint are decided together, all or nothing::

    @app.get("/items")
    @limiter.limit("10/second", key=jwt_subject(jwks_url=...))
    @limiter.limit("1000/day", key=jwt_subject(jwks_url=...))
    async def items(): ...
"""

from __future__ import annotations

import functools
import importlib
import inspect
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from . import context
from ._core.rate import RateLike
from .enforce import Enforcer, MissingIdentity
from .request import KeyFunc, RequestInfo
from .rules import Rule, bounded_name

if TYPE_CHECKING:
    from .limiter import Limiter

__all__ = ["ContextFinder", "RateLimitExceeded", "limit", "register_context_finder"]

F = TypeVar("F", bound=Callable[..., Any])
ContextFinder = Callable[[tuple[Any, ...], dict[str, Any]], "context.RequestContext | None"]
"""Finds the request of a decorated call from its ``(args, kwargs)``, or returns None."""
_finders: list[ContextFinder] = []

# The adapters that bring a finder for a framework's own request objects. They register
# it when imported; a decorated endpoint on an app that never imported its adapter
# (no middleware, a Request parameter) loads it here, so finding the request does not
# depend on what the app happened to import first.
_BUILTIN_FINDERS: tuple[tuple[str, str], ...] = (
    ("starlette", "ratelimit.asgi"),
    ("flask", "ratelimit.flask"),
)


class RateLimitExceeded(Exception):
    """Raised by a decorated endpoint when no framework response can be built.

    Carries the :class:`~ratelimit.enforce.Outcome`; the middlewares turn it into the
    429 (or 401) response.
    """

    def __init__(self, outcome: Any) -> None:
        super().__init__(f"rate limit exceeded (HTTP {outcome.status})")
        self.outcome = outcome


def register_context_finder(finder: ContextFinder) -> None:
    """Teach decorators to find the request another way (a framework's own global)."""
    if finder not in _finders:
        _finders.append(finder)


def _load_builtin_finders() -> None:
    """Import the adapters of the frameworks this process uses (each registers its finder)."""
    for framework, adapter in _BUILTIN_FINDERS:
        if framework in sys.modules and adapter not in sys.modules:
            importlib.import_module(adapter)


def _find_context(args: tuple[Any, ...], kwargs: dict[str, Any]) -> context.RequestContext:
    ctx = context.current.get()
    if ctx is not None:
        return ctx
    for attempt in range(2):
        for finder in _finders:
            ctx = finder(args, kwargs)
            if ctx is not None:
                return ctx
        if attempt == 0:
            _load_builtin_finders()
    raise RuntimeError(
        "@limiter.limit cannot see the request: add ratelimit's middleware to the app "
        "(ratelimit.asgi.RateLimitMiddleware, ratelimit.wsgi.RateLimitMiddleware or "
        "ratelimit.django.RateLimitMiddleware), or give the endpoint a Request parameter"
    )


def _rule_name(fn: Callable[..., Any]) -> str:
    raw = f"{getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', repr(fn))}"
    return bounded_name(re.sub(r"[^A-Za-z0-9._-]", "_", raw).strip("._-") or "endpoint", raw)


def limit(
    limiter: Limiter,
    rates: RateLike | Sequence[RateLike],
    key: KeyFunc | None = None,
    *,
    name: str | None = None,
    cost: int | Callable[[RequestInfo], int] = 1,
    methods: str | Iterable[str] = (),
    shadow: bool = False,
    missing_identity: MissingIdentity | None = None,
    trusted_proxies: int | None = None,
) -> Callable[[F], F]:
    """Limit the decorated endpoint (see :meth:`ratelimit.Limiter.limit`).

    ``missing_identity`` and ``trusted_proxies`` left at None take the config file's
    settings (for a :meth:`ratelimit.Limiter.from_config` limiter), then the defaults
    (``"ip"``, 0), as every adapter does.
    """

    def decorate(fn: F) -> F:
        original = getattr(fn, "__ratelimit_original__", fn)
        earlier: tuple[Rule, ...] = getattr(fn, "__ratelimit_rules__", ())
        base = name or _rule_name(original)
        rule_name = base if not any(r.name == base for r in earlier) else f"{base}-{len(earlier)}"
        rule = Rule.of(rule_name, rates, key, methods=methods, cost=cost, shadow=shadow)
        rules = (rule, *earlier)
        enforcer = Enforcer.for_adapter(
            limiter,
            "decorator",
            rules,
            config_rules=False,  # the middleware in front enforces the file's rules
            missing_identity=missing_identity,
            trusted_proxies=trusted_proxies,
        )

        if inspect.iscoroutinefunction(original):

            @functools.wraps(original)
            async def awrapper(*args: Any, **kwargs: Any) -> Any:
                ctx = _find_context(args, kwargs)
                outcome = await enforcer.acheck(ctx.request)
                if outcome.action in ("deny", "reject"):
                    await ctx.refund_async()  # the middleware's charges: denied means nothing counts
                    return ctx.render(outcome)
                ctx.add(outcome)
                return await original(*args, **kwargs)

            wrapper: Any = awrapper
        else:

            @functools.wraps(original)
            def swrapper(*args: Any, **kwargs: Any) -> Any:
                ctx = _find_context(args, kwargs)
                outcome = enforcer.check(ctx.request)
                if outcome.action in ("deny", "reject"):
                    ctx.refund_sync()  # the middleware's charges: denied means nothing counts
                    return ctx.render(outcome)
                ctx.add(outcome)
                return original(*args, **kwargs)

            wrapper = swrapper
        wrapper.__ratelimit_original__ = original
        wrapper.__ratelimit_rules__ = rules
        return wrapper  # type: ignore[no-any-return]

    return decorate
