"""gRPC server interceptors: rate limits for ``grpc.server`` and ``grpc.aio.server``.

::

    from ratelimit import Limiter
    from ratelimit.grpc import AsyncRateLimitInterceptor
    from ratelimit.keys import jwt_subject

    limiter = Limiter("redis://redis:6379/0")
    interceptor = AsyncRateLimitInterceptor(limiter, {"/shop.Cart/*": "50/second"}, key=jwt_subject(key=PEM))
    server = grpc.aio.server(interceptors=[interceptor])

``intercept_service`` only looks at the method name: methods no rule matches get their
handler back untouched. For the others it wraps the handler's behaviour (keeping its
arity and serializers), because the peer address is only known inside the call. The
wrapper decides once per call, before the behaviour runs and before any message is
read or sent, also for streaming calls. A denied call ends with RESOURCE_EXHAUSTED and
the trailers below; a call without identity under ``missing_identity="reject"`` ends
with UNAUTHENTICATED. Allowed calls are not touched: gRPC responses carry the
RateLimit fields only on denial. See docs/grpc.md.
"""

from __future__ import annotations

import asyncio
import inspect
import math
import re
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, NoReturn

import grpc  # type: ignore[import-untyped]
from google.rpc import code_pb2, error_details_pb2, status_pb2  # type: ignore[import-untyped]
from grpc_status import rpc_status  # type: ignore[import-untyped]

from ._core.rate import Rate
from ._core.sinks import MetricsSink
from .enforce import Enforcer, MissingIdentity, Outcome
from .headers import retry_after_header
from .limiter import Limiter
from .request import Headers, KeyFunc, RequestInfo
from .rules import Rule, bounded_name, unique_name

__all__ = ["AsyncRateLimitInterceptor", "RateLimitInterceptor", "peer_ip", "rule_name"]

RETRY_PUSHBACK = "grpc-retry-pushback-ms"  # gRFC A6
_MAX_CACHED_METHODS = 4096
_UNAUTHENTICATED_MESSAGE = "this method is rate limited per caller and the call carries no identity"


def peer_ip(peer: str | None) -> str | None:
    """The IP address in a gRPC peer string, or None (Unix sockets, unknown schemes).

    >>> peer_ip("ipv4:10.1.2.3:5678"), peer_ip("ipv6:%5B::1%5D:5678"), peer_ip("unix:/tmp/s")
    ('10.1.2.3', '::1', None)
    """
    scheme, _, rest = (peer or "").partition(":")
    if scheme not in ("ipv4", "ipv6"):
        return None
    rest = urllib.parse.unquote(rest)  # grpc percent-encodes the brackets of IPv6 peers
    if rest.startswith("["):
        end = rest.find("]")
        return (rest[1:end] or None) if end > 0 else None
    host, sep, _port = rest.rpartition(":")
    return (host if sep else rest) or None


def rule_name(pattern: str) -> str:
    """A rule name for a method pattern: ``"/shop.Cart/*"`` -> ``"shop.Cart.all"``."""
    body = pattern[3:] if pattern.startswith("re:") else pattern
    parts = []
    for segment in body.split("/"):
        segment = segment.replace("**", "*").replace("*", "all")
        segment = re.sub(r"[^A-Za-z0-9._-]+", "_", segment).strip("._-")
        if segment:
            parts.append(segment)
    return bounded_name(".".join(parts), pattern).strip("._-") or "grpc"


def _status(
    code: int, message: str, details: Sequence[Any] = (), trailers: Sequence[tuple[str, str]] = ()
) -> Any:
    """A grpc.Status carrying a google.rpc.Status in ``grpc-status-details-bin``, after ``trailers``."""
    rich = status_pb2.Status(code=code, message=message)
    for detail in details:
        rich.details.add().Pack(detail)
    status = rpc_status.to_status(rich)
    return status._replace(trailing_metadata=tuple(trailers) + tuple(status.trailing_metadata))


_UNAUTHENTICATED = _status(code_pb2.UNAUTHENTICATED, _UNAUTHENTICATED_MESSAGE)


def _denial(outcome: Outcome) -> Any:
    """The status of a denied call: RetryInfo and QuotaFailure, retry-after and RateLimit trailers."""
    decision = outcome.decision
    assert decision is not None
    seconds = retry_after_header(decision)[1]
    pushback_ms = max(1, math.ceil(decision.retry_after * 1000 - 1e-6))  # rounded up: no early retries
    retry = error_details_pb2.RetryInfo()
    retry.retry_delay.FromMilliseconds(pushback_ms)
    statuses = list(zip(outcome.names, decision.limits, strict=True))
    violated = [(n, s) for n, s in statuses if not s.allowed] or statuses
    quota = error_details_pb2.QuotaFailure(
        violations=[
            error_details_pb2.QuotaFailure.Violation(
                subject=name, description=f"at most {s.rate.limit} calls per {s.rate.window:g} s"
            )
            for name, s in violated
        ]
    )
    # Header names come from ratelimit.headers; gRPC metadata keys must be lower case.
    trailers = [(name.lower(), value) for name, value in outcome.headers]
    trailers.append((RETRY_PUSHBACK, str(pushback_ms)))
    message = f"rate limit exceeded; retry after {seconds} s"
    return _status(code_pb2.RESOURCE_EXHAUSTED, message, (retry, quota), trailers)


