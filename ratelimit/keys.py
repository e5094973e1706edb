"""Key functions: what a limit is counted per (a user, a client IP, an API key, everyone).

A key function takes a :class:`~ratelimit.request.RequestInfo` and returns an identity
string, or None when the request carries none (then the enforcer's missing-identity
policy applies). Any callable with that shape works; the ones here also offer
``aresolve`` for the asyncio path when they may do I/O (JWKS fetching)::

    from ratelimit.keys import jwt_subject, client_ip, header
    key = jwt_subject(jwks_url="https://idp/.well-known/jwks.json", issuer="https://idp")
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Sequence
from typing import Any

from .request import KeyFunc, RequestInfo

__all__ = [
    "AsyncKeyError",
    "KeyFunc",
    "api_key",
    "client_ip",
    "compose",
    "constant",
    "header",
    "jwt_claim",
    "jwt_subject",
    "resolve",
    "resolve_async",
]


class AsyncKeyError(TypeError):
    """An async key function was used from a sync adapter (a configuration error)."""


def resolve(key: KeyFunc, request: RequestInfo) -> str | None:
    """Run ``key`` from a sync adapter (async-only key functions are an error).

    Results are remembered for the request (key functions are long-lived objects held
    by rules, so ``id(key)`` is stable while the request is served).
    """
    memo = request.memo
    found = memo.get(id(key))
    if found is not None and found[0] is key:
        return found[1]  # type: ignore[no-any-return]
    result = _resolve(key, request)
    memo[id(key)] = (key, result)  # holding the key keeps its id from being reused
    return result


def _resolve(key: KeyFunc, request: RequestInfo) -> str | None:
    value = key(request)
    if hasattr(value, "__await__"):
        close = getattr(value, "close", None)
        if close is not None:
            close()
        raise AsyncKeyError(f"key function {key!r} is async; use it from an asyncio adapter")
    return _clean(value)


async def resolve_async(key: KeyFunc, request: RequestInfo) -> str | None:
    """Run ``key`` from an asyncio adapter, awaiting it when it is async (remembered per request)."""
    memo = request.memo
    found = memo.get(id(key))
    if found is not None and found[0] is key:
        return found[1]  # type: ignore[no-any-return]
    # Key functions with a non-blocking variant offer ``aresolve`` (jwt_claim, compose).
    aresolve = getattr(key, "aresolve", None)
    if aresolve is not None:
        result = _clean(await aresolve(request))
    else:
        value = key(request)
        if value.__class__ is not str and isinstance(value, Awaitable):
            value = await value
        result = _clean(value)
    memo[id(key)] = (key, result)  # holding the key keeps its id from being reused
    return result


def answers_directly(key: KeyFunc) -> bool:
    """Whether ``key`` is one of this module's key functions that never await (header,
    client_ip, api_key, constant): the asyncio path may call it without a coroutine."""
    return type(key) in _DIRECT


def _clean(value: object) -> str | None:
    if value.__class__ is str:
        return value or None
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        return str(value) or None
    raise TypeError(f"a key function must return str, bytes, int or None, got {type(value).__name__}")


class _Named:
    """Key functions print as the call that made them (for logs and errors)."""

    _repr = ""

    def __repr__(self) -> str:
        return self._repr


class header(_Named):
    """The value of request header (or gRPC metadata) ``name``.

    Only trust headers that your edge sets and overwrites, such as the claim headers an
    Istio waypoint writes with RequestAuthentication ``outputClaimToHeaders``.
    """

    def __init__(self, name: str) -> None:
        self.name = name.lower()
        self._bname = self.name.encode("latin-1", "replace")
        self._repr = f"header({name!r})"

    def __call__(self, request: RequestInfo) -> str | None:
        value = request.headers.first(self.name, self._bname)
        return value.strip() if value else None


class client_ip(_Named):
    """The client's IP, trusting exactly ``trusted_proxies`` proxies in front of the app.

    With N trusted proxies, the client is the N-th ``X-Forwarded-For`` entry from the
    right (each proxy appends the address it saw); entries further left were written by
    the client and are ignored, so it cannot escape its limit by sending the header.
    With 0 (the default) only the peer address counts. If the header has fewer than N
    entries, the request did not come through the proxies and the peer address is used.
    """

    def __init__(self, trusted_proxies: int = 0, header: str = "x-forwarded-for") -> None:
        if isinstance(trusted_proxies, bool) or not isinstance(trusted_proxies, int) or trusted_proxies < 0:
            raise ValueError(f"trusted_proxies must be an integer >= 0, got {trusted_proxies!r}")
        self.trusted_proxies = trusted_proxies
        self.header = header.lower()
        self._repr = f"client_ip(trusted_proxies={trusted_proxies})"

    def __call__(self, request: RequestInfo) -> str | None:
        n = self.trusted_proxies
        if n:
            entries = [e.strip() for v in request.headers.get_all(self.header) for e in v.split(",")]
            entries = [e for e in entries if e]
            if len(entries) >= n:
                return entries[-n]
        return request.client


class api_key(_Named):
    """A hash of the API key in ``header_name`` (the key itself never reaches Redis)."""

    def __init__(self, header_name: str = "x-api-key") -> None:
        self.header_name = header_name.lower()
        self._repr = f"api_key({header_name!r})"

    def __call__(self, request: RequestInfo) -> str | None:
        value = request.headers.get(self.header_name)
        if not value:
            return None
        return "key-" + hashlib.sha256(value.strip().encode("utf-8", "surrogateescape")).hexdigest()[:32]


class constant(_Named):
    """The same identity for every request: a limit shared by everyone."""

    def __init__(self, value: str = "global") -> None:
        self.value = value
        self._repr = f"constant({value!r})"

    def __call__(self, request: RequestInfo) -> str:
        return self.value


class compose(_Named):
    """Several keys at once (e.g. per user per tenant); None if any part is missing."""

    def __init__(self, *keys: Any) -> None:
        if not keys:
            raise ValueError("compose needs at least one key function")
        self.keys = keys
        self._repr = f"compose({', '.join(map(repr, keys))})"

    def __call__(self, request: RequestInfo) -> str | None:
        parts = [resolve(k, request) for k in self.keys]
        return None if any(p is None for p in parts) else "|".join(p for p in parts if p is not None)

    async def aresolve(self, request: RequestInfo) -> str | None:
        """The combined identity, awaiting the parts that are async."""
        parts = [await resolve_async(k, request) for k in self.keys]
        return None if any(p is None for p in parts) else "|".join(p for p in parts if p is not None)


class jwt_claim(_Named):
    """A claim of the request's JWT, verified, or from a header a trusted proxy wrote.

    Sources, in order:

    1. ``trusted_header`` (only when given): a header your mesh writes and overwrites,
       e.g. ``x-user-id`` from an Istio waypoint's RequestAuthentication
       ``outputClaimToHeaders``. Never configure it when clients can reach the app
       without passing that proxy: they could send the header themselves.
    2. The bearer token in ``Authorization`` (HTTP) or ``authorization`` metadata
       (gRPC), verified against ``jwks_url`` or ``key`` with ``algorithms``,
       ``issuer`` and ``audience``. A forged, expired, ``alg: none`` or malformed
       token yields None, never its claimed identity.

    ``unverified=True`` decodes without checking the signature: only for tokens a
    proxy has already verified. Claims that are not strings or integers yield None.

    ``token_cache_size`` bounds how many verified tokens are remembered (4096 by
    default, about 1.5 KiB each for a 500-character token; ``0`` turns remembering off,
    so every request pays a signature check). A remembered token is served without a
    signature check only while its ``nbf``/``iat`` and ``exp`` (with ``leeway``) allow
    it and its keys still stand; refused tokens are never remembered. With
    ``verifier=`` the verifier's own setting applies (as do its other options).

        key = jwt_subject(jwks_url="https://idp/.well-known/jwks.json", token_cache_size=0)
    """

    def __init__(
        self,
        name: str,
        *,
        jwks_url: str | None = None,
        key: Any = None,
        algorithms: Sequence[str] | None = None,
        issuer: str | Sequence[str] | None = None,
        audience: str | Sequence[str] | None = None,
        leeway: float = 0.0,
        trusted_header: str | None = None,
        unverified: bool = False,
        verifier: Any = None,
        token_cache_size: int = 4096,
    ) -> None:
        size = token_cache_size
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ValueError(f"token_cache_size must be an integer >= 0, got {token_cache_size!r}")
        self.claim = name
        self.trusted_header = trusted_header.lower() if trusted_header else None
        self.verifier: Any = verifier
        if verifier is not None:
            pass  # shared with other claims: a token is verified once per request
        elif jwks_url is not None or key is not None or unverified:
            from ._policy.jwt_verify import JWTVerifier

            options: dict[str, Any] = {
                "issuer": issuer,
                "audience": audience,
                "leeway": leeway,
                "cache_size": token_cache_size,
            }
            if algorithms is not None:
                options["algorithms"] = tuple(algorithms)
            self.verifier = JWTVerifier(jwks_url=jwks_url, key=key, verify=not unverified, **options)
        elif trusted_header is None:
            raise ValueError("jwt_claim needs jwks_url=, key=, verifier=, trusted_header= or unverified=True")
        self._repr = f"jwt_claim({name!r})"

    def _from_header(self, request: RequestInfo) -> str | None:
        if self.trusted_header is None:
            return None
        values = request.headers.get_all(self.trusted_header)
        if len(values) != 1:
            # The proxy replaces the header; two values mean a client's reached the app beside it.
            return None
        return values[0].strip() or None

    def _token(self, request: RequestInfo) -> str | None:
        from ._policy.jwt_verify import bearer_token

        return bearer_token(request.headers.get("authorization"))

    def _claim(self, claims: dict[str, Any] | None) -> str | None:
        if not claims:
            return None
        value = claims.get(self.claim)
        if isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool)):
            return str(value) or None
        return None

    def _verified(self, request: RequestInfo) -> tuple[Any, Any] | None:
        # Claims of this request, remembered per verifier: sub and plan verify one token once.
        memo = request.memo.get(id(self.verifier))
        return memo if memo is not None and memo[0] is self.verifier else None

    def _keep(self, request: RequestInfo, claims: dict[str, Any] | None) -> str | None:
        request.memo[id(self.verifier)] = (self.verifier, claims)
        return self._claim(claims)

    def __call__(self, request: RequestInfo) -> str | None:
        found = self._from_header(request)
        if found is not None or self.verifier is None:
            return found
        if (memo := self._verified(request)) is not None:
            return self._claim(memo[1])
        token = self._token(request)
        return self._keep(request, self.verifier.verify(token) if token else None)

    async def aresolve(self, request: RequestInfo) -> str | None:
        """The claim, verifying the token without blocking the event loop (JWKS fetches)."""
        found = self._from_header(request)
        if found is not None or self.verifier is None:
            return found
        if (memo := self._verified(request)) is not None:
            return self._claim(memo[1])
        token = self._token(request)
        return self._keep(request, await self.verifier.averify(token) if token else None)


_DIRECT = frozenset((header, client_ip, api_key, constant))


def jwt_subject(**options: Any) -> jwt_claim:
    """The ``sub`` claim of the request's JWT; options as for :class:`jwt_claim`."""
    key = jwt_claim("sub", **options)
    key._repr = "jwt_subject()"
    return key
