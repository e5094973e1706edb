"""Several processes, each with many threads or tasks, on one key: exactly N admitted."""

from __future__ import annotations

import asyncio
import multiprocessing
import threading
import uuid
from typing import Any

import pytest

from ratelimit import Limiter

LIMIT = 1000
# A one-day window: the test finishes long before the window could roll over, and even
# if it rolled over mid-test the previous count (N) would keep denying for hours.
RATE = f"{LIMIT}/day"


def _threads_worker(url: str, prefix: str, threads: int, per_thread: int, out: Any) -> None:
    limiter = Limiter(url, prefix=prefix, timeout=5.0, deny_cache=False)
    counts: list[int] = []
    barrier = threading.Barrier(threads)

    def run() -> None:
        barrier.wait()
        counts.append(sum(limiter.hit("hot", RATE).allowed for _ in range(per_thread)))

    pool = [threading.Thread(target=run) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    limiter.close()
    out.put(sum(counts))


def _tasks_worker(url: str, prefix: str, tasks: int, per_task: int, out: Any) -> None:
    async def main() -> int:
        async with Limiter(url, prefix=prefix, timeout=5.0, deny_cache=False) as limiter:

            async def run() -> int:
                return sum([(await limiter.ahit("hot", RATE)).allowed for _ in range(per_task)])

            return sum(await asyncio.gather(*(run() for _ in range(tasks))))

    out.put(asyncio.run(main()))


@pytest.mark.parametrize("kind", ["threads", "tasks"])
def test_processes_admit_exactly_n(redis_url: str, kind: str) -> None:
    """4 processes x (8 threads | 50 tasks) send 2x the limit at once; exactly N get through."""
    prefix = f"conc{uuid.uuid4().hex[:8]}"
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    if kind == "threads":
        args = [(redis_url, prefix, 8, 2 * LIMIT // 32, out) for _ in range(4)]
        target: Any = _threads_worker
    else:
        args = [(redis_url, prefix, 50, 2 * LIMIT // 200, out) for _ in range(4)]
        target = _tasks_worker
    procs = [ctx.Process(target=target, args=a) for a in args]
    for p in procs:
        p.start()
    admitted = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    assert sum(admitted) == LIMIT
    with Limiter(redis_url, prefix=prefix) as check:
        assert check.peek("hot", RATE).remaining == 0
