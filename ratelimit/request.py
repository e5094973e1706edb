"""The neutral request every adapter translates into: what rules and key functions read."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Headers", "KeyFunc", "RequestInfo"]


class Headers:
    """Read-only, case-insensitive, multi-valued request headers (or gRPC metadata).

    Built without copying from what each server hands over: ASGI ``(bytes, bytes)``
    pairs, a WSGI environ, or gRPC metadata ``(str, str | bytes)`` pairs. Values are
    decoded as latin-1 (HTTP's byte-preserving choice); binary gRPC metadata (``-bin``
    keys) is skipped.
    """

    __slots__ = ("_environ", "_pairs")

    def __init__(self, pairs: Iterable[tuple[str | bytes, str | bytes]] = ()) -> None:
        # ASGI servers hand over a list: wrap it as it is (headers are read-only here).
        self._pairs = pairs if isinstance(pairs, list) else list(pairs)
        self._environ: Mapping[str, Any] | None = None

    @classmethod
    def from_environ(cls, environ: Mapping[str, Any]) -> Headers:
        """Headers of a WSGI request."""
        h = cls()
        h._environ = environ
        return h

    def get_all(self, name: str) -> list[str]:
        """Every value of header ``name``, in order."""
        lname = name.lower()
        if self._environ is not None:
            key = "HTTP_" + lname.upper().replace("-", "_")
            if lname == "content-type":
                key = "CONTENT_TYPE"
            value = self._environ.get(key)
            return [value] if isinstance(value, str) else []
        out = []
        bname = lname.encode("latin-1", "replace")
        for k, v in self._pairs:
            if isinstance(k, bytes):
                if k.lower() == bname:
                    out.append(v.decode("latin-1") if isinstance(v, bytes) else v)
            elif k.lower() == lname and isinstance(v, str):
                out.append(v)
        return out

    def get(self, name: str, default: str | None = None) -> str | None:
        """The first value of header ``name``, or ``default``."""
        lname = name.lower()
        found = self.first(lname, lname.encode("latin-1", "replace"))
        return default if found is None else found

    def first(self, lname: str, bname: bytes) -> str | None:
        """:meth:`get` for a name given lower-cased, as text and as latin-1 bytes.

        For key functions that ask for the same header on every request.
        """
        if self._environ is None:
            # ASGI pairs (bytes, as servers hand them over): stop at the first match.
            for k, v in self._pairs:
                if k.__class__ is bytes:
                    if k.lower() == bname:
                        return v.decode("latin-1") if isinstance(v, bytes) else v
                else:
                    break  # str pairs (gRPC metadata): the general path
            else:
                return None
        found = self.get_all(lname)
        return found[0] if found else None

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and bool(self.get_all(name))


@dataclass(slots=True)
class RequestInfo:
    """What a rate limit rule may look at, whatever the protocol.

    Attributes:
        protocol: ``"http"``, ``"websocket"`` or ``"grpc"``.
        method: the HTTP method (``"GET"``); gRPC calls are ``"POST"``.
        path: the URL path, or the gRPC full method ``"/pkg.Service/Method"``.
        headers: request headers, or gRPC invocation metadata.
        client: the immediate peer's IP address (not X-Forwarded-For), if known.
        host: the Host header or :authority, if known.
        native: the server's own object (ASGI scope, WSGI environ, gRPC context).
        memo: key function results for this request, so that a middleware rule and
            decorators keyed the same way verify a JWT once.
    """

    protocol: str
    method: str
    path: str
    headers: Headers
    client: str | None = None
    host: str | None = None
    native: Any = None
    memo: dict[int, tuple[Any, Any]] = field(default_factory=dict)


KeyFunc = Callable[[RequestInfo], "str | Awaitable[str | None] | None"]
"""What a key function is: ``fn(request_info) -> identity | None`` (or an awaitable of it)."""
