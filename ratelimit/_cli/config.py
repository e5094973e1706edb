"""``ratelimit check`` and ``ratelimit inspect``: what a config file says, and what Redis holds."""

from __future__ import annotations

import sys
from typing import Any

from ..backends.base import BackendError
from ..envoy import DescriptorRule
from ..rules import Rule

__all__ = ["describe", "run_check", "run_inspect"]


def _rates(rates: Any) -> str:
    return ", ".join(str(r) for r in rates) if rates else "unlimited"


def _describe_tree(tree: Any) -> list[str]:
    """The descriptor tree, one line per descriptor, with its limit and flags."""
    lines = []
    for depth, key, value, shared, limit in tree.walk():
        text = f"{'  ' * depth}- {key}" + (f" = {value}" if value is not None else "")
        if value is not None and "*" in value:
            text += "  (one counter for all matches)" if shared else "  (a counter per matching value)"
        if limit is not None:
            text += f": {_rates(limit.rates)}"
            flags = [f"name {limit.label}"] if limit.label else []
            flags += [f"replaces {', '.join(sorted(limit.replaces))}"] if limit.replaces else []
            flags += [word for word, on in (("shadow", limit.shadow), ("quota_mode", limit.quota_mode)) if on]
            text += f"  [{'; '.join(flags)}]" if flags else ""
        lines.append(text)
    return lines


def _describe_rule(rule: Any) -> list[str]:
    if isinstance(rule, DescriptorRule):
        lines = [f"{rule.name}  (envoyproxy/ratelimit domain {rule.tree.domain!r})"]
        source = "every key path with a limit" if rule.conventional else "rate_limits actions"
        lines.append(f"    request descriptors: {len(rule.descriptors)}, from {source}")
        if rule.route.paths or rule.route.methods or rule.conditional:
            lines.append(f"    match: {' '.join(rule.route.paths) or 'every path'}")
        if rule.shadow:
            lines.append("    shadow: counts, never denies")
        lines += ["    " + line for line in _describe_tree(rule.tree)]
        quota = sum(1 for *_, limit in rule.tree.walk() if limit is not None and limit.quota_mode)
        if quota > 1:
            lines.append(
                "    quota_mode: a request whose descriptors match several quota-mode limits is denied"
                " by the service only when all are over; the app counts such limits without denying"
                " (one alone denies as usual)"
            )
        lines += [f"    note: {note}" for note in rule.tree.notes]
        return lines
    assert isinstance(rule, Rule)
    head = f"{rule.name}{'  [shadow]' if rule.shadow else ''}"
    match = []
    if rule.methods:
        match.append(",".join(sorted(rule.methods)))
    match.append(" ".join(rule.paths) if rule.paths else "every path")
    if rule.hosts:
        match.append("hosts " + ",".join(h.pattern for h in rule.hosts))
    for h in rule.headers:
        match.append(f"header {h.name} {'not ' if h.invert else ''}{h.kind} {h.value!r}")
    lines = [head, f"    match: {'; '.join(match)}", f"    key: {rule.key!r}"]
    if rule.tiers is not None:
        lines.append(f"    tiers by {rule.tiers.by!r}:")
        lines += [f"      {tier}: {_rates(r)}" for tier, r in rule.tiers.limits.items()]
        lines.append(f"      (default): {_rates(rule.tiers.default)}")
    else:
        lines.append(f"    limits: {_rates(rule.rates)}")
    lines += [f"    override {who}: {_rates(r)}" for who, r in rule.overrides.items()]
    if rule.cost != 1:
        lines.append(f"    cost: {rule.cost}")
    if rule.missing:
        lines.append(f"    missing identity: {rule.missing}")
    if rule.replaces:
        lines.append(f"    replaces: {', '.join(sorted(rule.replaces))}")
    return lines


def describe(config: Any) -> str:
    """The effective rules and settings of a loaded config, as ``check`` prints them."""
    rs = config.ruleset
    opts = config.limiter_options
    lines = [
        f"backend: {opts.get('storage', 'memory://')} (prefix {opts.get('prefix', 'rl')},"
        f" failure mode {opts.get('failure_mode', 'open')}, timeout {opts.get('timeout', 0.05) * 1000:g} ms)",
        f"identity: missing -> {rs.missing_identity}, trusted proxies {rs.trusted_proxies}",
        f"headers: RateLimit {'on' if rs.headers else 'on denials only'},"
        f" X-RateLimit-* {'on' if rs.legacy_headers else 'off'}",
        f"rules ({len(rs.rules)}):",
    ]
    for rule in rs.rules:
        lines += ["  " + line for line in _describe_rule(rule)]
    return "\n".join(lines)


