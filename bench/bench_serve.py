"""`ratelimit serve` under load: ShouldRateLimit calls per second against Redis's own ceiling.

One ``ratelimit serve`` process (the RateLimitService v3 API) on a private Redis, loaded
by a grpc.aio client process keeping ``--concurrency`` calls in flight, each call with 1,
2 or 3 descriptors (``user``, ``path``, ``tenant``; limits high enough that every call
is allowed). Beside it, the same descriptors charged in-app (``Limiter.from_config`` on
the same config and Redis, ``ahit_many`` from as many asyncio tasks) and the ceiling:
a pipelined client replaying the exact script call the server makes (captured with
MONITOR) over 500 keys, so the table can say what share of one Redis core's
worth of our script one server process drives. Rows are interleaved over ``--rounds``
(the order rotates); the table shows medians.

    python bench/bench_serve.py                # 3 rounds, 8 s per row (~4 min)
    python bench/bench_serve.py --quick        # 1 round, 2 s per row

A row is valid only when every call was answered OK by a real decision: the status
counts are printed, and the server's failure-policy answers (its Prometheus
``decisions_total{result="fallback"}``) must be 0. Redis commands and scripts per call
come from ``INFO commandstats``; CPU per call from the processes' own counters. The
machine is shared and has two cores: read the ratios, not the absolute rates.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

_HERE = Path(__file__).resolve().parent
_ROOT = _HERE.parent
sys.dont_write_bytecode = True
for _p in (str(_ROOT), str(_HERE)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from _redis import RedisProbe, redis_server, redis_version  # noqa: E402

LOAD = _HERE / "_servers" / "rls_load.py"
EMPTY = "grpc.aio-empty"  # the reference row: the same server stack answering without deciding
CLK_TCK = os.sysconf("SC_CLK_TCK")
HIGH = 100_000_000  # requests_per_unit: every call is allowed
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))

UPSTREAM_CONFIG = f"""\
domain: bench
descriptors:
  - key: user
    rate_limit: {{unit: minute, requests_per_unit: {HIGH}}}
  - key: path
    rate_limit: {{unit: minute, requests_per_unit: {HIGH}}}
  - key: tenant
    rate_limit: {{unit: minute, requests_per_unit: {HIGH}}}
"""


def limits_file(config_dir: Path, url: str) -> str:
    """This package's config file naming the upstream one (what the in-app row loads)."""
    return f"version: 1\nbackend:\n  storage: {url}\nenvoy:\n  - file: {config_dir / 'bench.yaml'}\n"


# ----------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of one process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


@dataclass
class Serve:
    """A running ``ratelimit serve`` process."""

    proc: subprocess.Popen[str]
    grpc_port: int
    http_port: int
    log: Path

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def metrics(self) -> str | None:
        """The server's Prometheus text, or None when it serves none."""
        try:
            with _NO_PROXY.open(f"http://127.0.0.1:{self.http_port}/metrics", timeout=5) as resp:
                return str(resp.read().decode())
        except OSError:
            return None

    def fallbacks(self) -> float | None:
        """Failure-policy answers so far (None: the server reports no decision metrics)."""
        text = self.metrics()
        if text is None or "decisions_total" not in text:
            return None
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if "decisions_total{" in line and 'result="fallback"' in line
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@contextlib.contextmanager
def serve(config_dir: Path, url: str, workdir: Path) -> Iterator[Serve]:
    grpc_port, http_port = free_port(), free_port()
    log = workdir / "serve.log"
    env = {**os.environ, "REDIS_URL": url, "LOG_LEVEL": "warning", "PYTHONDONTWRITEBYTECODE": "1"}
    cmd = [sys.executable, "-m", "ratelimit", "serve", str(config_dir)]
    cmd += ["--grpc-port", str(grpc_port), "--http-port", str(http_port)]
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, text=True, cwd=_ROOT)
    server = Serve(proc, grpc_port, http_port, log)
    try:
        wait_ready(server)
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def empty_server(workdir: Path) -> Iterator[Serve]:
    """The reference servicer that decides nothing (bench/_servers/rls_empty.py)."""
    port = free_port()
    log = workdir / "empty.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, str(_HERE / "_servers" / "rls_empty.py"), str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=_ROOT,
        )
    server = Serve(proc, port, 0, log)
    try:
        wait_ready(server)
        yield server
    finally:
        server.stop()