def _verdict(outcome: Outcome) -> Any:
    """The status to abort with, or None to let the call through."""
    if outcome.action == "deny":
        return _denial(outcome)
    if outcome.action == "reject":
        return _UNAUTHENTICATED
    return None


def _abort(context: Any, status: Any) -> NoReturn:
    abort_with_status = getattr(context, "abort_with_status", None)
    if abort_with_status is not None:
        # grpc.server: replaces any trailing metadata with the status's (ours included).
        abort_with_status(status)
    else:
        # grpc.aio runs sync handlers with a context whose abort() takes the trailers.
        context.abort(status.code, status.details, tuple(status.trailing_metadata))
    raise RuntimeError("abort() returned")  # pragma: no cover - both raise


async def _aabort(context: Any, status: Any) -> NoReturn:
    await context.abort(status.code, status.details, tuple(status.trailing_metadata))
    raise RuntimeError("abort() returned")  # pragma: no cover


_FACTORIES = {
    (False, False): ("unary_unary", grpc.unary_unary_rpc_method_handler),
    (False, True): ("unary_stream", grpc.unary_stream_rpc_method_handler),
    (True, False): ("stream_unary", grpc.stream_unary_rpc_method_handler),
    (True, True): ("stream_stream", grpc.stream_stream_rpc_method_handler),
}


