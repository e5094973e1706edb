"""Request conditions beyond path and method: hosts and headers.

One implementation serves the config file's ``match.headers`` / ``match.hosts`` and
the Envoy ``header_value_match`` action, so both read a request the same way.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

from .request import RequestInfo

__all__ = ["HeaderMatch", "HostPattern", "header_value"]

MatchKind = Literal["exact", "prefix", "suffix", "contains", "regex", "present"]
MATCH_KINDS: tuple[str, ...] = ("exact", "prefix", "suffix", "contains", "regex", "present")


def header_value(request: RequestInfo, name: str) -> str | None:
    """A header's value as Envoy sees it: several values joined by ``,``; pseudo-headers
    ``:path`` (with the query string, as Envoy's), ``:method`` and ``:authority`` from
    the request itself."""
    if name.startswith(":"):
        if name == ":path":
            query = _query_string(request.native)
            return f"{request.path}?{query}" if query else request.path
        if name == ":method":
            return request.method
        if name in (":authority", "host"):
            return request.host
    values = request.headers.get_all(name)
    return ",".join(values) if values else None


def _query_string(native: Any) -> str:
    """The query string of an ASGI scope, a WSGI environ or a Django request ("" for gRPC)."""
    native = getattr(native, "META", native)  # Django's HttpRequest: its WSGI environ
    if isinstance(native, dict):
        raw = native.get("query_string")  # ASGI: bytes
        if isinstance(raw, bytes):
            return raw.decode("latin-1")
        text = native.get("QUERY_STRING")  # WSGI: a latin-1 str
        if isinstance(text, str):
            return text
    return ""


@dataclass(frozen=True)
class HeaderMatch:
    """A condition on one header: ``HeaderMatch("x-tenant", "exact", "acme")``.

    ``kind`` is ``exact``, ``prefix``, ``suffix``, ``contains``, ``regex`` (a full
    match) or ``present`` (``value`` is then ``"true"``/``"false"``: whether the
    header must be there). ``invert`` negates the result; ``ignore_case`` compares
    case-insensitively. An absent header fails every kind but ``present: false``
    (and, inverted, passes them), as in Envoy.
    """

    name: str
    kind: MatchKind = "exact"
    value: str = ""
    invert: bool = False
    ignore_case: bool = False
    _regex: re.Pattern[str] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.kind not in MATCH_KINDS:
            raise ValueError(f"header match kind must be one of {MATCH_KINDS}, got {self.kind!r}")
        object.__setattr__(self, "name", self.name.lower())
        if self.kind == "regex":
            flags = re.IGNORECASE if self.ignore_case else 0
            try:
                object.__setattr__(self, "_regex", re.compile(self.value, flags))
            except re.error as exc:
                raise ValueError(f"header {self.name!r}: invalid regex {self.value!r}: {exc}") from None
        if self.kind == "present" and self.value not in ("true", "false"):
            raise ValueError(f"header {self.name!r}: present takes true or false, got {self.value!r}")

    def __call__(self, request: RequestInfo) -> bool:
        """Does ``request`` satisfy this condition?"""
        return self._test(header_value(request, self.name)) != self.invert

    def _test(self, actual: str | None) -> bool:
        if self.kind == "present":
            return (actual is not None) == (self.value == "true")
        if actual is None:
            return False
        if self._regex is not None:
            return self._regex.fullmatch(actual) is not None
        want = self.value
        if self.ignore_case:
            actual, want = actual.lower(), want.lower()
        if self.kind == "exact":
            return actual == want
        if self.kind == "prefix":
            return actual.startswith(want)
        if self.kind == "suffix":
            return actual.endswith(want)
        return want in actual


@dataclass(frozen=True)
class HostPattern:
    """A host name, or ``*.example.com`` for any subdomain; ``*`` alone is any host.

    The port is ignored and names compare case-insensitively.
    """

    pattern: str
    _regex: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        text = self.pattern.strip().lower()
        if not text or any(c.isspace() or c in "/?#" for c in text):
            raise ValueError(f"not a host name pattern: {self.pattern!r}")
        regex = ".*".join(re.escape(part) for part in text.split("*"))
        object.__setattr__(self, "_regex", re.compile(regex))

    def __call__(self, request: RequestInfo) -> bool:
        """Is ``request`` addressed to a host this pattern names?"""
        host = request.host
        if not host:
            return False
        host = host.lower()
        if host.startswith("["):  # [::1]:8000
            host = host[: host.find("]") + 1]
        elif host.count(":") == 1:
            host = host.partition(":")[0]
        return self._regex.fullmatch(host) is not None
