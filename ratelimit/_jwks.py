"""Public keys for JWT verification: PEM, JWK and JWKS parsing, and a cached JWKS URL.

Every key is reduced to a :class:`VerificationKey` that knows its *family* (RSA, one EC
curve, OKP or an HMAC secret). An algorithm may only ever be verified with a key of its
own family, which is what makes the RS256 -> HS256 confusion attack impossible: an RSA
key is never handed to HMAC, whatever the token header says.

Needs PyJWT and cryptography, imported lazily (see :mod:`ratelimit._jwt`).
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

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
MAX_JWKS_BYTES = 1 << 20


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


class JWKSCache:
    """The keys published at a JWKS URL, fetched lazily and cached.

    Every fetch attempt, successful or not, is at most one per ``min_refresh_interval``, so
    neither a flood of unknown ``kid`` values nor a down IdP turns into a request storm.
    A failed fetch keeps the previous keys. One lock serialises fetches: concurrent
    callers wait for the fetch in flight instead of starting their own.

    Args:
        url: the JWKS endpoint (http or https).
        ttl: seconds before cached keys are fetched again.
        min_refresh_interval: minimum seconds between two fetch attempts.
        timeout: socket timeout for connect and each read; the whole body must arrive
            within it too (DNS resolution is not covered by any urllib timeout).
        clock: monotonic seconds, injectable for tests.
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
        # (keys, fetched_at) replaced as one tuple so lock-free readers see a consistent pair.
        self._state: tuple[list[VerificationKey] | None, float] = (None, 0.0)
        self._last_attempt: float | None = None

    @property
    def keys(self) -> list[VerificationKey]:
        """The cached keys (empty before the first successful fetch). Never fetches."""
        return self._state[0] or []

    def is_stale(self) -> bool:
        """True before the first successful fetch and once the keys are ``ttl`` old."""
        keys, fetched_at = self._state
        return keys is None or self._clock() - fetched_at >= self._ttl

    def may_refresh(self) -> bool:
        """True when a fetch attempt is allowed now (``min_refresh_interval`` has passed)."""
        last = self._last_attempt
        return last is None or self._clock() - last >= self._min_interval

    def refresh(self, *, wait: bool = True) -> None:
        """Fetch the keys now if allowed. Blocking I/O: call it from a thread in async code.

        With ``wait=False`` return at once when another thread is already fetching.
        """
        if not self._lock.acquire(blocking=wait):
            return
        try:
            # Re-checked under the lock: whoever waited for the fetch in flight is done.
            if not self.may_refresh():
                return
            try:
                self._state = (parse_jwks(self._fetch(), strict=False), self._clock())
            except Exception as exc:  # network, HTTP status, JSON, key material: all the same
                log.warning(
                    "JWKS fetch from %s failed, keeping %d cached key(s): %s", self.url, len(self.keys), exc
                )
            finally:
                # Stamped when the attempt ends, so callers arriving mid-fetch still ask to
                # refresh, queue on the lock and then find the fresh keys.
                self._last_attempt = self._clock()
        finally:
            self._lock.release()

    def _fetch(self) -> Any:
        deadline = time.monotonic() + self._timeout
        request = urllib.request.Request(
            self.url, headers={"Accept": "application/json", "User-Agent": "ambient-ratelimit"}
        )
        body = bytearray()
        try:
            response = urllib.request.urlopen(request, timeout=self._timeout)
        except urllib.error.HTTPError as exc:
            exc.close()  # it holds the response body open
            raise ValueError(f"HTTP {exc.code}") from None
        with response:
            while chunk := response.read1(65536):
                body += chunk
                if len(body) > MAX_JWKS_BYTES:
                    raise ValueError(f"JWKS larger than {MAX_JWKS_BYTES} bytes")
                # A server trickling bytes would otherwise reset the socket timeout forever.
                if time.monotonic() > deadline:
                    raise TimeoutError(f"JWKS body not received within {self._timeout}s")
        return json.loads(body)