def run_check(paths: list[str]) -> int:
    """Validate each file; print its effective rules, or every error. 0 if all are valid."""
    from ..config import ConfigError, load_config

    failed = 0
    for path in paths:
        try:
            config = load_config(path)
        except ConfigError as exc:
            failed += 1
            print(
                f"{path}: INVALID ({len(exc.errors)} error{'s' if len(exc.errors) != 1 else ''})",
                file=sys.stderr,
            )
            print("\n".join(exc.errors), file=sys.stderr)
            continue
        except ImportError as exc:
            print(f"ratelimit check: error: {exc}", file=sys.stderr)
            return 1
        print(f"{path}: OK\n{describe(config)}")
    return 1 if failed else 0


def _counters(rule: Any, identity: str, tier: str | None) -> list[tuple[str, str, tuple[Any, ...]]]:
    """(label, counter, limits) of ``identity`` under ``rule``; Envoy domains read ``k=v,k=v``."""
    if isinstance(rule, DescriptorRule):
        entries = [tuple(part.split("=", 1)) for part in identity.split(",") if "=" in part]
        found = rule.tree.match([(k, v) for k, v in entries]) if entries else None
        if found is None:
            return []
        charge = rule.charge_of(found)
        shared = ",".join(f"{k}={v}" for k, v in found.counter_entries)
        label = f"{rule.name} (shared counter {shared})" if found.shared else rule.name
        return [(label, charge.counted, charge.rates)]
    return [(rule.name, f"{rule.name}/{identity}", rule.limits_for(identity, tier))]


def _no_counter(rule: Any, identity: str) -> str:
    """Why ``identity`` has no counter under the Envoy domain ``rule``."""
    if not all("=" in part for part in identity.split(",")):
        return f"{identity!r} is not a descriptor (key=value,key=value)"
    return f"no limit of domain {rule.tree.domain!r} matches {identity!r}"


def _storage_shown(limiter: Any, storage: str | None) -> str:
    """The storage URL inspect reads, any password replaced by ``***``."""
    current = limiter.config.current if limiter.config is not None else None
    url = storage or (current.limiter_options.get("storage") if current is not None else None) or "memory://"
    if not isinstance(url, str):
        return type(url).__name__
    if url.startswith("memory:"):
        return f"{url} (this process only: it holds none of the app's counters)"
    from ..backends.redis._redis_urls import redact_url  # a Redis URL: the redis extra is installed

    return redact_url(url)


def run_inspect(
    path: str, identity: str, storage: str | None, rule_name: str | None, tier: str | None
) -> int:
    """Print the current usage of ``identity`` under each rule of the config (peeks: counts nothing).

    For an Envoy domain, ``identity`` is its request descriptor: ``user=ann,:path=/upload``.
    """
    from ..config import ConfigError
    from ..limiter import Limiter

    options: dict[str, Any] = {"timeout": 2.0, "deny_cache": False, "failure_mode": "closed"}
    if storage:
        options["storage"] = storage
    try:
        limiter = Limiter.from_config(path, reload=False, **options)
    except ConfigError as exc:
        print(f"{path}: INVALID\n{exc}", file=sys.stderr)
        return 1
    except (ValueError, ImportError) as exc:
        print(f"ratelimit inspect: error: {exc}", file=sys.stderr)
        return 1
    ruleset = limiter.ruleset
    assert ruleset is not None  # from_config always sets it
    rules = [r for r in ruleset.rules if rule_name in (None, r.name)]
    if not rules:
        limiter.close()
        print(f"ratelimit inspect: error: no rule named {rule_name!r} in {path}", file=sys.stderr)
        return 1
    print(f"usage of {identity!r} on {_storage_shown(limiter, storage)}:")
    try:
        for rule in rules:
            counters = _counters(rule, identity, tier)
            if not counters and isinstance(rule, DescriptorRule):
                print(f"  {rule.name}: {_no_counter(rule, identity)}")
            for label, counted, rates in counters:
                if not rates:
                    print(f"  {label}: unlimited")
                    continue
                d = limiter.peek_many([(counted, r, 0) for r in rates])
                if d.fallback:
                    raise BackendError("the backend did not answer")
                for s in d.limits:
                    used = s.rate.limit - s.remaining
                    wait = f", retry in {s.retry_after:.1f}s" if s.retry_after > 0 else ""
                    print(f"  {label} {s.rate}: used {used}, remaining {s.remaining}{wait}")
    except BackendError as exc:
        print(f"ratelimit inspect: error: {exc}", file=sys.stderr)
        return 1
    finally:
        limiter.close()
    return 0
