"""Public keys for JWT verification: PEM, JWK and JWKS parsing, and a cached JWKS URL.

Every key is reduced to a :class:`VerificationKey` that knows its *family* (RSA, one EC
curve, OKP or an HMAC secret). An algorithm may only ever be verified with a key of its
own family, which is what makes the RS256 -> HS256 confusion attack impossible: an RSA
key is never handed to HMAC, whatever the token header says.

The JWKS URL is fetched by a small HTTP/1.1 client whose every socket operation shares
one deadline (``fetch_timeout``), on a dedicated pair of threads, one fetch at a time
per URL however many requests wait for it (:class:`JWKSCache`).

Needs PyJWT and cryptography, imported lazily (see :mod:`ratelimit._policy.jwt_verify`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from .jwks_http import http_get as _http_get  # a module global, so tests can stand in for it

__all__ = ["ALGORITHM_FAMILIES", "HMAC_MIN_BYTES", "JWKSCache", "VerificationKey", "load_keys", "parse_jwks"]

log = logging.getLogger("ratelimit")

ALGORITHM_FAMILIES: dict[str, str] = {
    **dict.fromkeys(("RS256", "RS384", "RS512", "PS256", "PS384", "PS512"), "RSA"),
    **{"ES256": "EC:secp256r1", "ES384": "EC:secp384r1", "ES512": "EC:secp521r1", "ES256K": "EC:secp256k1"},
    **{"EdDSA": "OKP", "HS256": "oct", "HS384": "oct", "HS512": "oct"},
}
"""The key family each supported algorithm is verified with. ``none`` is deliberately absent."""

HMAC_MIN_BYTES: dict[str, int] = {"HS256": 32, "HS384": 48, "HS512": 64}
"""RFC 7518 section 3.2: an HMAC secret at least as long as the hash output."""

RSA_MIN_BITS = 2048
_FETCH_WORKERS = 2  # one fetch in flight per JWKSCache; a second cache need not queue behind it


@dataclass(frozen=True)
class VerificationKey:
    """One key a token may be verified with.

    Args:
        key: a cryptography public key object, or ``bytes`` for an HMAC secret.
        family: ``"RSA"``, ``"EC:<curve name>"``, ``"OKP"`` or ``"oct"``.
        kid: the JWK ``kid``; keys without one are tried for any token.
        alg: the JWK ``alg``, when it pins the key to one algorithm.
    """

    key: Any
    family: str
    kid: str | None = None
    alg: str | None = None

    def fits(self, alg: str) -> bool:
        """May a token with header ``alg`` be verified with this key?"""
        return ALGORITHM_FAMILIES.get(alg) == self.family and self.alg in (None, alg)


def _family(public: Any) -> str:
    from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

    if isinstance(public, rsa.RSAPublicKey):
        if public.key_size < RSA_MIN_BITS:
            raise ValueError(f"RSA key of {public.key_size} bits is below {RSA_MIN_BITS}")
        return "RSA"
    if isinstance(public, ec.EllipticCurvePublicKey):
        return f"EC:{public.curve.name}"
    if isinstance(public, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
        return "OKP"
    raise ValueError(f"unsupported public key type {type(public).__name__}")


def _key_from_pem(raw: bytes) -> VerificationKey:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    try:
        if raw.startswith(b"-----BEGIN CERTIFICATE-----"):
            public: Any = x509.load_pem_x509_certificate(raw).public_key()
        elif raw.startswith(b"-----BEGIN"):
            public = serialization.load_pem_public_key(raw)
        else:
            public = serialization.load_ssh_public_key(raw)
    except ValueError as exc:
        raise ValueError(
            "key is not a PEM public key, certificate or SSH public key (pass the public key, "
            f"never the private one): {exc}"
        ) from exc
    return VerificationKey(public, _family(public))


def _key_from_jwk(jwk: Mapping[str, Any]) -> VerificationKey:
    from jwt.algorithms import ECAlgorithm, HMACAlgorithm, OKPAlgorithm, RSAAlgorithm

    kid, alg, kty = jwk.get("kid"), jwk.get("alg"), jwk.get("kty")
    if not isinstance(kid, (str, type(None))) or not isinstance(alg, (str, type(None))):
        raise ValueError("JWK 'kid' and 'alg' must be strings")
    parsers: dict[Any, Callable[[dict[str, Any]], Any]] = {
        "RSA": RSAAlgorithm.from_jwk,
        "EC": ECAlgorithm.from_jwk,
        "OKP": OKPAlgorithm.from_jwk,
        "oct": HMACAlgorithm.from_jwk,
    }
    if kty not in parsers:
        raise ValueError(f"unsupported JWK kty {kty!r}")
    try:
        parsed = parsers[kty](dict(jwk))
    except Exception as exc:  # PyJWT raises InvalidKeyError, KeyError, ValueError... by field
        raise ValueError(f"invalid {kty} JWK {kid!r}: {exc}") from exc
    if kty == "oct":
        return VerificationKey(parsed, "oct", kid, alg)
    # A JWK carrying "d" parses as a private key; only its public half is ever needed.
    public = parsed.public_key() if hasattr(parsed, "public_key") else parsed
    return VerificationKey(public, _family(public), kid, alg)


def _for_signing(jwk: Mapping[str, Any]) -> bool:
    return jwk.get("use") in (None, "sig")


def parse_jwks(document: Any, *, strict: bool) -> list[VerificationKey]:
    """The signing keys of a JWKS document (``{"keys": [...]}``).

    Keys marked ``"use": "enc"`` are skipped. Unusable keys raise ``ValueError`` when
    ``strict`` (configuration), else are logged and skipped (a remote JWKS). A document
    with no usable key raises ``ValueError``.
    """
    jwks = document.get("keys") if isinstance(document, Mapping) else None
    if not isinstance(jwks, list):
        raise ValueError("a JWKS must be a JSON object with a 'keys' list")
    keys: list[VerificationKey] = []
    for jwk in jwks:
        if not isinstance(jwk, Mapping):
            raise ValueError("JWKS 'keys' must hold JSON objects")
        if not _for_signing(jwk):
            continue
        try:
            keys.append(_key_from_jwk(jwk))
        except ValueError as exc:
            if strict:
                raise
            log.warning("skipping unusable JWKS key: %s", exc)
    if not keys:
        raise ValueError("the JWKS holds no usable signing key")
    return keys


def load_keys(key: Any, *, secret_ok: bool) -> list[VerificationKey]:
    """Keys from a configured ``key``: PEM str/bytes, JWK dict, JWKS dict, or a list of those.

    A str/bytes that is not PEM (or SSH) is an HMAC secret, allowed only when
    ``secret_ok`` (an HS* algorithm was listed explicitly).
    """
    if isinstance(key, (str, bytes)):
        raw = (key.encode() if isinstance(key, str) else key).strip()
        if raw.startswith((b"-----BEGIN", b"ssh-", b"ecdsa-")):
            return [_key_from_pem(raw)]
        if not secret_ok:
            raise ValueError(
                "key is not a PEM public key; a shared secret needs an HS* algorithm in `algorithms`"
            )
        return [VerificationKey(raw, "oct")]
    if isinstance(key, Mapping):
        if "keys" in key:
            return parse_jwks(key, strict=True)
        return [_key_from_jwk(key)] if _for_signing(key) else []
    if isinstance(key, (list, tuple)):
        return [loaded for item in key for loaded in load_keys(item, secret_ok=secret_ok)]
    raise TypeError(f"unsupported key type {type(key).__name__}")


def _fingerprint(keys: list[VerificationKey]) -> frozenset[tuple[Any, ...]]:
    """What identifies a key set: each key's kid, alg, family and public key material.

    Two fetches with equal fingerprints verify exactly the same tokens; key order and
    unrelated JWK fields (``use: enc`` keys, ``x5c`` chains) do not count.
    """
    from cryptography.hazmat.primitives import serialization

    def material(key: VerificationKey) -> Any:
        if isinstance(key.key, bytes):
            return key.key
        try:
            return key.key.public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        except Exception:  # no serialisation: never equal to anything, so a change
            return object()

    return frozenset((key.kid, key.alg, key.family, material(key)) for key in keys)


# ---------------------------------------------------------------------------- where fetches run

_pool: tuple[int, ThreadPoolExecutor] | None = None
_pool_lock = threading.Lock()


def _fetch_pool() -> ThreadPoolExecutor:
    """The small pool every JWKS fetch runs on, never an event loop's default executor."""
    global _pool
    with _pool_lock:
        if _pool is None or _pool[0] != os.getpid():
            # A forked child inherits the pool but not its threads: work queued on it would never run.
            _pool = (os.getpid(), ThreadPoolExecutor(_FETCH_WORKERS, thread_name_prefix="ratelimit-jwks"))
        return _pool[1]


