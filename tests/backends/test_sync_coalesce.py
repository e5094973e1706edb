"""The sync Redis path: lean connections, threads' checks coalesced into shared script calls.

Against real servers started by the suite: exact counts across threads, fewer script
calls than checks, NOSCRIPT in a batch, a Redis killed or paused while threads wait
(every thread answered in bounded time, with the right error kind), a forked child,
and the URLs and topologies that stay on redis-py.
"""

from __future__ import annotations

import json
import os
import select
import threading
import time
import uuid
import warnings
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ratelimit import Decision, Limiter

BUDGET = 0.05


def _prefix() -> str:
    return f"sc{uuid.uuid4().hex[:10]}"


class _Kinds:
    """A metrics sink that records the backend error kinds."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    def decision(self, rule: str, result: str, adapter: str) -> None:
        pass

    def backend_latency(self, backend: str, seconds: float) -> None:
        pass

    def backend_phases(self, backend: str, queued: float, in_backend: float) -> None:
        pass

    def backend_error(self, backend: str, kind: str) -> None:
        self.errors.append(kind)

    def deny_cache_hit(self, rule: str) -> None:
        pass

    def config_reload(self, result: str) -> None:
        pass


def _script_calls(server: Any) -> int:
    with server.client() as client:
        stats = client.info("commandstats")
    return sum(stats.get(name, {}).get("calls", 0) for name in ("cmdstat_evalsha", "cmdstat_eval"))


def _threads(count: int, work: Callable[[int], list[tuple[Decision, float]]]) -> list[tuple[Decision, float]]:
    """Run ``work(i)`` in ``count`` threads started together; every thread must finish (no hang)."""
    barrier = threading.Barrier(count)
    out: list[tuple[Decision, float]] = []
    lock = threading.Lock()

    def run(i: int) -> None:
        barrier.wait()
        mine = work(i)
        with lock:
            out.extend(mine)

    pool = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(count)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in pool), "a thread hung"
    return out


def _timed(limiter: Limiter, user: str, rate: str, count: int) -> list[tuple[Decision, float]]:
    answers = []
    for _ in range(count):
        start = time.perf_counter()
        decision = limiter.hit(user, rate)
        answers.append((decision, time.perf_counter() - start))
    return answers


# -- healthy -------------------------------------------------------------------------


def test_threads_share_script_calls_and_admit_exactly_n(fresh_redis: Any) -> None:
    """16 threads x 40 hits on a limit of 100: exactly 100 admitted, no fallback, fewer calls than hits."""
    with Limiter(fresh_redis.url, prefix=_prefix(), timeout=2.0, deny_cache=False) as limiter:
        assert limiter.backend._lean  # type: ignore[attr-defined]
        limiter.hit("warm", "10/day")
        before = _script_calls(fresh_redis)
        answers = _threads(16, lambda i: _timed(limiter, "hot", "100/day", 40))
        calls = _script_calls(fresh_redis) - before - 0
        assert limiter.peek("hot", "100/day").remaining == 0
    assert sum(d.allowed for d, _ in answers) == 100
    assert not any(d.fallback for d, _ in answers)
    assert calls < len(answers), (calls, len(answers))


def test_coalescing_off_is_one_call_per_check(fresh_redis: Any) -> None:
    """coalesce=False: every sync check is its own script call, still exact across threads."""
    with Limiter(fresh_redis.url, prefix=_prefix(), timeout=2.0, coalesce=False, deny_cache=False) as limiter:
        limiter.hit("warm", "10/day")
        before = _script_calls(fresh_redis)
        answers = _threads(8, lambda i: _timed(limiter, "hot", "30/day", 10))
        calls = _script_calls(fresh_redis) - before
    assert sum(d.allowed for d, _ in answers) == 30
    assert not any(d.fallback for d, _ in answers)
    assert calls == len(answers)


def test_noscript_in_a_batch(fresh_redis: Any) -> None:
    """After SCRIPT FLUSH, a burst of threads (batched calls answered NOSCRIPT) is still exact."""
    with Limiter(fresh_redis.url, prefix=_prefix(), timeout=2.0, deny_cache=False) as limiter:
        for _ in range(3):
            with fresh_redis.client() as client:
                client.script_flush()
            user = f"u{uuid.uuid4().hex[:6]}"
            answers = _threads(8, lambda i, user=user: _timed(limiter, user, "25/day", 5))  # type: ignore[misc]
            assert sum(d.allowed for d, _ in answers) == 25
            assert not any(d.fallback for d, _ in answers)


_REQUESTS = st.lists(
    st.tuples(st.integers(0, 2), st.integers(1, 4), st.booleans()),  # (user, cost, commit)
    min_size=1,
    max_size=60,
)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(requests=_REQUESTS, limits=st.lists(st.integers(1, 12), min_size=3, max_size=3))
def test_concurrent_mixed_costs_match_the_counters(
    redis_url: str, requests: list[Any], limits: list[int]
) -> None:
    """Any mix of hits and peeks with costs, from 6 threads: admitted cost = the counter, and
    every denied hit would not have fit even at the end (counters only grow)."""
    prefix = _prefix()
    decided: list[tuple[int, int, bool, Decision]] = []
    lock = threading.Lock()
    with Limiter(redis_url, prefix=prefix, timeout=2.0, deny_cache=False) as limiter:

        def work(i: int) -> list[tuple[Decision, float]]:
            for user, cost, commit in requests[i::6]:
                rate = f"{limits[user]}/day"
                d = (limiter.hit if commit else limiter.peek)(f"u{user}", rate, cost)
                with lock:
                    decided.append((user, cost, commit, d))
            return []

        _threads(6, work)
        remaining = [limiter.peek(f"u{u}", f"{limits[u]}/day").remaining for u in range(3)]
    assert len(decided) == len(requests)
    assert not any(d.fallback for *_, d in decided)
    for user in range(3):
        admitted = sum(c for u, c, commit, d in decided if u == user and commit and d.allowed)
        assert admitted == limits[user] - remaining[user]
        for u, cost, commit, d in decided:
            if u == user and commit and not d.allowed:
                assert cost > limits[user] - admitted


# -- faults ----------------------------------------------------------------------------


def test_redis_killed_while_threads_wait(fresh_redis: Any) -> None:
    """Redis killed under 8 hammering threads: every check answered (policy, kind 'connection')
    in bounded time, none hangs; after a restart decisions come from Redis again."""
    kinds = _Kinds()
    with Limiter(
        fresh_redis.url, prefix=_prefix(), failure_mode="closed", deny_cache=False, metrics=kinds
    ) as limiter:
        limiter._breaker._base = 0.02  # type: ignore[attr-defined]  # probe often: more checks reach the dead server
        assert not limiter.hit("warm", "10/day").fallback
        stop = threading.Event()

        def work(i: int) -> list[tuple[Decision, float]]:
            answers = []
            while not stop.is_set():
                answers += _timed(limiter, f"k{i}", "1000000/day", 1)
            return answers

        killer = threading.Timer(0.3, fresh_redis.kill)
        stopper = threading.Timer(1.0, stop.set)
        killer.start()
        stopper.start()
        answers = _threads(8, work)
        killer.join()
        fallbacks = [(d, t) for d, t in answers if d.fallback]
        assert fallbacks, "no check noticed the dead server"
        assert all(not d.allowed for d, _ in fallbacks)  # closed
        assert max(t for _, t in answers) < 1.0
        assert kinds.errors and set(kinds.errors) <= {"connection", "timeout"}
        assert "connection" in kinds.errors
        fresh_redis.restart()
        end = time.monotonic() + 10
        while limiter.hit("recovery", "1000000/day").fallback:
            assert time.monotonic() < end, "never recovered"
            time.sleep(0.02)
        answers = _threads(8, lambda i: _timed(limiter, "after", "20/day", 5))
    assert sum(d.allowed for d, _ in answers) == 20
    assert not any(d.fallback for d, _ in answers)


def test_paused_redis_bounds_every_waiting_thread(fresh_redis: Any) -> None:
    """A paused Redis (no answers): the leader times out after the budget, queued threads
    after at most about two budgets; kind 'timeout'; no thread hangs."""
    kinds = _Kinds()
    with Limiter(fresh_redis.url, prefix=_prefix(), deny_cache=False, metrics=kinds) as limiter:
        assert not limiter.hit("warm", "10/day").fallback
        fresh_redis.pause()
        try:
            answers = _threads(8, lambda i: _timed(limiter, f"p{i}", "1000/day", 3))
        finally:
            fresh_redis.resume()
    latencies = sorted(t for _, t in answers)
    assert all(d.fallback and d.allowed for d, _ in answers)  # open
    assert set(kinds.errors) == {"timeout"}
    # Worst case: the call in flight, then one's own; a shared 2-core machine adds slack.
    assert latencies[int(0.9 * len(latencies))] <= 2 * BUDGET + 0.1
    assert latencies[-1] < 1.0


# -- processes, URLs, topologies ----------------------------------------------------------


def test_forked_child_gets_its_own_connections(redis_url: str) -> None:
    """A child forked while a thread is mid-call connects anew; parent and child both decide from Redis."""
    prefix = _prefix()
    with Limiter(redis_url, prefix=prefix, timeout=2.0, deny_cache=False) as limiter:
        stop = threading.Event()
        parent: list[Decision] = []

        def hammer() -> None:
            while not stop.is_set():
                parent.append(limiter.hit("parent", "1000000/day"))

        thread = threading.Thread(target=hammer, daemon=True)
        thread.start()
        time.sleep(0.1)
        read_end, write_end = os.pipe()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads (3.12+)
            pid = os.fork()
        if pid == 0:  # the child: only this thread exists here
            code = 1
            try:
                got = [limiter.hit("child", "5/day") for _ in range(7)]
                os.write(write_end, json.dumps([[d.allowed, d.fallback] for d in got]).encode())
                code = 0
            finally:
                os._exit(code)
        os.close(write_end)
        try:
            ready, _, _ = select.select([read_end], [], [], 30)
            assert ready, "the child hung"
            data = os.read(read_end, 65536)
        finally:
            os.close(read_end)
            _, status = os.waitpid(pid, 0)
            stop.set()
            thread.join(timeout=10)
        assert os.waitstatus_to_exitcode(status) == 0
        assert json.loads(data) == [[True, False]] * 5 + [[False, False]] * 2
        assert parent and not any(d.fallback for d in parent)
        assert not limiter.hit("parent", "1000000/day").fallback
        assert limiter.peek("child", "5/day").remaining == 0


@pytest.mark.parametrize(
    ("suffix", "lean"),
    [("", True), ("?ssl_cert_reqs=none", True), ("?client_name=rl", False), ("?db=2", False)],
)
def test_urls_the_lean_path_does_not_know_stay_on_redis_py(redis_url: str, suffix: str, lean: bool) -> None:
    """Options only redis-py understands keep its client; both decide the same."""
    url = redis_url.removesuffix("/0") + ("/0" if "db" not in suffix else "") + suffix
    with Limiter(url, prefix=_prefix(), timeout=2.0) as limiter:
        assert limiter.backend._lean is lean  # type: ignore[attr-defined]
        assert [limiter.hit("a", "2/day").allowed for _ in range(3)] == [True, True, False]


def test_cluster_sync_stays_on_redis_py_and_exact(redis_cluster: Any) -> None:
    """Redis Cluster's sync path is redis-py's (unbatched): still exact across threads."""
    with Limiter(redis_cluster.url, prefix=_prefix(), timeout=2.0, deny_cache=False) as limiter:
        assert not limiter.backend._lean  # type: ignore[attr-defined]
        answers = _threads(8, lambda i: _timed(limiter, "hot", "30/day", 8))
    assert sum(d.allowed for d, _ in answers) == 30
    assert not any(d.fallback for d, _ in answers)


def test_tls_and_acl_threads(redis_tls: Any, redis_acl: Any) -> None:
    """TLS (verified) and an ACL login on the lean path, with threads coalesced."""
    for url in (redis_tls.url, redis_acl.url):
        with Limiter(url, prefix=_prefix(), timeout=2.0, deny_cache=False) as limiter:
            assert limiter.backend._lean  # type: ignore[attr-defined]
            answers = _threads(6, lambda i, limiter=limiter: _timed(limiter, "hot", "10/day", 4))  # type: ignore[misc]
        assert sum(d.allowed for d, _ in answers) == 10
        assert not any(d.fallback for d, _ in answers)


class _StallAfterWrite:
    """A socket whose writer is descheduled for ``stall`` seconds right after writing."""

    def __init__(self, sock: Any, stall: float) -> None:
        self._sock = sock
        self._stall = stall

    def sendall(self, data: bytes) -> None:
        self._sock.sendall(data)
        time.sleep(self._stall)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def test_a_reply_that_arrived_in_time_is_read_after_a_stall(redis_server: Any) -> None:
    """A thread stalled past the deadline after writing (GIL, loaded machine) still reads the
    reply that arrived in time; a server that really did not answer still times out."""
    from ratelimit.backends.redis._syncwire import connect
    from ratelimit.backends.redis._wire import BackendTimeout, Endpoint

    conn = connect(Endpoint("127.0.0.1", redis_server.port), BUDGET)
    conn._sock = _StallAfterWrite(conn._sock, 0.3)  # type: ignore[assignment]
    assert conn.call(b"*1\r\n$4\r\nPING\r\n", 1) == [b"PONG"]
    # BLPOP on an empty list: Redis holds the reply for 1 s, so the budget is spent for real.
    start = time.perf_counter()
    with pytest.raises(BackendTimeout):
        conn.call(b"*3\r\n$5\r\nBLPOP\r\n$12\r\nsc-never-set\r\n$1\r\n1\r\n", 1)
    assert time.perf_counter() - start < 0.3 + 0.1
    conn.close()
