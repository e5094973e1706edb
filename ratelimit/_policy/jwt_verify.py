"""Verified JWT identities: only a token that passes every check may name who is limited.

A forged, expired, ``alg: none`` or malformed token yields ``None`` and must be treated
as anonymous; it never counts as the subject it claims.

    verifier = JWTVerifier(jwks_url="https://idp.example/.well-known/jwks.json",
                           issuer="https://idp.example", audience="orders")
    claims = verifier.verify(bearer_token(headers.get("authorization")) or "")
    identity = claims["sub"] if claims else client_ip

A verified token is remembered (keyed by the exact token string) until its ``exp``, so
clients re-sending the same token pay one signature check, not one per request; see
:class:`JWTVerifier` ``cache_size``.

Needs PyJWT with cryptography (``pip install 'ambient-ratelimit[jwt]'``), imported lazily.
"""

from __future__ import annotations

import enum
import logging
import math
import re
import threading
import time
import urllib.parse
from collections.abc import Callable, Generator, Sequence
from typing import TYPE_CHECKING, Any, Literal, TypeAlias, cast

from .jwks import ALGORITHM_FAMILIES, HMAC_MIN_BYTES, JWKSCache, VerificationKey, load_keys

if TYPE_CHECKING:
    from jwt.types import Options

__all__ = ["MAX_TOKEN_LENGTH", "JWTVerifier", "bearer_token"]

log = logging.getLogger("ratelimit")

MAX_TOKEN_LENGTH = 16 * 1024
"""Longer tokens are rejected before any parsing."""

NO_EXP_TTL = 60.0
"""Seconds a verified token without ``exp`` (only with ``require`` not listing it) is
served from the token cache before it is verified again."""

_wall_clock: Callable[[], float] = time.time
"""The clock token times are checked against, PyJWT's (tests replace both together)."""

# A remembered verdict: the claims, the bounds of its validity, the key generation it was
# reached under, and whether the claims hold lists or objects (then copies must be deep).
# Valid while ``not_before <= now + leeway and now - leeway < expires``: PyJWT's own
# comparisons, on the integers it makes of nbf/iat and exp.
_Entry: TypeAlias = "tuple[dict[str, Any], float, float, int, bool]"

# A JWKS refresh a verification needs before it goes on: the cache, wait, deadline.
_Refresh: TypeAlias = "tuple[JWKSCache, bool, float | None]"

_BEARER = re.compile(r"[A-Za-z0-9\-._~+/]+=*")  # RFC 6750 b64token


class _Need(enum.Enum):
    OTHER_KEY = enum.auto()  # the signature does not match this key: try the next one


def _import_jwt() -> None:
    try:
        import cryptography  # noqa: F401
        import jwt  # noqa: F401
    except ImportError as exc:
        raise ImportError(
            "JWT verification needs PyJWT with cryptography: pip install 'ambient-ratelimit[jwt]'"
        ) from exc


def _strings(value: str | Sequence[str] | None, name: str) -> list[str] | None:
    if value is None:
        return None
    items = [value] if isinstance(value, str) else list(value)
    if not items or not all(isinstance(item, str) and item for item in items):
        raise ValueError(f"{name} must be a non-empty string or a sequence of them")
    return items


def _json_copy(value: Any) -> Any:
    """A copy of decoded JSON sharing nothing mutable with ``value``."""
    if isinstance(value, dict):
        return {k: _json_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_copy(v) for v in value]
    return value


def _claims_copy(claims: dict[str, Any], nested: bool = True) -> dict[str, Any]:
    """The caller's own claims: a remembered dict is never handed out, whatever callers do."""
    return {k: _json_copy(v) for k, v in claims.items()} if nested else claims.copy()


