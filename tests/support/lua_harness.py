"""Run lua/sliding_window.lua with a clock the test controls.

Production calls always read Redis TIME; the script accepts an explicit time only so
tests can put the Lua and the Python reference on the same clock. This backend is the
test-only way to do that, on any redis-py client (real Redis or fakeredis).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ratelimit._core.keyspace import glob_escape
from ratelimit._core.plan import Plan
from ratelimit._core.scripts import lua_script
from ratelimit.backends.base import RawResult, SyncBackend
from ratelimit.backends.redis._codec import decode, encode, refund_args

SCRIPT = lua_script("sliding_window")
REFUND = lua_script("refund")


def run_lua(client: Any, plans: Sequence[Plan], now_us: int) -> list[RawResult]:
    """Decide ``plans`` in one script call at ``now_us``."""
    keys, argv = encode(plans, now_us)
    return decode(client.eval(SCRIPT.source, len(keys), *keys, *argv), plans)


class LuaClockBackend(SyncBackend):
    """A Backend running the real Lua on ``client`` at the time ``clock()`` says."""

    name = "lua-clock"

    def __init__(self, client: Any, clock: Callable[[], float]) -> None:
        self.client = client
        self.clock = clock

    def now_us(self) -> int:
        return int(self.clock() * 1_000_000)

    def evaluate(self, plan: Plan) -> RawResult:
        return run_lua(self.client, [plan], self.now_us())[0]

    def delete(self, keys: Sequence[str], prefixes: Sequence[str]) -> int:
        found = set(keys)
        for prefix in prefixes:
            found.update(k.decode() for k in self.client.scan_iter(match=glob_escape(prefix) + "*"))
        return sum(int(self.client.delete(k)) for k in found)

    def refund(self, plan: Plan, nows: Sequence[int]) -> None:
        charged = [i for i in range(len(plan.keys)) if plan.args[3 * i + 2] > 0]
        if charged:
            keys, argv = refund_args(plan, charged, nows[0])
            self.client.eval(REFUND.source, len(keys), *keys, *argv)
