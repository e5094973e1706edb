"""Which of the package's modules one request visits, in order, and how often it goes back up.

Runs one allowed ``GET /items`` through ``RateLimitMiddleware`` with a rule keyed on a
header (memory backend, warmed up first so caches are as in steady state) under
``sys.setprofile`` and prints the sequence of module-to-module calls inside ``ratelimit``.
A hop goes "up" when the callee's module imports the caller's (the import graph of
``tests/project/test_architecture.py``): a call back up the stack, which makes the flow
harder to follow.

    python bench/request_path.py
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from types import FrameType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "project"))
sys.path.insert(0, str(ROOT))

from test_architecture import GRAPH  # noqa: E402

from ratelimit import Limiter  # noqa: E402
from ratelimit.asgi import RateLimitMiddleware  # noqa: E402
from ratelimit.keys import header  # noqa: E402

PACKAGE = str(ROOT / "ratelimit")


async def app(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"ok"})


def module_of(frame: FrameType) -> str | None:
    filename = frame.f_code.co_filename
    if not filename.startswith(PACKAGE):
        return None
    rel = Path(filename).relative_to(PACKAGE).with_suffix("")
    parts = [p for p in rel.parts if p != "__init__"]
    return ".".join(parts)


async def one(wrapped: Any) -> None:
    scope = {
        "type": "http",
        "method": "GET",
        "path": "/items",
        "raw_path": b"/items",
        "query_string": b"",
        "headers": [(b"x-user", b"alice")],
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8000),
        "scheme": "http",
        "http_version": "1.1",
        "root_path": "",
    }

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        return None

    await wrapped(scope, receive, send)


def main() -> None:
    wrapped = RateLimitMiddleware(app, Limiter(), key=header("x-user"), limits={"/items": "1000000/minute"})
    loop = asyncio.new_event_loop()
    for _ in range(3):
        loop.run_until_complete(one(wrapped))
    hops: list[tuple[str, str]] = []

    def profile(frame: FrameType, event: str, arg: object) -> None:
        if event == "call":
            callee = module_of(frame)
            caller = module_of(frame.f_back) if frame.f_back is not None else None
            if callee is not None and caller is not None and callee != caller:
                hops.append((caller, callee))

    sys.setprofile(profile)
    loop.run_until_complete(one(wrapped))
    sys.setprofile(None)
    loop.close()
    modules = sorted({m for hop in hops for m in hop})
    up = [(a, b) for a, b in hops if a in GRAPH.get(b, set())]
    for a, b in hops:
        print(f"  {a} -> {b}{'   (up)' if (a, b) in up else ''}")
    print(f"modules visited: {len(modules)}: {', '.join(modules)}")
    print(f"hops between modules: {len(hops)}, back up the import graph: {len(up)}")


if __name__ == "__main__":
    main()