def _well_typed(claims: dict[str, Any]) -> bool:
    # PyJWT int()s time claims, so "exp": "99999999999" or true would otherwise pass.
    for name in ("exp", "nbf", "iat"):
        value = claims.get(name)
        if name in claims and (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or (isinstance(value, float) and not math.isfinite(value))
        ):
            return False
    aud = claims.get("aud")
    if "aud" in claims and not (
        isinstance(aud, str) or (isinstance(aud, list) and all(isinstance(a, str) for a in aud))
    ):
        return False
    return all(isinstance(claims[name], str) for name in ("iss", "sub", "jti") if name in claims)


class JWTVerifier:
    """Verifies JWTs against a JWKS URL or configured keys; ``None`` for every invalid token.

    Args:
        jwks_url: the IdP's JWKS endpoint, fetched lazily on first use and cached.
        key: a PEM public key (str/bytes), a JWK dict, a JWKS dict, or a list of those; a
            non-PEM str/bytes is an HMAC secret, allowed only if HS* is in ``algorithms``.
        algorithms: the accepted header ``alg`` values. ``none`` is always refused; HS*
            must be listed explicitly and needs ``key`` (never a JWKS URL).
        issuer: accepted ``iss`` value(s); unchecked when ``None``.
        audience: accepted ``aud`` value(s) (one match suffices); unchecked when ``None``.
        leeway: seconds of clock skew tolerated for ``exp``, ``nbf`` and ``iat``.
        require: claims that must be present (``exp``, ``nbf``, ``iat`` are always checked
            when present).
        jwks_ttl: seconds before the JWKS is fetched again.
        jwks_min_refresh_interval: minimum seconds between fetch attempts; an unknown
            ``kid`` refreshes only this often, so random kids cannot hammer the IdP.
        fetch_timeout: the budget of one JWKS fetch in seconds: name resolution, connect,
            TLS, headers and body together, however slowly the server sends them. It is
            also the longest a request waits for fetches; when keys are not in by then,
            the request goes on with the cached keys, or, having none, no identity.
        verify: ``False`` DANGEROUSLY skips the signature check. Only for tokens already
            verified upstream (an Istio waypoint with ``RequestAuthentication`` and
            ``forwardOriginalToken: true``) on a path no client can reach directly: any
            client can otherwise claim any identity. Malformed tokens, ``exp``/``nbf``,
            ``require``, issuer and audience are still checked. Takes no key.
        clock: monotonic seconds for the JWKS cache timings (tests); token times
            (``exp``, ``nbf``, ``iat``) are always checked against the wall clock.
        cache_size: how many verified tokens to remember (0: none). A token verified once
            is served from memory, without a signature check, while ``nbf``/``iat`` and
            ``exp`` (with ``leeway``) allow it and, for a JWKS, until a refresh brings a
            different key set; a token without ``exp`` for at most :data:`NO_EXP_TTL`.
            Keyed by the exact token string; rejected tokens are never remembered. The
            oldest entry makes room for a new one. An entry holds the token and its
            claims: about 1.5 KiB for a 500-character token, 30 KiB at most.
    """

    def __init__(
        self,
        *,
        jwks_url: str | None = None,
        key: str | bytes | dict[str, Any] | Sequence[str | bytes | dict[str, Any]] | None = None,
        algorithms: Sequence[str] = ("RS256", "ES256", "PS256", "EdDSA"),
        issuer: str | Sequence[str] | None = None,
        audience: str | Sequence[str] | None = None,
        leeway: float = 0.0,
        require: Sequence[str] = ("exp",),
        jwks_ttl: float = 300.0,
        jwks_min_refresh_interval: float = 10.0,
        fetch_timeout: float = 2.0,
        verify: bool = True,
        clock: Callable[[], float] | None = None,
        cache_size: int = 4096,
    ) -> None:
        _import_jwt()
        algs = _strings(algorithms, "algorithms") or []
        if any(alg.lower() == "none" for alg in algs):
            raise ValueError("algorithm 'none' is never accepted")
        unknown = sorted(set(algs) - set(ALGORITHM_FAMILIES))
        if unknown:
            raise ValueError(f"unsupported algorithm(s) {unknown}; choose from {sorted(ALGORITHM_FAMILIES)}")
        hmac_algs = [alg for alg in algs if alg in HMAC_MIN_BYTES]
        if min(leeway, jwks_ttl, jwks_min_refresh_interval) < 0 or fetch_timeout <= 0:
            raise ValueError("leeway, jwks_ttl and jwks_min_refresh_interval must be >= 0, fetch_timeout > 0")
        if isinstance(cache_size, bool) or not isinstance(cache_size, int) or cache_size < 0:
            raise ValueError(f"cache_size must be an integer >= 0, got {cache_size!r}")

        self._algorithms = frozenset(algs)
        self._verify_signature = verify
        self._static_keys: list[VerificationKey] = []
        self._jwks: JWKSCache | None = None
        if not verify:
            if jwks_url is not None or key is not None:
                raise ValueError("verify=False checks no signature: pass neither jwks_url nor key")
            log.warning(
                "JWTVerifier(verify=False): token signatures are NOT verified; any client that can "
                "reach this service directly can claim any identity"
            )
        elif (jwks_url is None) == (key is None):
            raise ValueError("pass exactly one of jwks_url or key")
        elif jwks_url is not None:
            if urllib.parse.urlsplit(jwks_url).scheme not in ("http", "https"):
                raise ValueError(f"jwks_url must be http(s), got {jwks_url!r}")
            if hmac_algs:
                raise ValueError("HS* algorithms need a shared secret `key`, never a JWKS URL")
            self._jwks = JWKSCache(
                jwks_url,
                ttl=jwks_ttl,
                min_refresh_interval=jwks_min_refresh_interval,
                timeout=fetch_timeout,
                clock=clock or time.monotonic,
            )
        else:
            self._static_keys = load_keys(key, secret_ok=bool(hmac_algs))
            self._check_static_keys(hmac_algs)

        self._issuer = _strings(issuer, "issuer")
        self._audience = _strings(audience, "audience")
        self._leeway = leeway
        # Verified tokens, oldest first. Lookups take no lock (one dict.get under the GIL);
        # every change is made under the lock, on the path that has just verified anyway.
        self._cache_size = cache_size
        self._cache: dict[str, _Entry] = {}
        self._cache_lock = threading.Lock()
        self._options: Options = {
            "verify_signature": verify,
            "verify_exp": True,
            "verify_nbf": True,
            "verify_iat": True,
            # PyJWT rejects any token carrying "aud" when no audience is given; we skip instead.
            "verify_aud": self._audience is not None,
            "verify_iss": self._issuer is not None,
            "verify_sub": True,
            "verify_jti": True,
            "require": (_strings(require, "require") or []) if require else [],
            "enforce_minimum_key_length": True,
        }

    def _check_static_keys(self, hmac_algs: list[str]) -> None:
        usable = [k for k in self._static_keys if any(k.fits(alg) for alg in self._algorithms)]
        if not usable:
            raise ValueError(f"no configured key fits any of the algorithms {sorted(self._algorithms)}")
        secrets = [k for k in self._static_keys if k.family == "oct"]
        if hmac_algs and not secrets:
            raise ValueError("HS* algorithms need a shared secret key (an asymmetric key is never one)")
        needed = max((HMAC_MIN_BYTES[alg] for alg in hmac_algs), default=0)
        if any(len(k.key) < needed for k in secrets):
            raise ValueError(f"HMAC secrets must be at least {needed} bytes for {sorted(hmac_algs)}")

    def verify(self, token: str) -> dict[str, Any] | None:
        """The claims of a valid token, else ``None``; never raises for a bad token.

        May wait for a JWKS fetch, at most ``fetch_timeout`` seconds (the fetch itself runs
        on a dedicated thread); use :meth:`averify` in async code. The claims are the
        caller's own copy.
        """
        if (claims := self._hit(token)) is not None:
            return claims
        steps = self._steps(token)
        try:
            while True:
                jwks, wait, deadline = next(steps)
                jwks.refresh(wait=wait, deadline=deadline)
        except StopIteration as done:
            return cast("dict[str, Any] | None", done.value)

    async def averify(self, token: str) -> dict[str, Any] | None:
        """Like :meth:`verify`, but a JWKS fetch is awaited while the event loop runs on.

        The fetch never occupies the loop's default executor, and concurrent calls share
        one fetch. Tokens whose keys are cached are verified inline (a signature check).
        """
        if (claims := self._hit(token)) is not None:
            return claims
        steps = self._steps(token)
        try:
            while True:
                jwks, wait, deadline = next(steps)
                await jwks.arefresh(wait=wait, deadline=deadline)
        except StopIteration as done:
            return cast("dict[str, Any] | None", done.value)

    # verify and averify share every step but the refresh: _steps decides, yields each
    # refresh it needs (the JWKS, wait, deadline) for the caller to make, blocking or
    # awaited, and returns the claims. A remembered token whose JWKS needs no refresh is
    # answered before that, by _hit, without a generator.

    def _hit(self, token: str) -> dict[str, Any] | None:
        """The remembered claims of ``token`` when no JWKS refresh is due, else None."""
        entry = self._remembered(token)
        if entry is None:
            return None
        jwks = self._jwks
        if jwks is not None and jwks.is_stale() and jwks.may_refresh():
            return None  # the refresh comes first: it may void the entry
        return self._current(entry)

    def _steps(self, token: str) -> Generator[_Refresh, None, dict[str, Any] | None]:
        """Verify ``token``, yielding each JWKS refresh to make before going on."""
        entry = self._remembered(token)
        jwks = self._jwks
        if entry is not None:
            if jwks is not None and jwks.is_stale() and jwks.may_refresh():
                yield jwks, False, None  # as below: only the request starting it waits
            if (claims := self._current(entry)) is not None:
                return claims
        header = self._header(token)
        if header is not None and jwks is not None:
            deadline = jwks.deadline()
            if jwks.is_stale() and jwks.may_refresh():
                # With keys in hand, let whoever is already refreshing do it and go on.
                yield jwks, not jwks.keys, deadline
            if self._kid_unknown(header[1]) and jwks.may_refresh():
                yield jwks, True, deadline
        return None if header is None else self._verified(token, *header)

    # The hit path is _remembered, the JWKS TTL check and _current: a dict lookup and a few
    # comparisons, no lock. A JWKS past its TTL is refreshed on hits as on misses, so
    # cached verdicts cannot keep a retired key alive, and a refresh that brings another
    # key set (a new generation) voids every verdict reached under the old one.

    def _remembered(self, token: str) -> _Entry | None:
        """The verdict remembered for ``token`` while its time window holds, else None."""
        entry = self._cache.get(token) if token.__class__ is str else None
        if entry is None:
            return None
        now = _wall_clock()
        if entry[1] <= now + self._leeway and now - self._leeway < entry[2]:
            return entry
        return None  # past exp (or before nbf/iat): verified again, and then forgotten

    def _current(self, entry: _Entry) -> dict[str, Any] | None:
        """A copy of the remembered claims if the keys that verified them still stand."""
        claims, _, _, generation, nested = entry
        if self._jwks is not None and generation != self._jwks.generation:
            return None
        return _claims_copy(claims, nested)

    def _verified(self, token: str, alg: str, kid: str | None) -> dict[str, Any] | None:
        """Verify ``token`` and remember the verdict: the claims, or forget a stale entry."""
        claims, generation = self._check(token, alg, kid)
        if self._cache_size and token.__class__ is str:
            self._remember(token, claims, generation)
        return None if claims is None else _claims_copy(claims)

    def _remember(self, token: str, claims: dict[str, Any] | None, generation: int) -> None:
        entry: _Entry | None = None
        if claims is not None:
            # PyJWT int()s the time claims and compares them with now +/- leeway; so do we.
            starts = [int(claims[name]) for name in ("nbf", "iat") if name in claims]
            not_before: float = max(starts) if starts else -math.inf
            if "exp" in claims:
                expires: float = int(claims["exp"])
            else:
                expires = _wall_clock() + NO_EXP_TTL - self._leeway  # NO_EXP_TTL from now
            nested = any(isinstance(value, (dict, list)) for value in claims.values())
            entry = (claims, not_before, expires, generation, nested)
        cache = self._cache
        with self._cache_lock:
            cache.pop(token, None)  # an outdated verdict; a new one goes in at the newest end
            if entry is not None:
                while len(cache) >= self._cache_size:
                    del cache[next(iter(cache))]
                cache[token] = entry

    def _header(self, token: str) -> tuple[str, str | None] | None:
        """The ``alg`` and ``kid`` of a token worth checking further, else None."""
        if not isinstance(token, str) or not 0 < len(token) <= MAX_TOKEN_LENGTH or token.count(".") != 2:
            return None
        try:
            import jwt

            header = jwt.get_unverified_header(token)
        except Exception:
            return None
        alg, kid = header.get("alg"), header.get("kid")
        if not isinstance(alg, str) or not isinstance(kid, (str, type(None))):
            return None
        if self._verify_signature and alg not in self._algorithms:
            return None
        return alg, kid

    def _kid_unknown(self, kid: str | None) -> bool:
        """True when ``kid`` names no cached JWKS key: a rotation a refresh may pick up."""
        return self._jwks is not None and kid is not None and all(k.kid != kid for k in self._jwks.keys)

    def _check(self, token: str, alg: str, kid: str | None) -> tuple[dict[str, Any] | None, int]:
        """The claims of ``token`` (or None) and the key generation they were checked with."""
        if not self._verify_signature:
            unverified = self._decode(token, None, None)
            return (None if unverified is _Need.OTHER_KEY else unverified), 0
        # Keys and generation read together: a verdict is only ever tagged with the
        # generation of the keys that reached it.
        keys, generation = self._jwks.snapshot() if self._jwks is not None else (self._static_keys, 0)
        candidates = [k for k in keys if k.kid == kid] if kid is not None else keys
        if not candidates:
            candidates = [k for k in keys if k.kid is None]
        for candidate in candidates:
            if candidate.fits(alg):
                claims = self._decode(token, candidate, alg)
                if claims is not _Need.OTHER_KEY:
                    return claims, generation
        return None, generation

    def _decode(
        self, token: str, key: VerificationKey | None, alg: str | None
    ) -> dict[str, Any] | Literal[_Need.OTHER_KEY] | None:
        import jwt

        try:
            claims = jwt.decode(
                token,
                key=key.key if key is not None else "",
                algorithms=[alg] if alg is not None else None,
                options=self._options,
                issuer=self._issuer,
                audience=self._audience,
                leeway=self._leeway,
            )
            return claims if _well_typed(claims) else None
        except jwt.InvalidSignatureError:
            return _Need.OTHER_KEY
        except Exception as exc:  # whatever a hostile token provokes, it is only ever a rejection
            log.debug("JWT rejected: %s", type(exc).__name__)
            return None


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header value, else ``None``.

    The scheme is case-insensitive and surrounding whitespace is ignored; anything but
    exactly a scheme and one RFC 6750 token gives ``None``.

        >>> bearer_token("  bearer abc.def.ghi ")
        'abc.def.ghi'
    """
    if not isinstance(authorization, str):
        return None
    parts = authorization.split()
    if len(parts) != 2 or parts[0].lower() != "bearer" or not _BEARER.fullmatch(parts[1]):
        return None
    return parts[1]