def wait_ready(server: Serve, timeout: float = 30.0) -> None:
    """Until one ShouldRateLimit call is answered OK."""
    import grpc
    from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2 as common
    from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc

    request = rls_pb2.RateLimitRequest(
        domain="bench",
        descriptors=[
            common.RateLimitDescriptor(entries=[common.RateLimitDescriptor.Entry(key="user", value="x")])
        ],
    )
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    with grpc.insecure_channel(server.target, options=[("grpc.enable_http_proxy", 0)]) as channel:
        stub = rls_pb2_grpc.RateLimitServiceStub(channel)
        while time.monotonic() < deadline:
            if server.proc.poll() is not None:
                raise RuntimeError(
                    f"ratelimit serve exited {server.proc.returncode}:\n{server.log.read_text()}"
                )
            try:
                reply = stub.ShouldRateLimit(request, timeout=2)
                if reply.overall_code == rls_pb2.RateLimitResponse.OK:
                    return
            except grpc.RpcError as exc:
                last = exc
            time.sleep(0.2)
    raise RuntimeError(f"ratelimit serve not ready after {timeout} s ({last}):\n{server.log.read_text()}")


# -------------------------------------------------------------------------- redis


def capture_script_call(url: str, server: Serve) -> list[str]:
    """The EVALSHA command the server sends for one 1-descriptor call, as MONITOR shows it.

    Read from ``redis-cli monitor``'s raw quoted lines: redis-py's monitor joins the
    arguments with spaces, which loses the empty first argument of the script.
    """
    import grpc
    from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2 as common
    from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc

    cli = shutil.which("redis-cli")
    if cli is None:
        raise RuntimeError("redis-cli not found (it comes with redis-server)")
    monitor = subprocess.Popen([cli, "-u", url, "monitor"], stdout=subprocess.PIPE, text=True)
    try:
        assert monitor.stdout is not None
        if monitor.stdout.readline().strip() != "OK":
            raise RuntimeError("redis-cli monitor did not start")
        entry = common.RateLimitDescriptor.Entry(key="user", value="ceiling-probe")
        request = rls_pb2.RateLimitRequest(
            domain="bench", descriptors=[common.RateLimitDescriptor(entries=[entry])]
        )
        with grpc.insecure_channel(server.target, options=[("grpc.enable_http_proxy", 0)]) as channel:
            rls_pb2_grpc.RateLimitServiceStub(channel).ShouldRateLimit(request, timeout=5)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            line = monitor.stdout.readline()
            if not line:
                break
            # 1796509393.738921 [5 127.0.0.1:58770] "EVALSHA" "sha" "1" "key" "" ...
            quoted = line.split("] ", 1)[-1]
            args = [bytes(a, "utf-8").decode("unicode_escape") for a in shlex.split(quoted)]
            if args and args[0].upper() in ("EVALSHA", "EVAL"):
                return args
        raise RuntimeError("no script call seen on MONITOR")
    finally:
        monitor.kill()
        monitor.wait()


def ceiling(url: str, command: list[str], probe: RedisProbe, seconds: float) -> dict[str, float]:
    """Replay ``command`` pipelined (100 per round trip) over 500 keys: calls/s, and per Redis CPU-second.

    A Python client with redis-py pipelines rather than redis-benchmark, which drops the
    empty first argument (the script's "use Redis TIME") and so cannot send the call as
    the server does. The client may be the bottleneck of calls/s; script calls per Redis
    CPU-second is Redis's own ceiling for this script, whatever drives it.
    """
    import redis

    numkeys = int(command[2])
    variants = []
    for n in range(500):  # EVALSHA sha numkeys key...: vary the keys' identity tag, as the load does
        args = list(command)
        for i in range(3, 3 + numkeys):
            args[i] = re.sub(r"\{[^}]*\}", f"{{ceiling-{n}}}", args[i])
        variants.append(args)
    client = redis.Redis.from_url(url, socket_timeout=30.0)
    try:
        before = probe.snapshot()
        started = time.perf_counter()
        calls = 0
        while time.perf_counter() - started < seconds:
            pipe = client.pipeline(transaction=False)
            for k in range(100):
                pipe.execute_command(*variants[(calls + k) % 500])
            pipe.execute()
            calls += 100
        elapsed = time.perf_counter() - started
        after = probe.snapshot()
    finally:
        client.close()
    scripts = after[1] - before[1]
    cpu = after[2] - before[2]
    return {
        "rps": calls / elapsed,
        "scripts": scripts,
        "per_cpu_second": scripts / cpu if cpu > 0 else 0.0,
    }


