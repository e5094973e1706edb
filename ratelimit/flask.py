"""Flask integration: the :class:`RateLimit` extension and ``@limiter.limit`` on views.

Two setups, same rules and same decorators::

    from ratelimit.flask import RateLimit

    RateLimit(app, limiter=limiter, limits={"POST /login": "5/minute"})  # the WSGI middleware
    RateLimit(app, limiter=limiter, mode="hooks")                         # Flask request hooks

``mode="middleware"`` (the default) wraps ``app.wsgi_app`` in
:class:`ratelimit.wsgi.RateLimitMiddleware`: limits are decided before Flask routes
the request. ``mode="hooks"`` decides them in a ``before_request`` hook instead (after
routing, so other ``before_request`` hooks registered earlier run first) and adds the
headers in ``after_request``; use it when you cannot or do not want to wrap
``wsgi_app``.

Importing this module also lets ``@limiter.limit`` find the request through
``flask.request`` when neither setup is installed: limits then still apply, but
allowed responses carry no RateLimit headers (there is no hook to add them).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Literal

import flask

from ._core.rate import RateLike
from ._core.sinks import MetricsSink
from .context import RequestContext
from .decorators import RateLimitExceeded, register_context_finder
from .enforce import Enforcer, MissingIdentity, Outcome
from .headers import merge_fields
from .limiter import Limiter
from .request import KeyFunc
from .rules import Rule
from .wsgi import RateLimitMiddleware, request_info

__all__ = ["RateLimit", "render"]

_ENVIRON_KEY = "ratelimit.context"


def render(outcome: Outcome) -> flask.Response:
    """The Flask response for a denied (429) or rejected (401) request."""
    response: flask.Response = flask.current_app.response_class(
        outcome.body, status=outcome.status, headers=outcome.headers, content_type=outcome.content_type
    )
    return response


def _flask_context(args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None) -> RequestContext | None:
    """The request in flight, kept in its WSGI environ (so it lives exactly as long)."""
    if not flask.has_request_context():
        return None
    environ = flask.request.environ
    ctx: RequestContext | None = environ.get(_ENVIRON_KEY)
    if ctx is None:
        ctx = RequestContext(request_info(environ), render)
        environ[_ENVIRON_KEY] = ctx
    return ctx


register_context_finder(_flask_context)


class RateLimit:
    """Flask extension: rate limits every request and serves ``@limiter.limit`` views.

    Args:
        app: the Flask app (or call :meth:`init_app` later, once per app).
        limiter: decides (memory or Redis).
        rules, key, limits, missing_identity, headers, legacy_headers, metrics: as for
            :class:`ratelimit.wsgi.RateLimitMiddleware`.
        mode: ``"middleware"`` wraps ``app.wsgi_app``; ``"hooks"`` uses
            ``before_request``/``after_request`` (see the module docs).

    Both modes also answer a :class:`~ratelimit.decorators.RateLimitExceeded` raised in a
    view with its 429/401 response. The extension is ``app.extensions["ratelimit"]``.
    """

    def __init__(
        self,
        app: flask.Flask | None = None,
        *,
        limiter: Limiter,
        rules: Iterable[Rule] = (),
        key: KeyFunc | None = None,
        limits: Mapping[str, RateLike] | None = None,
        missing_identity: MissingIdentity | None = None,
        headers: bool | None = None,
        legacy_headers: bool | None = None,
        metrics: MetricsSink | None = None,
        mode: Literal["middleware", "hooks"] = "middleware",
        trusted_proxies: int | None = None,
    ) -> None:
        if mode not in ("middleware", "hooks"):
            raise ValueError(f"mode must be 'middleware' or 'hooks', got {mode!r}")
        self.limiter = limiter
        self.mode = mode
        self.options: dict[str, Any] = {
            "trusted_proxies": trusted_proxies,
            "missing_identity": missing_identity,
            "headers": headers,
            "legacy_headers": legacy_headers,
            "metrics": metrics,
        }
        self.enforcer = Enforcer.for_adapter(limiter, "flask", rules, limits=limits, key=key, **self.options)
        self._given = (tuple(rules), limits, key)  # the middleware mode builds its own from these
        self.rules = self.enforcer.own_rules
        if app is not None:
            self.init_app(app)

    def init_app(self, app: flask.Flask) -> None:
        """Install the middleware or the hooks on ``app``."""
        if self.mode == "middleware":
            rules, limits, key = self._given
            app.wsgi_app = RateLimitMiddleware(  # type: ignore[method-assign]
                app.wsgi_app, self.limiter, rules, limits=limits, key=key, **self.options
            )
        else:
            app.before_request(self._before_request)
            app.after_request(self._after_request)
        app.register_error_handler(RateLimitExceeded, _exceeded)
        app.extensions["ratelimit"] = self

    def _before_request(self) -> flask.Response | None:
        ctx = _flask_context()
        assert ctx is not None  # Flask runs this hook inside a request
        outcome = self.enforcer.check(ctx.request)
        if outcome.action in ("deny", "reject"):
            return render(outcome)
        ctx.headers.extend(outcome.headers)
        ctx.record(self.enforcer.limiter, outcome)
        return None

    def _after_request(self, response: flask.Response) -> flask.Response:
        ctx: RequestContext | None = flask.request.environ.get(_ENVIRON_KEY)
        if ctx is not None and ctx.headers:
            merged = merge_fields([*response.headers.items(), *ctx.headers])
            response.headers.clear()
            response.headers.extend(merged)
        return response


def _exceeded(exc: RateLimitExceeded) -> flask.Response:
    return render(exc.outcome)
