"""The wire form of ``lua/sliding_window.lua``: plans to KEYS/ARGV, replies to raw results."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..._core.plan import Plan
from ..base import BackendError, RawResult

__all__ = ["decode", "encode", "refund_args"]


def encode(plans: Sequence[Plan], now_us: int | None = None) -> tuple[list[str], list[Any]]:
    """KEYS and ARGV for one script call deciding ``plans`` in order.

    ``now_us`` overrides Redis TIME; only tests use it (to compare the script with the
    Python reference on identical clocks). Production calls always read server time.
    """
    keys: list[str] = []
    argv: list[Any] = ["" if now_us is None else now_us, len(plans)]
    for plan in plans:
        keys += plan.keys
        argv += (1 if plan.commit else 0, len(plan.keys))
        argv += plan.args
    return keys, argv


def decode(reply: Any, plans: Sequence[Plan]) -> list[RawResult]:
    """Split the script's flat reply into one raw result per plan."""
    try:
        now = reply[0]
        # Lua numbers arrive as RESP integers, which redis-py gives as ints already.
        if type(now) is not int or len(reply) != 1 + sum(1 + 2 * len(p.keys) for p in plans):
            raise ValueError("malformed reply")
        out: list[RawResult] = []
        pos = 1
        for plan in plans:
            n = len(plan.keys)
            out.append((reply[pos] == 1, (now,) * n, reply[pos + 1 : pos + 1 + 2 * n]))
            pos += 1 + 2 * n
        return out
    except (TypeError, ValueError, IndexError) as exc:
        raise BackendError(f"unexpected reply from the rate limit script: {reply!r:.200}") from exc


def refund_args(plan: Plan, indexes: Sequence[int], now_us: int) -> tuple[list[str], list[Any]]:
    """KEYS and ARGV for ``lua/refund.lua``: give back what ``plan`` charged on ``indexes``."""
    keys = [plan.keys[i] for i in indexes]
    argv: list[Any] = [now_us]
    for i in indexes:
        argv += (plan.args[3 * i], plan.args[3 * i + 2])
    return keys, argv