def _rewrap(handler: Any, behaviour: Callable[..., Any]) -> Any:
    _, factory = _FACTORIES[bool(handler.request_streaming), bool(handler.response_streaming)]
    return factory(
        behaviour,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


def _behaviour(handler: Any) -> Callable[..., Any]:
    attr, _ = _FACTORIES[bool(handler.request_streaming), bool(handler.response_streaming)]
    behaviour: Callable[..., Any] = getattr(handler, attr)
    return behaviour


def _wrap_sync(handler: Any, gate: Callable[[Any], None]) -> Any:
    """The handler with ``gate(context)`` run first, in the thread that runs the behaviour."""
    behaviour = _behaviour(handler)
    if handler.response_streaming:
        # A generator, so that grpc.aio runs the gate in its thread pool, not on the loop.
        def streaming(request: Any, context: Any) -> Iterator[Any]:
            gate(context)
            yield from behaviour(request, context)

        return _rewrap(handler, streaming)

    def unary(request: Any, context: Any) -> Any:
        gate(context)
        return behaviour(request, context)

    return _rewrap(handler, unary)


class _Base:
    """Rules, enforcer and per-method matching, shared by the sync and aio interceptors."""

    def __init__(
        self,
        limiter: Limiter,
        limits: Mapping[str, str | Rate | Sequence[str | Rate]] | None = None,
        *,
        key: KeyFunc | None = None,
        rules: Iterable[Rule] = (),
        missing_identity: MissingIdentity | None = None,
        metrics: MetricsSink | None = None,
        trusted_proxies: int | None = None,
    ) -> None:
        explicit = list(rules)
        if not limits and not explicit and limiter.ruleset is None:
            raise ValueError(
                "give limits={pattern: rate}, rules=[Rule, ...] or a Limiter.from_config limiter"
            )
        taken = {r.name for r in explicit}

        def from_limits(spec: Mapping[str, Any], default_key: KeyFunc) -> list[Rule]:
            # gRPC names rules after their method patterns, unique beside the explicit
            # ones, which come after them.
            names = set(taken)
            built = [
                Rule.of(unique_name(rule_name(pattern), names), rates, default_key, paths=pattern)
                for pattern, rates in spec.items()
            ]
            return built + explicit

        self.enforcer = Enforcer.for_adapter(
            limiter,
            "grpc",
            (),
            limits=dict(limits or {}),
            key=key,
            from_limits=from_limits,
            missing_identity=missing_identity,
            trusted_proxies=trusted_proxies,
            headers=False,
            legacy_headers=False,
            metrics=metrics,
        )
        self._by_method: dict[str, tuple[Rule, ...]] = {}
        self._cached_for: tuple[Any, ...] = ()
        # method -> (the server's handler, the rules it was wrapped for, the wrapped handler)
        self._wrapped: dict[str, tuple[Any, tuple[Rule, ...], Any]] = {}

    @property
    def rules(self) -> tuple[Rule, ...]:
        """Every rule this interceptor enforces."""
        return self.enforcer.rules

    def _rules_for(self, method: str) -> tuple[Rule, ...]:
        """The rules whose method pattern fits (header conditions are checked per call)."""
        rules = self.enforcer.rules
        if rules is not self._cached_for:  # a config reload: forget what was matched
            self._by_method, self._cached_for = {}, rules
        found = self._by_method.get(method)
        if found is None:
            probe = RequestInfo("grpc", "POST", method, Headers())
            found = tuple(r for r in rules if r.matches_route(probe))
            if len(self._by_method) < _MAX_CACHED_METHODS:
                self._by_method[method] = found
        return found

    @staticmethod
    def _request(details: Any, context: Any) -> RequestInfo:
        return RequestInfo(
            "grpc",
            "POST",
            details.method,
            Headers(details.invocation_metadata or ()),
            peer_ip(context.peer()),
            native=context,
        )


def _conditions(rules: tuple[Rule, ...], request: RequestInfo) -> tuple[Rule, ...] | list[Rule]:
    """The method-matched rules whose metadata conditions hold for this call."""
    if not any(r.conditional for r in rules):
        return rules
    return [r for r in rules if not r.conditional or r.matches_conditions(request)]


class RateLimitInterceptor(_Base, grpc.ServerInterceptor):  # type: ignore[misc]
    """Rate limits for ``grpc.server``.

    Args:
        limiter: decides (memory or Redis backend).
        limits: ``{method pattern: rate}``, e.g. ``{"/shop.Cart/*": "50/second"}``; each
            becomes a rule named after its pattern (``shop.Cart.all``) counted per ``key``.
        key: the key function of ``limits`` (default: the peer IP, ``client_ip()``).
        rules: more :class:`~ratelimit.rules.Rule` objects, each with its own key.
        missing_identity: ``"ip"``, ``"anonymous"`` or ``"reject"`` (UNAUTHENTICATED).
        metrics: a :class:`ratelimit.metrics.Metrics` (adapter label ``grpc``).

    Example::

        server = grpc.server(ThreadPoolExecutor(16), interceptors=[
            RateLimitInterceptor(limiter, {"/shop.Orders/*": "5/second"}, key=header("x-tenant")),
        ])
    """

    def intercept_service(self, continuation: Callable[[Any], Any], handler_call_details: Any) -> Any:
        """Wrap the handler of a rate limited method; return others untouched."""
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        rules = self._rules_for(handler_call_details.method)
        if not rules:
            return handler

        def gate(context: Any) -> None:
            request = self._request(handler_call_details, context)
            status = _verdict(self.enforcer.check(request, matched=_conditions(rules, request)))
            if status is not None:
                _abort(context, status)

        return _wrap_sync(handler, gate)


class AsyncRateLimitInterceptor(_Base, grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Rate limits for ``grpc.aio.server``; arguments as for :class:`RateLimitInterceptor`.

    Async behaviours are decided with ``await enforcer.acheck``. Sync behaviours (which
    grpc.aio runs in its thread pool) are decided there too, on the event loop's async
    limiter, so async key functions work for both.
    """

    async def intercept_service(
        self, continuation: Callable[[Any], Awaitable[Any]], handler_call_details: Any
    ) -> Any:
        """Wrap the handler of a rate limited method; return others untouched."""
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        rules = self._rules_for(method)
        if not rules:
            return handler
        # A server hands out the same handler object per method: wrap it once (per rule
        # set), not per call. Async behaviours read the call's metadata from the context.
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler and cached[1] is rules:
            return cached[2]
        wrapped = self._wrap(handler, method, rules, handler_call_details)
        if wrapped[1] and len(self._wrapped) < _MAX_CACHED_METHODS:
            self._wrapped[method] = (handler, rules, wrapped[0])
        return wrapped[0]

    def _wrap(self, handler: Any, method: str, rules: tuple[Rule, ...], details: Any) -> tuple[Any, bool]:
        """The handler wrapped, and whether the wrapper serves every call of ``method``."""
        enforcer = self.enforcer
        conditional = any(r.conditional for r in rules)

        async def decide(context: Any) -> Any:
            request = RequestInfo(
                "grpc",
                "POST",
                method,
                Headers(context.invocation_metadata() or ()),
                peer_ip(context.peer()),
                native=context,
            )
            matched = _conditions(rules, request) if conditional else rules
            return _verdict(await enforcer.acheck(request, matched=matched))

        behaviour = _behaviour(handler)
        if inspect.iscoroutinefunction(behaviour):  # a unary response, or a stream sent with context.write

            async def coroutine(request: Any, context: Any) -> Any:
                status = await decide(context)
                if status is not None:
                    await _aabort(context, status)
                return await behaviour(request, context)

            return _rewrap(handler, coroutine), True
        if inspect.isasyncgenfunction(behaviour):

            async def streaming(request: Any, context: Any) -> AsyncIterator[Any]:
                status = await decide(context)
                if status is not None:
                    await _aabort(context, status)
                responses = behaviour(request, context)
                try:
                    async for response in responses:
                        yield response
                finally:
                    await responses.aclose()

            return _rewrap(handler, streaming), True

        # A sync behaviour: grpc.aio runs it in its thread pool; decide there on the loop's
        # limiter. This wrapper reads this call's details: it serves this call only.
        loop = asyncio.get_running_loop()

        async def decide_sync(context: Any) -> Any:
            request = self._request(details, context)
            return _verdict(await enforcer.acheck(request, matched=_conditions(rules, request)))

        def gate(context: Any) -> None:
            status = asyncio.run_coroutine_threadsafe(decide_sync(context), loop).result()
            if status is not None:
                _abort(context, status)

        return _wrap_sync(handler, gate), False
