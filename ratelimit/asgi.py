"""ASGI adapter: a pure ASGI middleware, decorator support and a FastAPI dependency.

    from ratelimit import Limiter
    from ratelimit.asgi import RateLimitMiddleware
    from ratelimit.keys import jwt_subject

    limiter = Limiter("redis://redis:6379/0")
    user = jwt_subject(jwks_url="https://idp/.well-known/jwks.json", issuer="https://idp")
    app.add_middleware(RateLimitMiddleware, limiter=limiter, key=user,
                       limits={"GET /items/*": "100/minute", "/admin/**": "10/minute"})

The middleware also makes ``@limiter.limit(...)`` work on endpoints that take no
``request`` parameter, and adds the headers those decorators produce to the response.
Starlette is imported only to build responses for decorators; FastAPI only by
:class:`RateLimit`. See docs/asgi.md.
"""

from __future__ import annotations

import inspect
import json
import sys
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping, Sequence
from typing import Any

from . import context
from ._core.rate import RateLike
from ._core.sinks import MetricsSink
from .decorators import RateLimitExceeded, register_context_finder
from .enforce import Enforcer, MissingIdentity, Outcome
from .headers import combine_raw, encode_fields
from .limiter import Limiter
from .request import Headers, KeyFunc, RequestInfo
from .rules import Rule, rule_slug

__all__ = ["ASGIApp", "DenialHook", "Message", "RateLimit", "RateLimitMiddleware", "Receive", "Scope", "Send"]

Scope = MutableMapping[str, Any]
"""The ASGI connection scope: ``type``, ``path``, ``headers``, ``client``..."""
Message = MutableMapping[str, Any]
"""An ASGI event, received or sent (``http.request``, ``http.response.start``...)."""
Receive = Callable[[], Awaitable[Message]]
"""The awaitable an ASGI app reads events from."""
Send = Callable[[Message], Awaitable[None]]
"""The awaitable an ASGI app sends events to."""
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
"""Any ASGI 3 application: ``async app(scope, receive, send)``."""
DenialHook = Callable[[Scope, Outcome], Awaitable["ASGIApp | None"]]
"""``on_denied``: ``async (scope, outcome) -> ASGI app | None``.

The app it returns answers the denial; None keeps the default answer.
"""

_NO_FIELDS: list[tuple[bytes, bytes]] = []  # shared; never mutated
_POLICY_VIOLATION = 1008


def _request_info(scope: Scope) -> RequestInfo:
    raw = scope["headers"]
    host = None
    for name, value in raw:  # servers lowercase header names (ASGI spec)
        if name == b"host":
            host = value.decode("latin-1")
            break
    client = scope.get("client")
    return RequestInfo(
        scope["type"],
        scope.get("method", "GET"),
        scope["path"],
        Headers(raw),
        client[0] if client else None,
        host,
        scope,
    )


def _render_http(outcome: Outcome) -> Any:
    try:
        from starlette.responses import Response
    except ImportError:  # a bare ASGI app: the middleware answers instead
        raise RateLimitExceeded(outcome) from None
    return Response(outcome.body, outcome.status, dict(outcome.headers), media_type=outcome.content_type)


def _render_websocket(outcome: Outcome) -> Any:
    # A websocket endpoint cannot return a response: the middleware denies the handshake.
    raise RateLimitExceeded(outcome)