# ---------------------------------------------------------------------------- runs


@dataclass
class Run:
    calls: int
    elapsed: float
    codes: dict[str, int]
    p50_ms: float
    p99_ms: float
    client_cpu: float
    server_cpu: float
    redis_cpu: float
    commands: int
    scripts: int
    fallbacks: float | None

    @property
    def rate(self) -> float:
        return self.calls / self.elapsed if self.elapsed else 0.0


@dataclass
class Row:
    name: str
    descriptors: int
    runs: list[Run] = field(default_factory=list)

    def median(self, attr: str) -> float:
        return statistics.median(getattr(r, attr) if attr != "rate" else r.rate for r in self.runs)

    def per_call(self, attr: str) -> float:
        return statistics.median(getattr(r, attr) / r.calls if r.calls else 0.0 for r in self.runs)

    def codes(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for r in self.runs:
            for k, v in r.codes.items():
                total[k] = total.get(k, 0) + v
        return total

    def valid(self) -> str:
        codes = self.codes()
        if set(codes) != {"OK"}:
            return "INVALID: answers other than OK " + json.dumps(codes)
        if self.name == EMPTY:
            return "reference: decides nothing"
        if any(r.fallbacks is None for r in self.runs) and self.name == "serve":
            return "INVALID: the server reports no fallback count"
        if any(r.fallbacks for r in self.runs):
            return "INVALID: failure-policy answers"
        if any(r.scripts == 0 for r in self.runs):
            return "INVALID: no script ran on Redis"
        return "valid"


def measure(cmd: list[str], pid_of_server: int | None, probe: RedisProbe, server: Serve | None) -> Run:
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=_ROOT)
    assert proc.stdout is not None and proc.stdin is not None
    line = proc.stdout.readline()
    if line.strip() != "WARM":
        proc.kill()
        raise RuntimeError(f"load generator failed: {line!r}")
    fallbacks0 = server.fallbacks() if server else 0.0
    commands0, scripts0, rcpu0 = probe.snapshot()
    scpu0 = process_cpu(pid_of_server) if pid_of_server else 0.0
    proc.stdin.write("go\n")
    proc.stdin.flush()
    result_line = proc.stdout.readline()
    scpu1 = process_cpu(pid_of_server) if pid_of_server else 0.0
    commands1, scripts1, rcpu1 = probe.snapshot()
    fallbacks1 = server.fallbacks() if server else 0.0
    proc.wait(timeout=30)
    if not result_line.startswith("RESULT "):
        raise RuntimeError(f"load generator failed: {result_line!r}")
    got = json.loads(result_line[len("RESULT ") :])
    return Run(
        calls=got["calls"],
        elapsed=got["elapsed"],
        codes=got["codes"],
        p50_ms=got["p50_ms"] or 0.0,
        p99_ms=got["p99_ms"] or 0.0,
        client_cpu=got["cpu"],
        server_cpu=scpu1 - scpu0,
        redis_cpu=rcpu1 - rcpu0,
        commands=commands1 - commands0,
        scripts=scripts1 - scripts0,
        fallbacks=None if fallbacks0 is None or fallbacks1 is None else fallbacks1 - fallbacks0,
    )