def _settle(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


async def _landed(flight: Future[None], timeout: float) -> None:
    """Wait at most ``timeout`` seconds for ``flight``, holding no thread meanwhile."""
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[None] = loop.create_future()

    # Not asyncio.wrap_future: its callback raises (and concurrent.futures logs it) when a
    # fetch lands after the loop that gave up on it has closed.
    def wake(_: Future[None]) -> None:
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(_settle, waiter)

    if timeout > 0:
        flight.add_done_callback(wake)
        await asyncio.wait((waiter,), timeout=timeout)


# ---------------------------------------------------------------------------- the cache


class JWKSCache:
    """The keys published at a JWKS URL, fetched lazily and cached.

    Every fetch attempt, successful or not, is at most one per ``min_refresh_interval``, so
    neither a flood of unknown ``kid`` values nor a down IdP turns into a request storm.
    A failed fetch keeps the previous keys.

    Fetches are single-flight and run on a small dedicated thread pool (threads named
    ``ratelimit-jwks_N``), never on the caller's thread nor an event loop's default
    executor. Callers that need keys while a fetch is in flight, threads and asyncio
    tasks alike, wait for that fetch instead of starting their own. One fetch has
    ``timeout`` seconds in all (name resolution, connect, TLS, headers and body), and
    no caller waits longer than ``timeout`` for fetches: when one has not landed by then
    (it was queued behind another cache's fetch, or the resolver hangs, which nothing
    can interrupt), the caller goes on with the keys it has. A fetch that succeeds after
    its callers stopped waiting still fills the cache.

    A fetch that brings a different key set bumps :attr:`generation`, which is how the
    verifier's cache of verified tokens learns that verdicts reached under the old keys
    no longer hold.

    Args:
        url: the JWKS endpoint (http or https). Redirects are not followed.
        ttl: seconds before cached keys are fetched again.
        min_refresh_interval: minimum seconds between two fetch attempts.
        timeout: the budget of one fetch, and the longest a caller waits for fetches.
        clock: monotonic seconds for ``ttl`` and ``min_refresh_interval``, injectable for
            tests (waits always use the real :func:`time.monotonic`).
    """

    def __init__(
        self,
        url: str,
        *,
        ttl: float,
        min_refresh_interval: float,
        timeout: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self._ttl = ttl
        self._min_interval = min_refresh_interval
        self._timeout = timeout
        self._clock = clock
        self._lock = threading.Lock()
        # (keys, fetched_at, generation) replaced as one tuple so lock-free readers see a
        # consistent triple. The generation counts key-set changes (see :attr:`generation`).
        self._state: tuple[list[VerificationKey] | None, float, int] = (None, 0.0, 0)
        self._last_attempt: float | None = None
        # The fetch in flight and the pid that started it: a forked child must not wait
        # for a fetch whose thread stayed in the parent.
        self._flight: tuple[int, Future[None] | None] = (0, None)

    @property
    def keys(self) -> list[VerificationKey]:
        """The cached keys (empty before the first successful fetch). Never fetches."""
        return self._state[0] or []

    @property
    def generation(self) -> int:
        """Bumped whenever a fetch brings a key set different from the cached one.

        0 before the first successful fetch. A refresh that serves the same keys again
        (the TTL passed, nothing rotated) or fails leaves it as it is, so a verdict
        reached under generation ``g`` holds exactly while ``generation == g``.
        """
        return self._state[2]

    def snapshot(self) -> tuple[list[VerificationKey], int]:
        """The cached keys and their :attr:`generation`, read together (one state read)."""
        keys, _, generation = self._state
        return keys or [], generation

    def is_stale(self) -> bool:
        """True before the first successful fetch and once the keys are ``ttl`` old."""
        keys, fetched_at, _ = self._state
        return keys is None or self._clock() - fetched_at >= self._ttl

    def may_refresh(self) -> bool:
        """True when a fetch attempt is allowed now (``min_refresh_interval`` has passed)."""
        last = self._last_attempt
        return last is None or self._clock() - last >= self._min_interval

    def deadline(self) -> float:
        """The :func:`time.monotonic` time until which a caller arriving now may wait."""
        return time.monotonic() + self._timeout

    def refresh(self, *, wait: bool = True, deadline: float | None = None) -> None:
        """Fetch the keys if allowed, or join the fetch in flight; blocks at most ``timeout``.

        Args:
            wait: ``False`` returns at once when a fetch is already in flight (for a caller
                with keys to go on with); a fetch this call starts is still waited for.
            deadline: from :meth:`deadline`, so that several calls for one request share
                one wait budget.
        """
        flight = self._join(wait)
        if flight is not None:
            concurrent.futures.wait((flight,), timeout=self._wait_time(deadline))

    async def arefresh(self, *, wait: bool = True, deadline: float | None = None) -> None:
        """Like :meth:`refresh`, awaiting the fetch: the event loop runs on meanwhile."""
        flight = self._join(wait)
        if flight is not None:
            await _landed(flight, self._wait_time(deadline))

    def _wait_time(self, deadline: float | None) -> float:
        return self._timeout if deadline is None else max(0.0, deadline - time.monotonic())

    def _join(self, wait: bool) -> Future[None] | None:
        """The fetch to wait for: the one in flight, or one started now; None for neither."""
        with self._lock:
            pid, flight = self._flight
            if flight is not None and pid == os.getpid() and not flight.done():
                return flight if wait else None
            # Re-checked under the lock: a fetch that just landed has stamped its attempt.
            if not self.may_refresh():
                return None
            try:
                flight = _fetch_pool().submit(self._attempt)
            except RuntimeError:  # the interpreter is shutting down
                return None
            self._flight = (os.getpid(), flight)
            return flight

    def _attempt(self) -> None:
        try:
            document = json.loads(_http_get(self.url, self._timeout))
            keys = parse_jwks(document, strict=False)
            # Only this fetch thread writes the state (one fetch in flight per cache).
            previous, _, generation = self._state
            if previous is None or _fingerprint(keys) != _fingerprint(previous):
                generation += 1
            self._state = (keys, self._clock(), generation)
        except Exception as exc:  # network, HTTP status, JSON, key material: all the same
            log.warning(
                "JWKS fetch from %s failed, keeping %d cached key(s): %s", self.url, len(self.keys), exc
            )
        finally:
            # Stamped when the attempt ends, so callers arriving mid-fetch still ask to
            # refresh, join the fetch in flight and then find the fresh keys.
            self._last_attempt = self._clock()
