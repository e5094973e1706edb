"""A throw-away redis-server for the benchmarks, and ``INFO commandstats`` deltas.

The benchmark never touches a Redis it did not start unless ``--redis-url`` names one
explicitly. The server started here listens on a free loopback port, keeps nothing on
disk (``--save "" --appendonly no``) and is shut down when the context manager exits.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import redis

#: Commands sent by the benchmark itself (to read the stats), never by a rate limiter.
BENCH_OWN_COMMANDS = frozenset({"info"})
#: Commands that run a server-side script: one of these is one script execution.
SCRIPT_COMMANDS = frozenset({"eval", "evalsha", "eval_ro", "evalsha_ro", "fcall", "fcall_ro"})


def redis_server_binary() -> str | None:
    """Path of the ``redis-server`` binary, or None when it is not installed."""
    return shutil.which("redis-server")


def _free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def redis_server(binary: str | None = None, startup_timeout: float = 10.0) -> Iterator[str]:
    """Start a private redis-server on a free loopback port; yield its ``redis://`` URL.

    The server is stopped (``SHUTDOWN NOSAVE``, then SIGTERM/SIGKILL of that one process if
    needed) when the block exits, whatever happened inside it.
    """
    binary = binary or redis_server_binary()
    if binary is None:
        raise RuntimeError("redis-server is not installed (or pass --redis-url)")
    with tempfile.TemporaryDirectory(prefix="bench-redis-") as workdir:
        for _attempt in range(5):
            port = _free_loopback_port()
            proc = subprocess.Popen(
                [
                    binary,
                    "--bind",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    workdir,
                    "--daemonize",
                    "no",
                    "--protected-mode",
                    "yes",
                    "--loglevel",
                    "warning",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            url = f"redis://127.0.0.1:{port}/0"
            if _wait_ready(url, proc, startup_timeout):
                break
            _stop(proc, url)  # lost a race for the port, most likely: try another one
        else:
            raise RuntimeError("could not start redis-server on a free loopback port")
        try:
            yield url
        finally:
            _stop(proc, url)


def _wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    client = redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=1.0)
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return False
            try:
                if client.ping():
                    return True
            except redis.RedisError:
                time.sleep(0.05)
        return False
    finally:
        client.close()


def _stop(proc: subprocess.Popen[bytes], url: str) -> None:
    if proc.poll() is None:
        client = redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=1.0)
        with contextlib.suppress(redis.RedisError):
            client.shutdown(nosave=True)  # the connection drops: that is the success case
        client.close()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    if proc.stderr is not None:
        proc.stderr.close()


@dataclass(frozen=True)
class CommandCounts:
    """Redis command counts over an interval (a difference of two snapshots)."""

    total: int
    scripts: int

    def __sub__(self, other: CommandCounts) -> CommandCounts:
        return CommandCounts(self.total - other.total, self.scripts - other.scripts)

    def __add__(self, other: CommandCounts) -> CommandCounts:
        return CommandCounts(self.total + other.total, self.scripts + other.scripts)


ZERO_COUNTS = CommandCounts(0, 0)


class CommandStats:
    """Reads ``INFO commandstats`` of one Redis with its own short-lived sync connection.

    ``total`` sums the ``calls`` of every command except the benchmark's own ``INFO``;
    Redis counts commands issued by a Lua script (``redis.call``) too, so a script that
    does HGET + HSET + PEXPIRE counts 1 (EVALSHA) + 3. ``scripts`` counts the script
    executions alone (EVAL/EVALSHA/FCALL and their read-only forms).
    """

    def __init__(self, url: str) -> None:
        self._client = redis.Redis.from_url(url, socket_timeout=10.0)

    def snapshot(self) -> CommandCounts:
        """Current cumulative counts."""
        raw: Mapping[str, Mapping[str, int]] = self._client.info("commandstats")
        total = scripts = 0
        for key, stats in raw.items():
            name = key.removeprefix("cmdstat_").lower()
            if name in BENCH_OWN_COMMANDS:
                continue
            calls = int(stats.get("calls", 0))
            total += calls
            if name in SCRIPT_COMMANDS:
                scripts += calls
        return CommandCounts(total, scripts)

    def close(self) -> None:
        """Close the stats connection."""
        self._client.close()


def redis_version(url: str) -> str | None:
    """The server's version, or None when it cannot be asked."""
    client = redis.Redis.from_url(url)
    try:
        return str(client.info("server").get("redis_version"))
    except redis.RedisError:
        return None
    finally:
        client.close()


class RedisProbe:
    """Commands (``INFO commandstats``, the benchmark's own INFO excluded) and CPU of one Redis."""

    def __init__(self, url: str, flush: bool) -> None:
        self.url = url
        self.flush = flush
        self.client = redis.Redis.from_url(url, socket_timeout=10.0)
        self.commands = CommandStats(url)

    def reset(self) -> None:
        """Empty the private Redis between runs (never a Redis given with --redis-url)."""
        if self.flush:
            self.client.flushall()

    def snapshot(self) -> tuple[int, int, float]:
        """(commands, script calls, CPU seconds) so far."""
        counts = self.commands.snapshot()
        cpu = self.client.info("cpu")
        return counts.total, counts.scripts, float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"])

    def close(self) -> None:
        self.client.close()
        self.commands.close()