def table(rows: list[Row], ceil: dict[str, float]) -> list[str]:
    lines = [
        "| row | descriptors | calls/s | p50 ms | p99 ms | server CPU us/call | Redis CPU us/call "
        "| Redis cmds/call | scripts/call | answers | failure-policy answers | valid |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        fb = [r.fallbacks for r in row.runs]
        lines.append(
            f"| {row.name} | {row.descriptors} | {row.median('rate'):,.0f} | {row.median('p50_ms'):.2f} "
            f"| {row.median('p99_ms'):.2f} | "
            + (f"{1e6 * row.per_call('server_cpu'):.0f}" if row.name != "in-app" else "-")
            + f" | {1e6 * row.per_call('redis_cpu'):.1f} | {row.per_call('commands'):.2f} "
            f"| {row.per_call('scripts'):.2f} | {json.dumps(row.codes())} "
            f"| {'n/a' if any(x is None for x in fb) else int(sum(x or 0 for x in fb))} | {row.valid()} |"
        )
    if ceil:
        lines.append("")
        lines.append(
            f"Redis ceiling (the server's own 1-descriptor script call, pipelined 100 deep, 500 keys): "
            f"{ceil['rps']:,.0f} calls/s; {ceil['per_cpu_second']:,.0f} script calls per Redis CPU-second."
        )
        serve1 = next((r for r in rows if r.name == "serve" and r.descriptors == 1), None)
        if serve1 is not None and ceil["per_cpu_second"]:
            share = serve1.median("rate") / ceil["per_cpu_second"]
            lines.append(
                f"One `ratelimit serve` process, 1 descriptor per call: {serve1.median('rate'):,.0f} "
                f"calls/s = {share:.2f} of one Redis core's worth of the script (aim >= 0.50)."
            )
    for d in sorted({r.descriptors for r in rows}):
        serve_row = next((r for r in rows if r.name == "serve" and r.descriptors == d), None)
        empty = next((r for r in rows if r.name == EMPTY and r.descriptors == d), None)
        if serve_row is not None and empty is not None and empty.median("rate"):
            share = serve_row.median("rate") / empty.median("rate")
            lines.append(
                f"{d} descriptor(s): `ratelimit serve` answers {share:.2f} of the calls/s"
                " of a grpc.aio servicer that decides nothing."
            )
    return lines


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--descriptors", default="1,2,3", help="comma-separated: 1, 2 and/or 3")
    parser.add_argument("--no-inapp", action="store_true", help="skip the in-app rows")
    parser.add_argument("--no-empty", action="store_true", help="skip the decide-nothing reference rows")
    parser.add_argument("--quick", action="store_true", help="1 round, 2 s per row (a smoke run)")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.duration, args.warmup = 1, 2.0, 0.5
    args.descriptor_counts = [int(x) for x in args.descriptors.split(",") if x.strip()]
    if not args.descriptor_counts or any(d not in (1, 2, 3) for d in args.descriptor_counts):
        parser.error("--descriptors takes 1, 2 and/or 3")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp, redis_server() as url:
        work = Path(tmp)
        config_dir = work / "config"
        config_dir.mkdir()
        (config_dir / "bench.yaml").write_text(UPSTREAM_CONFIG)
        limits = work / "limits.yaml"
        limits.write_text(limits_file(config_dir, url))
        probe = RedisProbe(url, flush=False)
        rows: dict[tuple[str, int], Row] = {}
        kinds = ["serve"] + ([] if args.no_inapp else ["in-app"]) + ([] if args.no_empty else [EMPTY])
        plan = [(k, d) for d in args.descriptor_counts for k in kinds]
        try:
            with serve(config_dir, url, work) as server, contextlib.ExitStack() as stack:
                empty = None if args.no_empty else stack.enter_context(empty_server(work))
                for rnd in range(args.rounds):
                    order = plan[rnd % len(plan) :] + plan[: rnd % len(plan)]
                    for kind, d in order:
                        common = ["--descriptors", str(d), "--concurrency", str(args.concurrency)]
                        common += ["--warmup", str(args.warmup), "--duration", str(args.duration)]
                        if kind == "serve":
                            cmd = [sys.executable, str(LOAD), "--target", server.target, *common]
                            run = measure(cmd, server.proc.pid, probe, server)
                        elif kind == EMPTY:
                            assert empty is not None
                            cmd = [sys.executable, str(LOAD), "--target", empty.target, *common]
                            run = measure(cmd, empty.proc.pid, probe, None)
                        else:
                            cmd = [sys.executable, str(LOAD), "--inapp", str(limits), *common]
                            run = measure(cmd, None, probe, None)
                        rows.setdefault((kind, d), Row(kind, d)).runs.append(run)
                        print(
                            f"round {rnd + 1} {kind} x{d}: {run.rate:,.0f} calls/s {run.codes}",
                            file=sys.stderr,
                            flush=True,
                        )
                command = capture_script_call(url, server)
            ceil = ceiling(url, command, probe, args.duration)
        finally:
            probe.close()
        print(
            f"### ratelimit serve (RateLimitService v3), Redis {redis_version(url)}, "
            f"{args.rounds} round(s) x {args.duration:g} s, {args.concurrency} calls in flight\n"
        )
        ordered = [rows[(k, d)] for d in args.descriptor_counts for k in kinds]
        print("\n".join(table(ordered, ceil)))
        bad = [r for r in ordered if r.name != EMPTY and r.valid() != "valid"]
        return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
