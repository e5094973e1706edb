"""What the limiter adds to one request, in-process and sequential: microseconds over bare.

Issue 10's in-process targets, measured the way they are stated: a Starlette app driven
without a server or sockets, one request at a time, memory backend, 500 subjects,
a limit high enough that every request is allowed. Variants are interleaved over rounds
(the order rotates); each round times ``--requests`` requests per variant after a
warm-up; the table shows the median microseconds per request, the median of per-round
differences to the bare app, and the status counts (every row must be all 200).

    python bench/bench_inprocess.py
    python bench/bench_inprocess.py --rounds 7 --requests 20000
    python bench/bench_inprocess.py --quick

The machines here are shared and noisy: the differences matter, not the absolute times.
For a load-independent figure, run one variant under ``valgrind --tool=callgrind`` with
two request counts and divide the difference in instructions (see bench/README.md).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

_ROOT = Path(__file__).resolve().parent.parent
sys.dont_write_bytecode = True  # nothing written into the repository
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

ASGIApp = Callable[[MutableMapping[str, Any], Any, Any], Awaitable[None]]
RATE = "1000000/minute"
SUBJECTS = 500


def _starlette(endpoint: Callable[..., Any] | None = None) -> ASGIApp:
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    async def items(request: Any) -> PlainTextResponse:
        return PlainTextResponse("ok")

    return Starlette(routes=[Route("/items", endpoint or items)])


def _tokens() -> tuple[bytes, list[bytes]]:
    """An RS256 key pair's public PEM and one token per subject."""
    import jwt
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    exp = int(time.time()) + 3600
    tokens = [
        ("Bearer " + jwt.encode({"sub": f"user-{i}", "exp": exp}, key, algorithm="RS256")).encode()
        for i in range(SUBJECTS)
    ]
    return pem, tokens


def build(name: str, pem: bytes) -> ASGIApp:
    import ratelimit
    from ratelimit.asgi import RateLimitMiddleware
    from ratelimit.keys import header, jwt_subject

    if name == "bare":
        return _starlette()
    limiter = ratelimit.Limiter()
    if name == "middleware-rule":
        return RateLimitMiddleware(_starlette(), limiter, key=header("x-user-id"), limits={"/items": RATE})
    if name == "decorator":
        from starlette.responses import PlainTextResponse

        @limiter.limit(RATE, key=header("x-user-id"))
        async def items(request: Any) -> PlainTextResponse:
            return PlainTextResponse("ok")

        return RateLimitMiddleware(_starlette(items), limiter)
    if name == "jwt-subject":
        key = jwt_subject(key=pem)
        return RateLimitMiddleware(_starlette(), limiter, key=key, limits={"/items": RATE})
    raise SystemExit(f"unknown variant {name!r}")


VARIANTS = ("bare", "middleware-rule", "decorator", "jwt-subject")


async def drive(app: ASGIApp, n: int, tokens: list[bytes], statuses: Counter[int]) -> float:
    """Seconds for ``n`` sequential requests (subject i mod 500, its token too)."""
    message = {"type": "http.request", "body": b"", "more_body": False}

    async def receive() -> dict[str, Any]:
        return message

    status = [0]

    async def send(m: MutableMapping[str, Any]) -> None:
        if m["type"] == "http.response.start":
            status[0] = m["status"]

    users = [f"user-{i}".encode() for i in range(SUBJECTS)]
    started = time.perf_counter()
    for i in range(n):
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": "/items",
            "raw_path": b"/items",
            "query_string": b"",
            "root_path": "",
            "headers": [
                (b"host", b"bench"),
                (b"x-user-id", users[i % SUBJECTS]),
                (b"authorization", tokens[i % SUBJECTS]),
            ],
            "client": ("127.0.0.1", 40000),
            "server": ("bench", 80),
        }
        await app(scope, receive, send)
        statuses[status[0]] += 1
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--requests", type=int, default=10000, help="measured requests per variant per round")
    p.add_argument("--quick", action="store_true", help="smoke size: 1 round of 500 requests")
    args = p.parse_args(argv)
    rounds, n = (1, 500) if args.quick else (args.rounds, args.requests)

    pem, tokens = _tokens()
    apps = {name: build(name, pem) for name in VARIANTS}
    per_request: dict[str, list[float]] = {name: [] for name in VARIANTS}
    statuses: dict[str, Counter[int]] = {name: Counter() for name in VARIANTS}
    for r in range(rounds):
        order = VARIANTS[r % len(VARIANTS) :] + VARIANTS[: r % len(VARIANTS)]
        for name in order:
            warm: Counter[int] = Counter()
            asyncio.run(drive(apps[name], max(SUBJECTS, n // 10), tokens, warm))  # every token verified once
            gc.collect()
            elapsed = asyncio.run(drive(apps[name], n, tokens, statuses[name]))
            per_request[name].append(elapsed / n * 1e6)

    print(f"in-process, sequential, memory backend: {rounds} round(s) x {n} requests, {SUBJECTS} subjects")
    print(f"{'variant':<18} {'us/request':>11} {'added us':>9}  statuses")
    bare = per_request["bare"]
    for name in VARIANTS:
        times = per_request[name]
        added = statistics.median(t - b for t, b in zip(times, bare, strict=True))
        counts = " ".join(f"{code}:{count}" for code, count in sorted(statuses[name].items()))
        flag = "" if set(statuses[name]) == {200} else "  INVALID (not every request allowed)"
        print(f"{name:<18} {statistics.median(times):>11.1f} {added:>9.1f}  {counts}{flag}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
