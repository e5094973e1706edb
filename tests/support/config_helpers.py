"""Shared helpers for config tests: write a config, build a limiter, drive requests."""

from __future__ import annotations

import textwrap
import uuid
from pathlib import Path
from typing import Any

from ratelimit import Limiter
from ratelimit.enforce import Enforcer
from ratelimit.request import Headers, RequestInfo
from ratelimit.testing import FakeClock

T0 = 1_700_000_040.0


def write(tmp: Path, text: str, name: str = "limits.yaml") -> Path:
    """Write dedented ``text`` to ``tmp/name``."""
    path = tmp / name
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def request(
    path: str = "/",
    method: str = "GET",
    client: str = "10.0.0.1",
    host: str | None = "api.example.com",
    protocol: str = "http",
    **headers: str,
) -> RequestInfo:
    """A request; keyword headers use ``_`` for ``-`` (``x_user_id="alice"``)."""
    pairs = [(k.replace("_", "-"), v) for k, v in headers.items()]
    return RequestInfo(protocol, method, path, Headers(pairs), client=client, host=host)


class Driver:
    """An enforcer over a limiter built from a config file, on memory (fake clock) or Redis."""

    def __init__(self, path: Path, storage: str | None, **options: Any) -> None:
        self.clock = FakeClock(T0)
        if storage is None:
            options.setdefault("clock", self.clock)
        else:
            options.update(storage=storage, prefix=f"t-{uuid.uuid4().hex[:10]}", deny_cache=False)
        self.limiter = Limiter.from_config(path, reload=False, **options)
        self.enforcer = Enforcer.for_adapter(self.limiter, "test")

    def actions(self, n: int, **kw: Any) -> list[str]:
        """Send ``n`` identical requests; their outcomes' actions."""
        return [self.enforcer.check(request(**kw)).action for _ in range(n)]

    def allowed(self, n: int, **kw: Any) -> int:
        """How many of ``n`` identical requests are allowed (or skipped: no rule applied)."""
        return sum(a in ("allow", "skip") for a in self.actions(n, **kw))

    def close(self) -> None:
        self.limiter.close()
