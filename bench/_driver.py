"""An in-process ASGI load driver: no sockets, no server, only the app under test.

Each request is a freshly built HTTP scope handed straight to the ASGI callable, with a
``receive`` that yields one ``http.request`` message and a ``send`` that records the
response status. ``concurrency`` asyncio tasks pull request numbers from a shared
counter until ``n_requests`` have been issued, so the app always has that many requests
in flight (what a busy server's event loop sees).
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import statistics
import time
from collections import Counter
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from _redis import ZERO_COUNTS, CommandCounts

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

SUBJECT_HEADER = b"x-user-id"
_REQUEST_MESSAGE: dict[str, Any] = {"type": "http.request", "body": b"", "more_body": False}


@dataclass
class RunResult:
    """What one driver run observed."""

    requests: int
    elapsed: float
    statuses: Counter[int] = field(default_factory=Counter)

    @property
    def rps(self) -> float:
        """Requests per second (0 when nothing was measured)."""
        return self.requests / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def denied_share(self) -> float:
        """Share of responses that were 429 Too Many Requests."""
        return self.statuses[429] / self.requests if self.requests else 0.0


V = TypeVar("V")


@dataclass
class VariantResult(Generic[V]):
    """Everything measured for one variant over all rounds (shared by every bench)."""

    variant: V
    runs: list[RunResult] = field(default_factory=list)
    commands: CommandCounts = ZERO_COUNTS
    fallbacks: int = 0  #: measured decisions made by the failure policy (backend failed)
    error: str | None = None

    @property
    def median_rps(self) -> float:
        """Median requests/s over the rounds."""
        return statistics.median(r.rps for r in self.runs) if self.runs else 0.0

    @property
    def requests(self) -> int:
        """Requests measured over all rounds."""
        return sum(r.requests for r in self.runs)

    @property
    def denied_share(self) -> float:
        """Share of 429 answers over all measured rounds."""
        n = self.requests
        return sum(r.statuses[429] for r in self.runs) / n if n else 0.0

    @property
    def unexpected_statuses(self) -> dict[int, int]:
        """Statuses other than 200 and 429, with their counts."""
        out: dict[int, int] = {}
        for r in self.runs:
            for status, count in r.statuses.items():
                if status not in (200, 429):
                    out[status] = out.get(status, 0) + count
        return out


def subject_headers(n_subjects: int) -> list[list[tuple[bytes, bytes]]]:
    """Pre-built raw header lists, one per subject ``user-0 .. user-(n-1)``."""
    return [
        [
            (b"host", b"bench.local"),
            (b"user-agent", b"bench-asgi"),
            (SUBJECT_HEADER, f"user-{i}".encode()),
        ]
        for i in range(n_subjects)
    ]


def make_scope(path: str, headers: list[tuple[bytes, bytes]]) -> Scope:
    """A new HTTP ``GET`` scope (apps mutate scopes, so every request gets its own)."""
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("bench.local", 80),
        "state": {},
        "extensions": {},
    }


async def _one_request(app: ASGIApp, scope: Scope) -> int:
    """Run one request through ``app``; return the response status (0 if none was sent)."""
    status = 0
    sent_request = False

    async def receive() -> Message:
        nonlocal sent_request
        if not sent_request:
            sent_request = True
            return dict(_REQUEST_MESSAGE)
        # A second receive() means "wait for the client to go away": it never does
        # while the response is being produced (callers cancel this wait when done).
        await asyncio.Event().wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = int(message["status"])

    await app(scope, receive, send)
    return status


async def drive(
    app: ASGIApp,
    n_requests: int,
    *,
    concurrency: int = 64,
    n_subjects: int = 500,
    path: str = "/items",
    single_subject: bool = False,
) -> RunResult:
    """Issue ``n_requests`` GETs to ``app`` from ``concurrency`` tasks; time the whole run.

    Request ``i`` comes from subject ``i % n_subjects`` (``user-0`` for every request
    when ``single_subject``). A garbage collection runs before the clock starts so that
    one variant does not pay for the garbage of the previous one.
    """
    headers = subject_headers(1 if single_subject else n_subjects)
    counter = itertools.count()
    statuses: Counter[int] = Counter()
    n_headers = len(headers)

    async def worker() -> None:
        while True:
            i = next(counter)
            if i >= n_requests:
                return
            statuses[await _one_request(app, make_scope(path, headers[i % n_headers]))] += 1

    gc.collect()
    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(min(concurrency, n_requests))))
    elapsed = time.perf_counter() - start
    return RunResult(requests=n_requests, elapsed=elapsed, statuses=statuses)
