"""The load generator of bench_serve.py: ShouldRateLimit calls, or the same charges in-app.

    python bench/_servers/rls_load.py --target 127.0.0.1:8081 --descriptors 2
    python bench/_servers/rls_load.py --inapp limits.yaml --descriptors 2

Mode ``--target``: a grpc.aio client keeps ``--concurrency`` ShouldRateLimit calls in
flight (one task each, one channel), each call carrying ``--descriptors`` descriptors of
domain ``bench``: ``user=user-<i mod subjects>``, then ``path=/items``, then
``tenant=tenant-<i mod 10>``. Mode ``--inapp``: the same descriptors charged through
``Limiter.from_config`` on the same config file and Redis, as an app would, with as
many asyncio tasks (no gRPC, no protobuf: the engine's own cost for the same work).

Protocol with the harness (as bench/_servers/grpc_load.py): warm up for ``--warmup``
seconds, print ``WARM``, wait for a line on stdin, run for ``--duration`` seconds, print
one ``RESULT {json}`` line: calls, elapsed seconds, answers by code, latency p50/p99 in
milliseconds, and this process's CPU seconds in the measured phase.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

_ROOT = Path(__file__).resolve().parents[2]
sys.dont_write_bytecode = True
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

DOMAIN = "bench"
TENANTS = 10


def descriptor_entries(i: int, count: int, subjects: int) -> list[list[tuple[str, str]]]:
    """The request descriptors of call ``i``: one entry each, ``count`` of them."""
    every = [
        [("user", f"user-{i % subjects}")],
        [("path", "/items")],
        [("tenant", f"tenant-{i % TENANTS}")],
    ]
    return every[:count]


async def _phase(
    call: Callable[[int], Awaitable[str]], concurrency: int, seconds: float, record: bool
) -> Any:
    codes: Counter[str] = Counter()
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    counter = iter(range(1 << 62))

    async def worker() -> None:
        while time.perf_counter() < deadline:
            i = next(counter)
            start = time.perf_counter()
            try:
                code = await call(i)
            except Exception as exc:  # an RPC error or a broken call: counted, never hidden
                code = f"error-{type(exc).__name__}"
            if record:
                latencies.append(time.perf_counter() - start)
            codes[code] += 1

    started = time.perf_counter()
    cpu = time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return codes, latencies, time.perf_counter() - started, time.process_time() - cpu


def _grpc_caller(target: str, count: int, subjects: int) -> tuple[Callable[[int], Awaitable[str]], Any]:
    import grpc
    from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2 as common
    from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc

    channel = grpc.aio.insecure_channel(target, options=[("grpc.enable_http_proxy", 0)])
    stub = rls_pb2_grpc.RateLimitServiceStub(channel)
    requests = [
        rls_pb2.RateLimitRequest(
            domain=DOMAIN,
            descriptors=[
                common.RateLimitDescriptor(
                    entries=[common.RateLimitDescriptor.Entry(key=k, value=v) for k, v in entries]
                )
                for entries in descriptor_entries(i, count, subjects)
            ],
            hits_addend=1,
        )
        for i in range(subjects * TENANTS)
    ]
    names = {v: k for k, v in rls_pb2.RateLimitResponse.Code.items()}

    async def call(i: int) -> str:
        reply = await stub.ShouldRateLimit(requests[i % len(requests)], timeout=10)
        return names.get(reply.overall_code, str(reply.overall_code))

    return call, channel


def _inapp_caller(config: str, count: int, subjects: int) -> tuple[Callable[[int], Awaitable[str]], Any]:
    from ratelimit import Limiter
    from ratelimit.envoy import DescriptorRule

    limiter = Limiter.from_config(config, reload=False)
    assert limiter.ruleset is not None
    rule = next(r for r in limiter.ruleset.rules if isinstance(r, DescriptorRule))
    plans: list[list[Any]] = []
    for i in range(subjects * TENANTS):
        items = []
        for entries in descriptor_entries(i, count, subjects):
            charge = rule.charge(entries)
            assert charge is not None, f"no limit for {entries}"
            items += [(charge.counted, rate, charge.cost) for rate in charge.rates]
        plans.append(items)

    async def call(i: int) -> str:
        decision = await limiter.ahit_many(plans[i % len(plans)])
        if decision.fallback:
            return "FALLBACK"
        return "OK" if decision.allowed else "OVER_LIMIT"

    return call, limiter


async def main_async(args: argparse.Namespace) -> None:
    if args.target:
        call, resource = _grpc_caller(args.target, args.descriptors, args.subjects)
    else:
        call, resource = _inapp_caller(args.inapp, args.descriptors, args.subjects)
    await _phase(call, args.concurrency, args.warmup, False)
    print("WARM", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    codes, latencies, elapsed, cpu = await _phase(call, args.concurrency, args.duration, True)
    latencies.sort()
    result = {
        "calls": sum(codes.values()),
        "elapsed": elapsed,
        "codes": dict(codes),
        "p50_ms": 1000 * statistics.median(latencies) if latencies else None,
        "p99_ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))] if latencies else None,
        "cpu": cpu,
    }
    print("RESULT " + json.dumps(result), flush=True)
    if args.target:
        await resource.close()
    else:
        await resource.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--target", help="host:port of a RateLimitService")
    where.add_argument("--inapp", metavar="CONFIG", help="charge in-app through Limiter.from_config(CONFIG)")
    parser.add_argument("--descriptors", type=int, default=1, choices=(1, 2, 3))
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--subjects", type=int, default=500)
    args = parser.parse_args()
    asyncio.run(main_async(args))  # the default loop: grpc.aio's own (uvloop is not supported by it)


if __name__ == "__main__":
    main()
