"""WSGI middleware: rate limits for Flask, Django on WSGI, or any WSGI application.

::

    from ratelimit import Limiter
    from ratelimit.keys import jwt_subject
    from ratelimit.rules import Rule
    from ratelimit.wsgi import RateLimitMiddleware

    limiter = Limiter("redis://redis:6379/0")
    app.wsgi_app = RateLimitMiddleware(             # Flask; or wrap any WSGI callable
        app.wsgi_app,
        limiter,
        rules=[Rule.of("per-user", "100/minute", jwt_subject(trusted_header="x-user-id"), paths="/api/**")],
        limits={"POST /login": "5/minute"},         # per client IP
    )

Rules match ``PATH_INFO``: the path *inside* the application. An app mounted under
``SCRIPT_NAME=/shop`` that serves ``/shop/items`` is matched as ``/items``, the same
path its own routes use. No framework is imported here; a werkzeug ``Response`` is
used for decorator denials only when werkzeug is installed.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator, Mapping
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from . import context
from ._core.rate import RateLike
from ._core.sinks import MetricsSink
from .decorators import RateLimitExceeded
from .enforce import Enforcer, MissingIdentity, Outcome
from .headers import merge_fields
from .request import Headers, KeyFunc, RequestInfo
from .rules import Rule

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

    from .limiter import Limiter

__all__ = ["RateLimitMiddleware", "request_info"]

OnDenied = Callable[[RequestInfo, Outcome], "WSGIApplication | None"]


def request_info(environ: Mapping[str, Any], *, path: str | None = None, native: Any = None) -> RequestInfo:
    """The neutral request of a WSGI environ (headers are read from it, not copied).

    ``path`` defaults to ``PATH_INFO`` (so ``SCRIPT_NAME``, the mount point, is not part
    of it), re-decoded as UTF-8 as servers hand it over as latin-1. ``native`` defaults
    to the environ itself.
    """
    if path is None:
        raw = environ.get("PATH_INFO") or "/"
        try:
            path = raw.encode("latin-1").decode("utf-8")
        except UnicodeError:
            path = raw
    return RequestInfo(
        "http",
        environ.get("REQUEST_METHOD") or "GET",
        path,
        Headers.from_environ(environ),
        environ.get("REMOTE_ADDR") or None,
        environ.get("HTTP_HOST") or environ.get("SERVER_NAME") or None,
        environ if native is None else native,
    )


class RateLimitMiddleware:
    """Rate limits a WSGI application, and lets ``@limiter.limit`` views see the request.

    Args:
        app: the WSGI application to wrap.
        limiter: decides (memory or Redis; a failing backend follows its failure mode,
            so Redis being down is never a 500).
        rules: :class:`~ratelimit.rules.Rule` objects checked on every request.
        key: the key function of the ``limits`` rules (default ``client_ip()``).
        limits: ``{"GET /items/*": "100/minute", "/admin/**": "10/minute"}``: rules from
            optional comma-separated methods and a path pattern, named after it
            (``get-items-any``), parsed exactly as by :mod:`ratelimit.asgi`, so one
            mapping gives the same rules and counters under both adapters.
        missing_identity: ``"ip"``, ``"anonymous"`` or ``"reject"`` (401) when a key
            function finds no identity.
        headers: add RateLimit headers to allowed responses (denials always have them).
        legacy_headers: add ``X-RateLimit-Limit/-Remaining/-Reset`` as well.
        metrics: a :class:`ratelimit.metrics.Metrics` (decisions labelled ``adapter="wsgi"``).
        on_denied: ``on_denied(request, outcome)`` is called for every 429/401 decided
            here or by a decorator; when it returns a WSGI application, that application
            answers instead of the default problem+json response.

    Denied requests get 429 with ``Retry-After``, RateLimit headers and an
    ``application/problem+json`` body; ``missing_identity="reject"`` answers 401.

    While the application runs, :data:`ratelimit.context.current` holds the request, so
    decorated views need no ``request`` parameter; denials there render as a werkzeug
    ``Response`` (or, without werkzeug, raise :class:`RateLimitExceeded`, which this
    middleware answers). The context is set around the application call and again around
    each step of the response iterable and its ``close()``; it is never left set
    between them, so a server or test client that never closes the response leaks
    nothing into later requests.
    """

    def __init__(
        self,
        app: WSGIApplication,
        limiter: Limiter,
        rules: Iterable[Rule] = (),
        *,
        key: KeyFunc | None = None,
        limits: Mapping[str, RateLike] | None = None,
        missing_identity: MissingIdentity | None = None,
        headers: bool | None = None,
        legacy_headers: bool | None = None,
        metrics: MetricsSink | None = None,
        on_denied: OnDenied | None = None,
        trusted_proxies: int | None = None,
    ) -> None:
        self.app = app
        self.limiter = limiter
        self.on_denied = on_denied
        self.enforcer = Enforcer.for_adapter(
            limiter,
            "wsgi",
            rules,
            limits=limits,
            key=key,
            trusted_proxies=trusted_proxies,
            missing_identity=missing_identity,
            headers=headers,
            legacy_headers=legacy_headers,
            metrics=metrics,
        )

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        request = request_info(environ)
        outcome = self.enforcer.check(request)
        if outcome.action in ("deny", "reject"):
            return self._denial(request, outcome)(environ, start_response)

        rendered: list[Any] = []

        def render(denied: Outcome) -> Any:
            response_class = _werkzeug_response()
            if response_class is None:
                raise RateLimitExceeded(denied)  # answered below, through on_denied
            custom = self.on_denied(request, denied) if self.on_denied is not None else None
            response = custom if custom is not None else _native(response_class, denied)
            rendered.append(response)
            return response

        ctx = context.RequestContext(request, render, list(outcome.headers))
        ctx.record(self.enforcer.limiter, outcome)

        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            if ctx.headers:
                headers = merge_fields([*headers, *ctx.headers])
            return start_response(status, headers, exc_info)

        token = context.current.set(ctx)
        try:
            result: Iterable[bytes] = self.app(environ, start)
        except RateLimitExceeded as exc:
            return self._denial(request, exc.outcome)(environ, start)
        finally:
            context.current.reset(token)
        if rendered and any(result is r for r in rendered):
            # A decorated bare WSGI callable returned the rendered response: run it.
            return rendered[-1](environ, start)  # type: ignore[no-any-return]
        file_wrapper = environ.get("wsgi.file_wrapper")
        if isinstance(result, (list, tuple)) or (
            isinstance(file_wrapper, type) and isinstance(result, file_wrapper)
        ):
            return result  # no application code runs while these are sent
        return _Body(result, ctx)

    def _denial(self, request: RequestInfo, outcome: Outcome) -> WSGIApplication:
        if self.on_denied is not None:
            custom = self.on_denied(request, outcome)
            if custom is not None:
                return custom
        return _plain(outcome)


class _Body:
    """The application's response iterable, run with the request context set."""

    __slots__ = ("_ctx", "_iterable", "_iterator")

    def __init__(self, iterable: Iterable[bytes], ctx: context.RequestContext) -> None:
        self._iterable = iterable
        self._iterator: Iterator[bytes] | None = None
        self._ctx = ctx

    def __iter__(self) -> _Body:
        return self

    def __next__(self) -> bytes:
        token = context.current.set(self._ctx)
        try:
            if self._iterator is None:
                self._iterator = iter(self._iterable)
            return next(self._iterator)
        finally:
            context.current.reset(token)

    def close(self) -> None:
        close = getattr(self._iterable, "close", None)
        if close is not None:
            token = context.current.set(self._ctx)
            try:
                close()
            finally:
                context.current.reset(token)


def _plain(outcome: Outcome) -> WSGIApplication:
    """A framework-free WSGI application answering ``outcome`` (429 or 401)."""

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        status = f"{outcome.status} {HTTPStatus(outcome.status).phrase}"
        start_response(
            status,
            [
                *outcome.headers,
                ("Content-Type", outcome.content_type),
                ("Content-Length", str(len(outcome.body))),
            ],
        )
        return [outcome.body]

    return app


@functools.cache
def _werkzeug_response() -> Any:
    try:
        from werkzeug.wrappers import Response
    except ImportError:
        return None
    return Response


def _native(response_class: Any, outcome: Outcome) -> Any:
    return response_class(
        outcome.body, status=outcome.status, headers=outcome.headers, content_type=outcome.content_type
    )