class _Context(context.RequestContext):
    """The middleware's RequestContext: ``request`` and ``headers`` are built on first use.

    Every request gets one (decorators look for it), but most never need its
    RequestInfo (no rule, no decorator) or a header list. Decorators' outcomes add
    their fields as ASGI bytes (``_raw``); text that code put in ``headers`` is
    encoded when the response starts.
    """

    __slots__ = ("_added", "_info", "_raw", "_scope")

    def __init__(self, scope: Scope, render: Callable[[Outcome], Any]) -> None:
        self._scope = scope
        self._info: RequestInfo | None = None
        self._added: list[tuple[str, str]] | None = None
        self._raw: list[tuple[bytes, bytes]] | None = None
        self.render = render
        self.charges = None

    @property
    def request(self) -> RequestInfo:
        if self._info is None:
            self._info = _request_info(self._scope)
        return self._info

    @request.setter
    def request(self, value: RequestInfo) -> None:
        self._info = value

    @property
    def headers(self) -> list[tuple[str, str]]:
        if self._added is None:
            self._added = []
        return self._added

    @headers.setter
    def headers(self, value: list[tuple[str, str]]) -> None:
        self._added = value

    def add(self, outcome: Outcome) -> None:
        raw = outcome.raw_headers
        if raw:
            if self._raw is None:
                self._raw = raw
            else:
                self._raw = self._raw + raw

    def fields(self, own: list[tuple[bytes, bytes]]) -> tuple[list[tuple[bytes, bytes]], bool]:
        """The fields to add to the response: ``own`` (the middleware's), then the others'.

        The flag says whether they come from one decision alone (each name at most once).
        """
        raw, added = self._raw, self._added
        if raw is None and not added:
            return own, True
        extra = own + raw if raw is not None else own
        if added:
            extra = extra + encode_fields(added)
        return extra, False


