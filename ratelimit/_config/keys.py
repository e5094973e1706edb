"""Key expressions in config files (``claim:sub``, ``ip``, ``[header:x-tenant, ip]``) -> key functions."""

from __future__ import annotations

import re
from typing import Any

from .._core.reader import Field
from ..keys import api_key, client_ip, compose, constant, header, jwt_claim
from ..request import RequestInfo

__all__ = ["HEADER_NAME", "KeyMaker"]

HEADER_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")
_EXPECTED = "a key: global, ip, header:NAME, claim:NAME, api_key:NAME, path, method, host"


class _RequestPart:
    """A key from the request itself: its path, method or host."""

    def __init__(self, part: str) -> None:
        self.part = part

    def __repr__(self) -> str:
        return self.part

    def __call__(self, request: RequestInfo) -> str | None:
        value: str | None = getattr(request, self.part)
        return value or None


class KeyMaker:
    """Key expressions (``claim:sub``, ``ip``, ``[claim:tenant, ip]``) -> key functions, one object each."""

    def __init__(self, proxies: int, claim_headers: dict[str, str], verifier: Any) -> None:
        self.proxies, self.claim_headers, self.verifier = proxies, claim_headers, verifier
        self.made: dict[str, Any] = {}

    def read(self, f: Field) -> Any:
        if isinstance(f.value, list):
            parts = [self.read(g) for g in f.items() or []]
            if not parts or any(p is None for p in parts):
                if not parts:
                    f.fail("a non-empty list of keys")
                return None
            return parts[0] if len(parts) == 1 else compose(*parts)
        text = f.string(
            expected="a key: global, ip, header:NAME, claim:NAME, api_key:NAME, path, method, host"
        )
        if text is None:
            return None
        try:
            return self.make(text.strip())
        except ValueError as exc:
            f.fail(_EXPECTED, str(exc))
            return None

    def make(self, text: str) -> Any:
        if text in self.made:
            return self.made[text]
        kind, _, arg = text.partition(":")
        if kind in ("global", "ip", "path", "method", "host") and arg:
            raise ValueError(f"{kind!r} takes no argument")
        if kind in ("header", "claim", "api_key") and not HEADER_NAME.fullmatch(arg):
            raise ValueError(f"{kind}: needs a name after the colon")
        if kind == "global":
            key: Any = constant()
        elif kind == "ip":
            key = client_ip(self.proxies)
        elif kind in ("path", "method", "host"):
            key = _RequestPart(kind)
        elif kind == "header":
            key = header(arg)
        elif kind == "api_key":
            key = api_key(arg)
        elif kind == "claim":
            trusted = self.claim_headers.get(arg)
            if trusted is None and self.verifier is None:
                raise ValueError(f"claim {arg!r} needs identity.jwt, or identity.claim_headers.{arg}")
            key = jwt_claim(arg, trusted_header=trusted, verifier=self.verifier)
        else:
            raise ValueError(f"unknown key kind {kind!r}")
        self.made[text] = key
        return key
