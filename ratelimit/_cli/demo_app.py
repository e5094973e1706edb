"""The demo's served app: a real HTTP server with the WSGI middleware, hit over the loopback.

Uses only the standard library (wsgiref, urllib), so ``pip install ambient-ratelimit``
followed by ``ratelimit demo`` works with no extras.
"""

from __future__ import annotations

import threading
import urllib.error
import urllib.request
from collections.abc import Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from ..keys import header
from ..limiter import Limiter
from ..rules import Rule
from ..wsgi import RateLimitMiddleware

__all__ = ["serve_demo_app"]

_SHOWN = ("RateLimit-Policy", "RateLimit", "Retry-After")
_REQUESTS = (("alice", 4), ("bob", 1))


def _app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"here are your items\n"]


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # the demo prints its own lines
        pass


def _get(url: str, user: str) -> tuple[int, dict[str, str], str]:
    req = urllib.request.Request(url, headers={"X-User": user})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, dict(resp.headers.items()), resp.read().decode()
    except urllib.error.HTTPError as err:
        with err:
            return err.code, dict(err.headers.items()), err.read().decode()


def serve_demo_app(limiter: Limiter) -> None:
    """Serve a tiny app limited to 3 requests per 10 s per ``X-User``; print what clients get."""
    rule = Rule.of("items", "3/10s", header("x-user"), paths="/items", methods="GET")
    app = RateLimitMiddleware(_app, limiter, [rule], legacy_headers=False)
    server = make_server("127.0.0.1", 0, app, handler_class=_Quiet)
    thread = threading.Thread(target=server.serve_forever, name="ratelimit-demo", daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_port}/items"
    print("\n0. A served app (a real HTTP server on the loopback): GET /items, 3 per 10 s per X-User header")
    try:
        for user, count in _REQUESTS:
            for n in range(1, count + 1):
                status, hdrs, body = _get(url, user)
                print(f"\n  GET /items  X-User: {user}  (#{n})  ->  {status}")
                for name in _SHOWN:
                    if name in hdrs:
                        print(f"    {name}: {hdrs[name]}")
                if status == 429:
                    print(f"    body: {body.strip()[:110]}...")
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
