"""Django integration: a middleware configured from ``settings.RATELIMIT``.

::

    MIDDLEWARE = [
        ...,
        "django.contrib.auth.middleware.AuthenticationMiddleware",
        "ratelimit.django.RateLimitMiddleware",   # after anything its key functions read
    ]
    RATELIMIT = {
        "LIMITER": "myproject.limits.limiter",     # a Limiter (dotted path) or a storage URL
        "LIMITS": {"POST /login": "5/minute", "GET /items/*": "100/minute"},
        "KEY": "ratelimit.keys.client_ip",         # key of LIMITS (a function, or a class to call)
        "RULES": "myproject.limits.rules",         # Rule objects, or a dotted path to a list
        "MISSING_IDENTITY": "ip",                  # "ip" | "anonymous" | "reject" (401)
    }
    # or, with the rules in a config file (docs/configuration.md), watched for changes:
    RATELIMIT = {"CONFIG": "/etc/ratelimit/limits.yaml"}

The middleware decides the configured rules on every request (429 with RateLimit
headers and a problem+json body, 401 for ``"reject"``), sets
:data:`ratelimit.context.current` while the view runs so ``@limiter.limit`` views need
nothing more, and adds the RateLimit headers of allowed requests to the response.
Keep ``@limiter.limit`` and ``LIMITER`` on the same :class:`~ratelimit.Limiter` object
(a dotted path) when they should share a backend.

It is synchronous (``sync_capable = True``, ``async_capable = False``): under ASGI,
Django runs it in a thread, and async views still work (Django adapts them and carries
the context variable over). Paths are ``request.path_info`` (without ``SCRIPT_NAME``);
``RequestInfo.native`` is the ``HttpRequest``, so a key function may read, say,
``request.native.user`` when the middleware comes after authentication. The context
is reset when the view returns: a streaming body is sent without it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from django.conf import settings  # type: ignore[import-untyped]
from django.core.exceptions import ImproperlyConfigured  # type: ignore[import-untyped]
from django.http import HttpRequest, HttpResponse  # type: ignore[import-untyped]
from django.utils.module_loading import import_string  # type: ignore[import-untyped]

from . import context
from .decorators import RateLimitExceeded
from .enforce import Enforcer, Outcome
from .headers import merge_fields
from .limiter import Limiter
from .rules import Rule
from .wsgi import request_info

__all__ = ["RateLimitMiddleware", "render"]

_SETTINGS = frozenset(
    {
        "CONFIG",
        "LIMITER",
        "RULES",
        "LIMITS",
        "KEY",
        "MISSING_IDENTITY",
        "HEADERS",
        "LEGACY_HEADERS",
        "METRICS",
        "TRUSTED_PROXIES",
    }
)


def render(outcome: Outcome) -> HttpResponse:
    """The Django response for a denied (429) or rejected (401) request."""
    return HttpResponse(
        outcome.body, status=outcome.status, content_type=outcome.content_type, headers=dict(outcome.headers)
    )


def _load(value: Any) -> Any:
    return import_string(value) if isinstance(value, str) else value


def _limiter(value: Any, config: Any = None) -> Limiter:
    if config is not None:
        if "LIMITER" in getattr(settings, "RATELIMIT", {}):
            raise ImproperlyConfigured("RATELIMIT: give CONFIG or LIMITER, not both")
        return Limiter.from_config(config)
    if isinstance(value, str) and "://" in value:
        return Limiter(value)
    limiter = _load(value)
    if not isinstance(limiter, Limiter):
        raise ImproperlyConfigured(f"RATELIMIT['LIMITER'] must be a Limiter or a storage URL, got {value!r}")
    return limiter


def _rules(value: Any) -> list[Rule]:
    loaded = _load(value)
    items = [loaded] if isinstance(loaded, Rule) else [_load(item) for item in loaded]
    if not all(isinstance(rule, Rule) for rule in items):
        raise ImproperlyConfigured(f"RATELIMIT['RULES'] must be Rule objects, got {value!r}")
    return items


def _config(options: Mapping[str, Any]) -> Enforcer:
    unknown = sorted(set(options) - _SETTINGS)
    if unknown:
        raise ImproperlyConfigured(f"unknown RATELIMIT settings {unknown}; known: {sorted(_SETTINGS)}")
    key = _load(options.get("KEY"))
    proxies = options.get("TRUSTED_PROXIES")
    if isinstance(key, type):  # "ratelimit.keys.client_ip": the class, called with no arguments
        key = key()
    try:
        return Enforcer.for_adapter(
            _limiter(options.get("LIMITER", "memory://"), options.get("CONFIG")),
            "django",
            _rules(options.get("RULES", ())),
            limits=options.get("LIMITS"),
            key=key,
            trusted_proxies=proxies,
            missing_identity=options.get("MISSING_IDENTITY"),
            headers=options.get("HEADERS"),
            legacy_headers=options.get("LEGACY_HEADERS"),
            metrics=_load(options.get("METRICS")),
        )
    except (TypeError, ValueError) as exc:
        raise ImproperlyConfigured(f"RATELIMIT: {exc}") from exc


class RateLimitMiddleware:
    """Rate limits every request of a Django project (configured by ``settings.RATELIMIT``)."""

    sync_capable = True
    async_capable = False

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response
        self.enforcer = _config(getattr(settings, "RATELIMIT", {}))

    def __call__(self, request: HttpRequest) -> HttpResponse:
        info = request_info(request.META, path=request.path_info or "/", native=request)
        outcome = self.enforcer.check(info)
        if outcome.action in ("deny", "reject"):
            return render(outcome)
        ctx = context.RequestContext(info, render, list(outcome.headers))
        ctx.record(self.enforcer.limiter, outcome)
        token = context.current.set(ctx)
        try:
            response = self.get_response(request)
        finally:
            context.current.reset(token)
        if ctx.headers:
            names = {name.lower(): name for name, _ in reversed(ctx.headers)}  # first spelling wins
            present = [(name, response[name]) for name in names.values() if response.has_header(name)]
            for name, value in merge_fields([*present, *ctx.headers]):
                response[name] = value
        return response

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        """Answer a :class:`~ratelimit.decorators.RateLimitExceeded` raised by a view."""
        if isinstance(exception, RateLimitExceeded):
            return render(exception.outcome)
        return None
