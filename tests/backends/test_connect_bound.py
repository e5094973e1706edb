"""A Redis connect that never completes costs at most the timeout budget.

Two local stand-ins for a server that cannot answer, with real sockets and no Redis:

- a *full backlog*: a listening socket that never accepts, its accept queue filled, so
  the kernel drops further SYNs and a connect stays pending (a blackholed address,
  without relying on the network to drop packets);
- a *silent server*: the kernel completes the TCP handshake, but nothing ever answers
  the login (AUTH, SELECT) written on it.

In each case ``ahit`` (asyncio and uvloop) and ``hit`` must be answered by the failure
policy (``fallback=True``) well within a second at ``timeout=0.05``.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import pytest

from ratelimit import Decision, Limiter
from ratelimit.backends.redis._wire import BackendTimeout, Endpoint, open_connection

pytestmark = pytest.mark.timeout(60)

BUDGET = 0.05
BOUND = 1.0  # the budget (and a few of them for connect plus login) with a shared machine's slack
ATTEMPTS = 3  # the first decision connects; the next ones meet the breaker or connect again


@contextlib.contextmanager
def full_backlog() -> Iterator[int]:
    """The port of a listener that never accepts, whose accept queue is full: connects hang."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    fillers: list[socket.socket] = []
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        # Fill the accept queue: once a connect is left pending, the next ones are too.
        for _ in range(16):
            filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            filler.setblocking(False)
            fillers.append(filler)
            filler.connect_ex(("127.0.0.1", port))
            if not _connects_at_once(filler):
                break
        else:
            pytest.skip("this kernel accepts connections beyond the listen backlog")
        yield port
    finally:
        for s in fillers:
            s.close()
        listener.close()


def _connects_at_once(sock: socket.socket) -> bool:
    """True when ``sock``'s connect completes within 0.2 s (the kernel took it into the queue)."""
    import select

    _, writable, _ = select.select([], [sock], [], 0.2)
    return bool(writable) and sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0


@contextlib.contextmanager
def silent_server() -> Iterator[int]:
    """The port of a server whose kernel completes connects, and that never sends a byte."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)  # never accepted: the kernel's handshake is all a client gets
        yield listener.getsockname()[1]
    finally:
        listener.close()


# Each case: how the server misbehaves, and the URL that makes the client wait for it.
CASES: dict[str, tuple[Callable[[], contextlib.AbstractContextManager[int]], str]] = {
    "connect never completes": (full_backlog, "redis://127.0.0.1:{port}"),
    "AUTH never answered": (silent_server, "redis://:secret@127.0.0.1:{port}"),
    "SELECT never answered": (silent_server, "redis://127.0.0.1:{port}/3"),
}


def _check(answers: list[tuple[Decision, float]]) -> None:
    for decision, seconds in answers:
        assert decision.fallback, decision
        assert decision.allowed  # failure_mode="open"
        assert seconds < BOUND, f"answered after {seconds:.3f}s"


async def _ahits(url: str) -> list[tuple[Decision, float]]:
    limiter = Limiter(url, timeout=BUDGET)
    answers = []
    try:
        for _ in range(ATTEMPTS):
            started = time.perf_counter()
            decision = await limiter.ahit("connect-bound", "10/minute")
            answers.append((decision, time.perf_counter() - started))
    finally:
        await asyncio.wait_for(limiter.aclose(), BOUND)
    return answers


def _run_on(loop_name: str, main: Coroutine[Any, Any, Any]) -> Any:
    if loop_name == "uvloop":
        uvloop = pytest.importorskip("uvloop", reason="uvloop comes with uvicorn[standard], in the dev extra")
        return uvloop.run(main)
    return asyncio.run(main)


@pytest.mark.parametrize("loop_name", ["asyncio", "uvloop"])
@pytest.mark.parametrize("case", list(CASES))
def test_ahit_is_bounded(case: str, loop_name: str) -> None:
    """ahit answers by the failure policy within the bound when the server never completes the connect."""
    server, url = CASES[case]
    with server() as port:
        _check(_run_on(loop_name, _ahits(url.format(port=port))))


@pytest.mark.parametrize("case", list(CASES))
def test_hit_is_bounded(case: str) -> None:
    """hit (the sync path) answers by the failure policy within the bound too."""
    server, url = CASES[case]
    with server() as port:
        limiter = Limiter(url.format(port=port), timeout=BUDGET)
        answers = []
        try:
            for _ in range(ATTEMPTS):
                started = time.perf_counter()
                decision = limiter.hit("connect-bound", "10/minute")
                answers.append((decision, time.perf_counter() - started))
        finally:
            limiter.close()
        _check(answers)


# -- the wire itself: every address, and the whole login, within one budget each ------------

WIRE_BUDGET = 0.3  # long enough that a shared machine's jitter cannot pass for a second budget
WIRE_BOUND = 0.42  # one budget and slack; two budgets (0.6) is what the bound rules out


async def _opening(endpoint: Endpoint) -> tuple[BaseException | None, float]:
    started = time.perf_counter()
    try:
        conn = await open_connection(endpoint, WIRE_BUDGET)
    except BaseException as exc:
        return exc, time.perf_counter() - started
    conn.close()
    return None, time.perf_counter() - started


def test_every_address_of_a_name_shares_one_budget() -> None:
    """A name whose every address hangs costs one budget in all, not one per address."""
    with full_backlog() as first, full_backlog() as second:

        async def main() -> tuple[BaseException | None, float]:
            async def two_addresses(host: str, port: int, **_: Any) -> list[tuple[Any, ...]]:
                tcp = (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "")
                return [(*tcp, ("127.0.0.1", first)), (*tcp, ("127.0.0.1", second))]

            asyncio.get_running_loop().getaddrinfo = two_addresses  # type: ignore[method-assign]
            return await _opening(Endpoint(host="redis.test", port=6379))

        error, seconds = asyncio.run(main())
    assert isinstance(error, BackendTimeout), error
    assert seconds < WIRE_BOUND, f"gave up after {seconds:.3f}s"


@contextlib.contextmanager
def answers_once(delay: float) -> Iterator[int]:
    """A server that answers the first command with +OK after ``delay``, then never again."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        with contextlib.suppress(OSError):
            conn, _ = listener.accept()
            with conn:
                conn.recv(65536)
                if not stop.wait(delay):
                    conn.sendall(b"+OK\r\n")
                stop.wait()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        listener.close()
        thread.join(5)


@pytest.mark.parametrize("loop_name", ["asyncio", "uvloop"])
def test_the_whole_login_shares_one_budget(loop_name: str) -> None:
    """AUTH answered late and SELECT never: the login gives up one budget after it began."""
    with answers_once(delay=WIRE_BUDGET * 2 / 3) as port:
        endpoint = Endpoint(host="127.0.0.1", port=port, password="secret", db=3)
        error, seconds = _run_on(loop_name, _opening(endpoint))
    assert isinstance(error, BackendTimeout), error
    assert seconds < WIRE_BOUND, f"gave up after {seconds:.3f}s"
