"""Charges: what a request is counted against, worked out from the rules it matched.

No I/O: the enforcer resolves key functions (sync or async) first, then plans charges
here, hands them to the limiter, and reads headers back from them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any

from .._core.rate import Rate
from ..headers import policy_name
from ..request import RequestInfo
from ..rules import Rule
from ..ruleset import Charge, ChargingRule

__all__ = ["names_for", "plan_charges", "policies", "split_charges"]

log = logging.getLogger("ratelimit")


def _identity(
    rule: Rule,
    identity: str | None,
    request: RequestInfo,
    ip_key: Callable[[RequestInfo], str | None],
    missing: str,
) -> str | None:
    """The rule's identity, or the missing-identity policy's stand-in (None: reject)."""
    if identity is not None:
        return identity
    policy = rule.missing or missing
    if policy == "ip":
        ip = ip_key(request)
        return f"ip:{ip}" if ip else "anonymous"
    if policy == "anonymous":
        return "anonymous"
    return None


def plan_charges(
    rules: Sequence[Rule | ChargingRule],
    resolved: Sequence[Sequence[str | None]],
    request: RequestInfo,
    ip_key: Callable[[RequestInfo], str | None],
    missing: str,
) -> list[Charge] | None:
    """What ``request`` is charged to; None when a rule finds no identity and rejects.

    ``resolved`` holds, per rule, the answers of its ``lookups`` (identity, then tier).
    """
    charges: list[Charge] = []
    replacing = False
    for rule, found in zip(rules, resolved, strict=True):
        if not isinstance(rule, Rule):
            charges += rule.charges(request, ip_key)
            replacing = True
            continue
        identity = _identity(rule, found[0], request, ip_key, missing)
        if identity is None:
            return None
        try:
            cost = rule.cost_of(request)
        except Exception:
            log.exception("cost function of rule %r failed; charging 1", rule.name)
            cost = 1
        # Rule names cannot contain "/", so the first "/" separates them unambiguously.
        counted = f"{rule.name}/{identity}"
        if rule.simple:
            charges.append(Charge(rule.name, counted, rule.rates, rule.policy_names, cost, rule.shadow))
            continue
        rates = rule.limits_for(identity, found[1] if len(found) > 1 else None)
        names = rule.policy_names if rates is rule.rates else names_for(rule.name, rates)
        charges.append(Charge(rule.name, counted, rates, names, cost, rule.shadow, rule.replaces))
        replacing = True
    if replacing:
        gone = frozenset().union(*(c.replaces for c in charges))
        charges = [c for c in charges if c.rates and c.label not in gone]
    return charges


def split_charges(charges: list[Charge]) -> tuple[list[Any], list[Any], list[Charge], list[Charge]]:
    """Limiter items and charges, enforcing ones apart from shadow ones."""
    items: list[Any] = []
    shadow_items: list[Any] = []
    enforcing: list[Charge] = []
    shadows: list[Charge] = []
    for c in charges:
        target, group = (shadow_items, shadows) if c.shadow else (items, enforcing)
        for rate in c.rates:
            target.append((c.counted, rate, c.cost))
        group.append(c)
    return items, shadow_items, enforcing, shadows


def policies(charges: Sequence[Charge]) -> tuple[tuple[str, ...], tuple[Rate, ...]]:
    """Policy names and rates of a request's charges, one per limit."""
    if len(charges) == 1:
        return charges[0].names, charges[0].rates
    names: tuple[str, ...] = ()
    rates: tuple[Rate, ...] = ()
    for c in charges:
        names += c.names
        rates += c.rates
    return names, rates


@lru_cache(maxsize=4096)
def names_for(rule: str, rates: tuple[Rate, ...]) -> tuple[str, ...]:
    """Policy names of a rule's per-request limits (a tier's or an override's)."""
    several = len(rates) > 1
    return tuple(policy_name(rule, r, several) for r in rates)
