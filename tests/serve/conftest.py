"""Real ``python -m ratelimit serve`` processes and gRPC clients from the published protos."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

grpc = pytest.importorskip("grpc")
rls_pb2 = pytest.importorskip("envoy.service.ratelimit.v3.rls_pb2")
rls_pb2_grpc = pytest.importorskip("envoy.service.ratelimit.v3.rls_pb2_grpc")
ratelimit_pb2 = pytest.importorskip("envoy.extensions.common.ratelimit.v3.ratelimit_pb2")

ROOT = Path(__file__).resolve().parents[2]
_LISTENING = re.compile(r"listening grpc_port=(\d+) http_port=(\d+)")


class Served:
    """One server process: its ports, a stub, and its log."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: Path) -> None:
        self.proc = subprocess.Popen(
            argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        self.lines: list[str] = []
        self.grpc_port = self.http_port = 0
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self._ready.wait(30) or not self.grpc_port:
            self.stop()
            raise AssertionError("ratelimit serve did not start:\n" + self.log)
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.grpc_port}")
        self.stub = rls_pb2_grpc.RateLimitServiceStub(self.channel)

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)
            m = _LISTENING.search(line)
            if m:
                self.grpc_port, self.http_port = int(m.group(1)), int(m.group(2))
                self._ready.set()
        self.proc.stderr.close()
        self._ready.set()

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def wait_log(self, text: str, timeout: float = 10) -> None:
        """Wait until ``text`` appears in the log."""
        deadline = time.monotonic() + timeout
        while text not in self.log:
            assert time.monotonic() < deadline, f"{text!r} never logged:\n{self.log}"
            time.sleep(0.05)

    def ask(self, *descriptors: Any, domain: str = "shop", hits: int = 0, timeout: float = 5) -> Any:
        """ShouldRateLimit with ``descriptors`` (lists of (key, value), or RateLimitDescriptor)."""
        return self.stub.ShouldRateLimit(request(domain, *descriptors, hits=hits), timeout=timeout)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait(5)
        self._reader.join(5)
        return code


def descriptor(
    *entries: tuple[str, str], hits: int | None = None, override: tuple[int, int] | None = None
) -> Any:
    d = ratelimit_pb2.RateLimitDescriptor(
        entries=[ratelimit_pb2.RateLimitDescriptor.Entry(key=k, value=v) for k, v in entries]
    )
    if hits is not None:
        d.hits_addend.value = hits
    if override is not None:
        d.limit.requests_per_unit, d.limit.unit = override
    return d


def request(domain: str, *descriptors: Any, hits: int = 0) -> Any:
    r = rls_pb2.RateLimitRequest(domain=domain, hits_addend=hits)
    for d in descriptors:
        r.descriptors.append(d if not isinstance(d, list) else descriptor(*d))
    return r


def start(config: Path, *args: str, env: dict[str, str] | None = None) -> Served:
    environment = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "GRPC_PORT", "HTTP_PORT")}
    environment.update({"PYTHONPATH": str(ROOT), "LOG_LEVEL": "info", **(env or {})})
    argv = [sys.executable, "-m", "ratelimit", "serve", str(config), "--grpc-port", "0", "--http-port", "0"]
    return Served(
        [*argv, "--reload", "0.2", *args], environment, config.parent if config.is_file() else config
    )


@pytest.fixture
def prefix() -> str:
    """A key prefix of this test's own (the Redis server is shared by the session)."""
    return "t" + uuid.uuid4().hex[:10]


@pytest.fixture
def serve() -> Iterator[Any]:
    """``serve(config, *args, env=...)`` starts a server, stopped at the end of the test."""
    started: list[Served] = []

    def run(config: Path, *args: str, env: dict[str, str] | None = None) -> Served:
        s = start(config, *args, env=env)
        started.append(s)
        return s

    yield run
    for s in started:
        s.channel.close()
        s.stop(signal.SIGKILL)