class RateLimitMiddleware:
    """Rate limits every HTTP request and websocket handshake of an ASGI app.

    Args:
        app: the ASGI app to protect.
        limiter: decides (memory or Redis backend).
        rules: :class:`~ratelimit.rules.Rule` objects (``Rule.of(...)``).
        key: the key function of the ``limits`` rules (default :class:`client_ip`).
        limits: shorthand for path rules: ``{"GET /items/*": "100/minute",
            "/admin/**": "10/minute"}`` (optional comma-separated methods, then a path
            pattern). Each becomes a rule named after its pattern (``get-items-any``).
        missing_identity: ``"ip"``, ``"anonymous"`` or ``"reject"`` (401) when a key
            function finds no identity.
        headers: add RateLimit headers to allowed responses (denials always get them).
        legacy_headers: add ``X-RateLimit-Limit/-Remaining/-Reset`` as well.
        websockets: limit websocket handshakes too (else they pass untouched).
        metrics: a :class:`ratelimit.metrics.Metrics`, or None.
        on_denied: ``async (scope, outcome) -> ASGI app | None``; the app it returns
            answers the denied (429) or rejected (401) request instead of the default
            problem+json response; None keeps the default.

    Every request, matched by a rule or not, runs with :data:`ratelimit.context.current`
    set, so ``@limiter.limit`` endpoints need no ``request`` parameter; the headers
    they produce are added to the response here. Lifespan and other scopes pass through.
    """

    def __init__(
        self,
        app: ASGIApp,
        limiter: Limiter,
        rules: Iterable[Rule] = (),
        *,
        key: KeyFunc | None = None,
        limits: Mapping[str, RateLike] | None = None,
        missing_identity: MissingIdentity | None = None,
        headers: bool | None = None,
        legacy_headers: bool | None = None,
        websockets: bool = True,
        metrics: MetricsSink | None = None,
        on_denied: DenialHook | None = None,
        trusted_proxies: int | None = None,
    ) -> None:
        self.app = app
        self.enforcer = Enforcer.for_adapter(
            limiter,
            "asgi",
            rules,
            limits=limits,
            key=key,
            trusted_proxies=trusted_proxies,
            missing_identity=missing_identity,
            headers=headers,
            legacy_headers=legacy_headers,
            metrics=metrics,
        )
        self.websockets = websockets
        self.on_denied = on_denied

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "websocket" and self.websockets:
            await self._websocket(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _check(
        self, ctx: _Context, scope: Scope, receive: Receive, send: Send
    ) -> list[tuple[bytes, bytes]] | None:
        """Decide the middleware's rules: the header fields to add, or None once denied here."""
        enforcer = self.enforcer
        if not enforcer.snapshot().rules:
            return _NO_FIELDS  # no RequestInfo built: decorators may still want one
        outcome = await enforcer.acheck(ctx.request)
        action = outcome.action
        if action == "skip":
            return _NO_FIELDS
        if action == "deny" or action == "reject":
            await self._deny(scope, receive, send, outcome)
            return None
        ctx.record(enforcer.limiter, outcome)
        return outcome.raw_headers

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        ctx = _Context(scope, _render_http)
        token = context.current.set(ctx)
        try:
            own = await self._check(ctx, scope, receive, send)
            if own is None:
                return
            started = False

            async def send_with_headers(message: Message) -> None:
                nonlocal started
                if message["type"] == "http.response.start":
                    started = True
                    extra, unique = ctx.fields(own)
                    if extra:
                        message["headers"] = combine_raw(message.get("headers", ()), extra, unique=unique)
                await send(message)

            try:
                await self.app(scope, receive, send_with_headers)
            except RateLimitExceeded as exc:
                if started:
                    raise
                await self._deny(scope, receive, send_with_headers, exc.outcome)
        finally:
            context.current.reset(token)

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        ctx = _Context(scope, _render_websocket)
        token = context.current.set(ctx)
        try:
            added = await self._check(ctx, scope, receive, send)
            if added is None:
                return
            state = "connecting"

            async def send_with_headers(message: Message) -> None:
                nonlocal state
                kind = message["type"]
                if kind == "websocket.accept":
                    state = "open"
                    extra, unique = ctx.fields(added)
                    if extra:
                        message["headers"] = combine_raw(message.get("headers", ()), extra, unique=unique)
                elif kind == "websocket.close" or kind == "websocket.http.response.start":
                    state = "closed"
                await send(message)

            try:
                await self.app(scope, receive, send_with_headers)
            except RateLimitExceeded as exc:
                if state == "connecting":
                    await self._deny(scope, receive, send, exc.outcome)
                elif state == "open":
                    await send(
                        {
                            "type": "websocket.close",
                            "code": _POLICY_VIOLATION,
                            "reason": "rate limit exceeded",
                        }
                    )
                else:
                    raise
        finally:
            context.current.reset(token)

    async def _deny(self, scope: Scope, receive: Receive, send: Send, outcome: Outcome) -> None:
        if self.on_denied is not None:
            custom = await self.on_denied(scope, outcome)
            if custom is not None:
                await custom(scope, receive, send)
                return
        if scope["type"] == "websocket":
            if "websocket.http.response" not in scope.get("extensions", {}):
                reason = "rate limit exceeded" if outcome.action == "deny" else "unauthenticated"
                await send({"type": "websocket.close", "code": _POLICY_VIOLATION, "reason": reason})
                return
            prefix = "websocket.http.response"
        else:
            prefix = "http.response"
        body = outcome.body
        fields = [
            (b"content-type", outcome.content_type.encode("latin-1")),
            (b"content-length", str(len(body)).encode()),
            *outcome.raw_headers,
        ]
        await send({"type": prefix + ".start", "status": outcome.status, "headers": fields})
        await send({"type": prefix + ".body", "body": body, "more_body": False})


# -- decorators without the middleware: find a Starlette Request among the arguments --


def _find_starlette_context(args: tuple[Any, ...], kwargs: dict[str, Any]) -> context.RequestContext | None:
    """The decorators' fallback when the middleware is not installed.

    Looks for a Starlette ``Request`` among the endpoint's arguments. Denials render as
    Starlette responses; headers for allowed responses have nowhere to go without the
    middleware and are dropped. Websocket endpoints need the middleware.
    """
    module = sys.modules.get("starlette.requests")
    if module is None:  # Starlette not imported: no argument can be one of its requests
        return None
    request_class = module.Request
    for value in (*args, *kwargs.values()):
        if isinstance(value, request_class):
            return _Context(value.scope, _render_http)
    return None


register_context_finder(_find_starlette_context)


# -- FastAPI: Depends(RateLimit(...)) -------------------------------------------------


class RateLimit:
    """A FastAPI dependency that limits the routes it is attached to.

    ``Depends(RateLimit(limiter, "10/minute", key=jwt_subject(...)))`` as a route
    parameter or in ``dependencies=[...]`` (route, router or app). A denied request
    raises ``fastapi.HTTPException(429)`` with the RateLimit headers and the problem
    details as ``detail``; a request without identity under ``missing_identity="reject"``
    raises 401. With :class:`RateLimitMiddleware` installed, allowed responses carry
    the RateLimit headers too.

    Without ``name``, each route gets its own counters, named after the route's path
    (``dep-items-item_id``); with ``name``, every route using that name shares them
    (a router-wide budget).

    Args:
        limiter: decides.
        rates: one rate, ``"10/second;1000/day"``, or a list (all must allow).
        key: the key function (default: one counter for every caller).
        name: the policy name and counter namespace (see above).
        cost, methods, shadow: as for :meth:`ratelimit.rules.Rule.of`.
        missing_identity, headers, legacy_headers, metrics, trusted_proxies: as for the middleware.
    """

    def __init__(
        self,
        limiter: Limiter,
        rates: RateLike | Sequence[RateLike],
        key: KeyFunc | None = None,
        *,
        name: str | None = None,
        cost: int | Callable[[RequestInfo], int] = 1,
        methods: str | Iterable[str] = (),
        shadow: bool = False,
        missing_identity: MissingIdentity | None = None,
        headers: bool | None = None,
        legacy_headers: bool | None = None,
        metrics: MetricsSink | None = None,
        trusted_proxies: int | None = None,
    ) -> None:
        from starlette.requests import Request

        self._make_rule: Callable[[str], Rule] = lambda rule_name: Rule.of(
            rule_name, rates, key, methods=methods, cost=cost, shadow=shadow
        )
        self._options: dict[str, Any] = {
            "trusted_proxies": trusted_proxies,
            "missing_identity": missing_identity,
            "headers": headers,
            "legacy_headers": legacy_headers,
            "metrics": metrics,
        }
        self.limiter = limiter
        self.name = name
        self._enforcers: dict[str, Enforcer] = {}
        self._make_rule(name or "dep-check")  # refuse bad arguments now, not on the first request
        # FastAPI reads the dependency's signature: it needs the real Request class, which
        # this module may not import at its top (Starlette is optional).
        request = inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Request)
        self.__signature__ = inspect.Signature([request], return_annotation=None)

    def _enforcer(self, scope: Scope) -> Enforcer:
        if self.name is not None:
            rule_name = self.name
        else:
            path = getattr(scope.get("route"), "path", None)
            rule_name = rule_slug(f"dep {path}") if isinstance(path, str) else "dep"
        enforcer = self._enforcers.get(rule_name)
        if enforcer is None:
            enforcer = Enforcer.for_adapter(
                self.limiter, "asgi", [self._make_rule(rule_name)], config_rules=False, **self._options
            )
            self._enforcers[rule_name] = enforcer
        return enforcer

    async def __call__(self, request: Any) -> None:
        scope = request.scope
        ctx = context.current.get()
        info = ctx.request if ctx is not None and ctx.request.native is scope else _request_info(scope)
        outcome = await self._enforcer(scope).acheck(info)
        if outcome.action == "deny" or outcome.action == "reject":
            from fastapi import HTTPException

            if ctx is not None:
                await ctx.refund_async()  # the middleware's charges: denied means nothing counts
            raise HTTPException(
                outcome.status, detail=json.loads(outcome.body), headers=dict(outcome.headers)
            )
        if ctx is not None:
            ctx.add(outcome)
