"""A gRPC load generator process for bench_servers.py (there is no Debian gRPC ``wrk``).

    python bench/_servers/grpc_load.py --target 127.0.0.1:50051 --concurrency 64 \\
        --warmup 2 --duration 8 --subjects 500 --offset 0

``--concurrency`` unary ``GetCart`` calls are kept in flight on ``--channels`` sync
channels (round robin): each call is issued with ``stub.GetCart.future(...)`` and its
completion callback (run on gRPC's own completion thread) records the status code and
issues the next call, so no Python thread blocks per call. This measured about 15-30%
less client CPU per call than a ``grpc.aio`` client with as many tasks, and the client
shares the machine's cores with the server under test. Call *i* carries
``x-user-id: user-((offset + i) mod subjects)`` metadata.

Protocol with the harness: warm up for ``--warmup`` seconds, print ``WARM``, wait for a
line on stdin (every client's measured phase starts at once, after the harness read its
counters), call for ``--duration`` seconds, print one ``RESULT {json}`` line: calls
completed, elapsed seconds, status codes by name, and this process's CPU seconds in the
measured phase.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

_HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(_HERE.parent.parent / "examples" / "grpc"))  # the generated stubs

import grpc  # noqa: E402
import shop_pb2  # noqa: E402
import shop_pb2_grpc  # noqa: E402

_OPTIONS = [("grpc.enable_http_proxy", 0), ("grpc.use_local_subchannel_pool", 1)]


class Phase:
    """Keeps ``concurrency`` calls in flight until ``seconds`` have passed."""

    def __init__(self, stubs: list[Any], metadata: list[Any], concurrency: int, seconds: float) -> None:
        self.stubs, self.metadata, self.concurrency = stubs, metadata, concurrency
        self.request = shop_pb2.CartRequest(cart_id="cart-1")
        self.counter = itertools.count()
        self.codes: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.active = concurrency
        self.finished = threading.Event()
        self.seconds = seconds
        self.deadline = 0.0

    def _issue(self) -> None:
        i = next(self.counter)
        call = self.stubs[i % len(self.stubs)].GetCart.future(
            self.request, metadata=self.metadata[i % len(self.metadata)], timeout=10
        )
        call.add_done_callback(self._done)

    def _done(self, call: Any) -> None:
        try:
            name = call.code().name
        except Exception as exc:  # cancelled or broken: never answered by the server
            name = f"client-{type(exc).__name__}"
        again = time.perf_counter() < self.deadline
        with self.lock:
            self.codes[name] += 1
            if not again:
                self.active -= 1
                if self.active == 0:
                    self.finished.set()
        if again:
            try:
                self._issue()
            except Exception:
                with self.lock:
                    self.codes["client-issue-failed"] += 1
                    self.active -= 1
                    if self.active == 0:
                        self.finished.set()

    def run(self) -> dict[str, Any]:
        cpu0, start = time.process_time(), time.perf_counter()
        self.deadline = start + self.seconds
        for _ in range(self.concurrency):
            self._issue()
        self.finished.wait()
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu0
        with self.lock:
            codes = dict(self.codes)
        return {"calls": sum(codes.values()), "elapsed": elapsed, "codes": codes, "cpu": cpu}


def main(args: argparse.Namespace) -> None:
    channels = [grpc.insecure_channel(args.target, options=_OPTIONS) for _ in range(args.channels)]
    for ch in channels:
        grpc.channel_ready_future(ch).result(timeout=15)
    stubs = [shop_pb2_grpc.CartStub(ch) for ch in channels]
    metadata = [(("x-user-id", f"user-{(args.offset + i) % args.subjects}"),) for i in range(args.subjects)]
    if args.warmup > 0:
        Phase(stubs, metadata, args.concurrency, args.warmup).run()
    print("WARM", flush=True)
    sys.stdin.readline()
    result = Phase(stubs, metadata, args.concurrency, args.duration).run()
    print("RESULT " + json.dumps(result), flush=True)
    for ch in channels:
        ch.close()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--target", required=True)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--channels", type=int, default=1)
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--duration", type=float, default=8.0)
    p.add_argument("--subjects", type=int, default=500)
    p.add_argument("--offset", type=int, default=0)
    main(p.parse_args())
