"""A small HTTP/1.1 GET whose every socket operation shares one deadline (JWKS fetches).

urllib's ``timeout`` bounds each socket read, not the request: an IdP that trickles one
header line every 0.2 s could hold a fetch for as long as it liked. Here name
resolution, connect, TLS handshake, request, status line, headers and body share one
deadline; http.client parses the answer from a reader that waits only for what is left.
"""

from __future__ import annotations

import base64
import http.client
import io
import socket
import ssl
import time
import urllib.parse
import urllib.request
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

__all__ = ["MAX_JWKS_BYTES", "http_get"]

MAX_JWKS_BYTES = 1 << 20
"""The largest JWKS body accepted; a bigger one fails the fetch."""

_HEADER_BYTES = 64 * 1024  # status line and headers, read on top of the body cap
_GET_HEADERS = b"Accept: application/json\r\nUser-Agent: ambient-ratelimit\r\nConnection: close\r\n\r\n"


# ---------------------------------------------------------------------------- one fetch


class _Deadline:
    """One fetch's budget: every socket operation is given only what is left of it."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._at = time.monotonic() + seconds

    def left(self) -> float:
        """Seconds left; ``TimeoutError`` once the budget is spent."""
        left = self._at - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no complete answer within {self.seconds:g}s")
        return left


class _DeadlineReader(io.RawIOBase):
    """The socket as http.client reads it, each recv bounded by what is left of the deadline.

    A socket timeout alone restarts with every recv, so a server sending a byte now and
    then would hold the fetch forever. At most ``limit`` bytes are read in all.
    """

    def __init__(self, sock: socket.socket, deadline: _Deadline, limit: int) -> None:
        super().__init__()
        self._sock = sock
        self._deadline = deadline
        self._left = limit

    def readable(self) -> bool:
        """Always: this is a read-only stream."""
        return True

    def readinto(self, buffer: WriteableBuffer, /) -> int:
        """One recv into ``buffer``, waiting at most until the deadline."""
        self._sock.settimeout(self._deadline.left())
        received = self._sock.recv_into(buffer)
        self._left -= received
        if self._left < 0:
            raise ValueError(f"JWKS larger than {MAX_JWKS_BYTES} bytes")
        return received


class _ResponseSocket:
    """All :class:`http.client.HTTPResponse` asks of a socket: ``makefile('rb')``."""

    def __init__(self, reader: _DeadlineReader) -> None:
        self._reader = reader

    def makefile(self, mode: str) -> io.BufferedReader:
        """A buffered reader over the deadline-bound socket."""
        return io.BufferedReader(self._reader)


def _resolve(host: str, port: int) -> list[tuple[Any, ...]]:
    """The addresses of ``host``. Blocking, and no socket timeout can interrupt it."""
    return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)


def _connect(host: str, port: int, deadline: _Deadline) -> socket.socket:
    # The resolver is checked against the budget only once it returns; callers stop
    # waiting when the budget is spent (JWKSCache), so a hung resolver costs a thread, not them.
    addresses = _resolve(host, port)
    error = OSError(f"{host} has no address")
    for family, kind, proto, _, address in addresses:
        sock = socket.socket(family, kind, proto)
        try:
            sock.settimeout(deadline.left())
            sock.connect(address)
            return sock
        except OSError as exc:  # refused or unreachable: the next address, within the same budget
            sock.close()
            error = exc
    raise error


def _authority(parts: urllib.parse.SplitResult, *, with_port: bool = False) -> bytes:
    """``host[:port]`` as the Host header and CONNECT name it."""
    host = parts.hostname or ""
    try:
        name = host.encode("ascii")
    except UnicodeEncodeError:
        name = host.encode("idna")
    if b":" in name:
        name = b"[" + name + b"]"
    port = parts.port
    if port is None and with_port:
        port = 443 if parts.scheme == "https" else 80
    return name if port is None else name + b":%d" % port


def _proxy(parts: urllib.parse.SplitResult) -> urllib.parse.SplitResult | None:
    """The proxy the environment names for this URL (``https_proxy``, ``no_proxy``...), as
    urllib, which fetched the JWKS before, would use it."""
    proxy = urllib.request.getproxies().get(parts.scheme)
    if not proxy or urllib.request.proxy_bypass(parts.hostname or ""):
        return None
    found = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    if found.scheme != "http" or not found.hostname:
        raise ValueError(f"unsupported proxy {proxy!r}: only http:// proxies are")
    return found


def _proxy_authorization(proxy: urllib.parse.SplitResult | None) -> bytes:
    if proxy is None or proxy.username is None:
        return b""
    user, password = urllib.parse.unquote(proxy.username), urllib.parse.unquote(proxy.password or "")
    return b"Proxy-Authorization: Basic " + base64.b64encode(f"{user}:{password}".encode()) + b"\r\n"


def _request(parts: urllib.parse.SplitResult, proxy: urllib.parse.SplitResult | None) -> bytes:
    """The GET; ``proxy`` is given for a plain-http proxy, which is sent the whole URL."""
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if any(char <= " " or char == "\x7f" for char in path):
        raise ValueError("the JWKS URL path holds whitespace or control characters")
    authority = _authority(parts)
    target = (b"http://" + authority if proxy else b"") + path.encode("ascii")
    return b"GET %s HTTP/1.1\r\nHost: %s\r\n%s%s" % (
        target,
        authority,
        _proxy_authorization(proxy),
        _GET_HEADERS,
    )


def _response(sock: socket.socket, deadline: _Deadline, limit: int, method: str) -> http.client.HTTPResponse:
    # http.client parses status, headers, chunked and Content-Length framing; every byte
    # it reads comes through the deadline-bound reader.
    reader = _ResponseSocket(_DeadlineReader(sock, deadline, limit))
    response = http.client.HTTPResponse(cast(socket.socket, reader), method=method)
    response.begin()
    return response


def _tunnel(
    sock: socket.socket, parts: urllib.parse.SplitResult, proxy: urllib.parse.SplitResult, deadline: _Deadline
) -> None:
    authority = _authority(parts, with_port=True)
    sock.settimeout(deadline.left())
    sock.sendall(
        b"CONNECT %s HTTP/1.1\r\nHost: %s\r\n%s\r\n" % (authority, authority, _proxy_authorization(proxy))
    )
    # Nothing is buffered past the proxy's answer: the server speaks only after the TLS hello.
    status = _response(sock, deadline, _HEADER_BYTES, "CONNECT").status
    if status != 200:
        raise OSError(f"the proxy refused the tunnel: HTTP {status}")


def _read_body(sock: socket.socket, deadline: _Deadline) -> bytes:
    with _response(sock, deadline, MAX_JWKS_BYTES + _HEADER_BYTES, "GET") as response:
        if response.status != 200:
            redirect = 300 <= response.status < 400
            hint = " (redirects are not followed: configure the final URL)" if redirect else ""
            raise ValueError(f"HTTP {response.status}{hint}")
        if response.length is not None and response.length > MAX_JWKS_BYTES:
            raise ValueError(f"JWKS larger than {MAX_JWKS_BYTES} bytes")
        body = bytearray()
        while chunk := response.read1(65536):
            body += chunk
            if len(body) > MAX_JWKS_BYTES:
                raise ValueError(f"JWKS larger than {MAX_JWKS_BYTES} bytes")
        if response.length:
            raise ValueError("the connection closed before the announced Content-Length")
    return bytes(body)


def http_get(url: str, timeout: float) -> bytes:
    """The body of a ``200`` answer to ``GET url``, all of it within ``timeout`` seconds.

    Name resolution, connect, TLS handshake, request, status line, headers and body share
    one deadline, and every socket operation waits only for what is left of it, so a
    server that trickles its answer cannot hold the fetch past it. (The resolver is the
    exception: nothing can interrupt it, so it is checked when it returns.) https uses
    :func:`ssl.create_default_context` (system CAs, hostname checked). An http proxy from
    the environment (``https_proxy``, ``http_proxy``, ``no_proxy``) is used as urllib
    would, within the same deadline. Redirects are not followed, any status but 200 is an
    error, and the body may be at most :data:`MAX_JWKS_BYTES`.
    """
    deadline = _Deadline(timeout)
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname
    if parts.scheme not in ("http", "https") or not host:
        raise ValueError(f"not an http(s) URL: {url!r}")
    tls = parts.scheme == "https"
    proxy = _proxy(parts)
    try:
        if proxy is not None:
            sock = _connect(proxy.hostname or "", proxy.port or 80, deadline)
        else:
            sock = _connect(host, parts.port or (443 if tls else 80), deadline)
        try:
            if tls:
                if proxy is not None:
                    _tunnel(sock, parts, proxy, deadline)
                # CPython bounds the whole handshake by the timeout set when it starts.
                sock.settimeout(deadline.left())
                sock = ssl.create_default_context().wrap_socket(sock, server_hostname=host)
            sock.settimeout(deadline.left())  # sendall: a total for all the data
            sock.sendall(_request(parts, None if tls else proxy))
            return _read_body(sock, deadline)
        finally:
            sock.close()
    except TimeoutError as exc:  # socket timeouts say only "timed out"
        raise TimeoutError(f"no complete answer within {timeout:g}s") from exc
