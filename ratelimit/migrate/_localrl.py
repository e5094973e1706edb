"""Envoy local rate limits (token buckets per pod) as native rules (sliding windows in Redis).

The bucket without descriptors becomes a rule keyed ``global``; each descriptor becomes
a rule whose ``match`` holds the conditions its entries' values need (a header value, a
path) and whose ``key`` counts its wildcard entries (one counter per value), using the
``rate_limits`` actions that produce those entries.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ._bucket import bucket_rate, other_fields, percentages
from ._found import LocalConfig, RateLimits
from ._manifest import Report, Severity, as_dict, as_list, duration, safe_name
from ._match import Match, header_condition
from ._rate_limits import action_key, clean_entry

__all__ = ["LocalRules", "translate_local"]


@dataclass
class LocalRules:
    """The rules one local config became, with its level for ``replaces``."""

    level: str
    selector: str
    base: str
    match: Match
    rules: list[dict[str, Any]] = field(default_factory=list)
    has_default: bool = False
    used: set[str] = field(default_factory=set)  # the rate_limits entries its descriptors read


class _Translator:
    """Turns one local config's descriptors into matches and keys, reporting as it goes."""

    def __init__(self, local: LocalConfig, claims: dict[str, str], report: Report) -> None:
        self.local, self.claims, self.report = local, claims, report
        self.source = local.scope.source

    def add(self, severity: Severity, where: str, message: str) -> None:
        self.report.add(self.source, severity, where, message)

    def key_for(self, action: dict[str, Any], where: str) -> tuple[str | None, Match]:
        """The key a wildcard (empty value) entry counts by, with the condition it needs."""
        name, body = next(iter(action.items()))
        body, needs = as_dict(body), Match()
        if name == "remote_address":
            return "ip", needs
        if name != "request_headers":
            return "global", needs
        header = str(body.get("header_name", "")).lower()
        pseudo = {":path": "path", ":method": "method", ":authority": "host", "host": "host"}
        if header in pseudo:
            return pseudo[header], needs
        needs.add_header(header, {"present": True})  # Envoy: no header, no descriptor, no limit
        claim = self.claims.get(header)
        if claim:
            return f"claim:{claim}", needs
        if any(word in header.replace("_", "-") for word in ("api-key", "apikey")):
            self.add(
                "note",
                where,
                f"{header} holds API keys: counted by api_key:{header}, a hash (the key never reaches Redis)",
            )
            return f"api_key:{header}", needs
        return f"header:{header}", needs

    def condition(self, action: dict[str, Any], value: str, where: str) -> Match | None:
        """What a request must satisfy for ``action`` to produce the entry value ``value``."""
        name, body = next(iter(action.items()))
        body, match = as_dict(body), Match()
        if name == "request_headers":
            problem = match.add_header(str(body.get("header_name", "")), value)
        elif name == "generic_key":
            return match if value == str(body.get("descriptor_value", "")) else None
        elif name == "remote_address":
            self.add("untranslated", where, f"a limit for the one client address {value}: not translated")
            return None
        else:  # header_value_match
            if value != str(body.get("descriptor_value", "")):
                return None
            conds = [header_condition(as_dict(h)) for h in as_list(body.get("headers"))]
            problem = next((c for c in conds if isinstance(c, str)), None)
            pairs = [c for c in conds if not isinstance(c, str)]
            if body.get("expect_match", True) is False:
                if len(pairs) != 1:
                    self.add(
                        "untranslated",
                        where,
                        "expect_match: false over several headers (none of"
                        " them may match) cannot be written as one match",
                    )
                    return None
                cond = pairs[0][1]
                cond = {**(cond if isinstance(cond, dict) else {"exact": cond})}
                cond["invert"] = not cond.get("invert", False)
                pairs = [(pairs[0][0], cond)]
            for header, cond in pairs:
                problem = problem or match.add_header(header, cond)
        if problem:
            self.add("approximated", where, problem)
        return match

    def descriptor(
        self,
        actions: list[dict[str, Any]],
        entries: list[tuple[str, str]],
        match: Match,
        scopes: list[Match],
        where: str,
    ) -> tuple[Match, Any] | None:
        """(match, key) of requests whose ``actions`` produce ``entries``; None if none can."""
        keys: list[str] = []
        for scope in scopes:
            for problem in match.and_(scope):
                self.add("approximated", where, problem)
        for action, (_, value) in zip(actions, entries, strict=True):
            if "header_value_match" in action and not value:  # a wildcard still needs the match
                value = str(as_dict(action["header_value_match"]).get("descriptor_value", ""))
            if value:
                cond = self.condition(action, value, where)
                if cond is None:
                    return None
                problems = match.and_(cond)
            else:
                key, needs = self.key_for(action, where)
                keys += [key] if key and key != "global" else []
                problems = match.and_(needs)
            for problem in problems:
                self.add("approximated", where, problem)
        if match.invalid():
            self.add("untranslated", where, f"{match.invalid()}; this descriptor was left out")
            return None
        return match, keys[0] if len(keys) == 1 else (keys or "global")


def translate_local(
    local: LocalConfig, limits: list[RateLimits], claims: dict[str, str], taken: set[str], report: Report
) -> LocalRules:
    """Rules for one LocalRateLimit config; ``limits`` are the rate_limits its descriptors may use."""
    t, cfg, scope = _Translator(local, claims, report), local.config, local.scope
    base = "-".join(p for p in (scope.source.name.rsplit("/", 1)[-1], scope.label) if p)
    where, out = local.where, LocalRules(scope.level, scope.selector, base, scope.match)
    shadow = percentages(cfg, where, t.add, translated=False)
    bucket = as_dict(cfg.get("token_bucket"))
    if not (bucket and duration(bucket.get("fill_interval"))) and not cfg.get("descriptors"):
        t.add("note", where, "no token_bucket here: nothing is limited at this level")
        return out
    if bucket and duration(bucket.get("fill_interval")):
        rate = bucket_rate(bucket, f"{where}.token_bucket", t.add)
        if rate is not None:
            out.has_default = True
            out.rules.append(_rule(safe_name(base, taken), scope.match, "global", rate, shadow))
            t.add("note", f"{where}.token_bucket", _PER_POD)
    sources = [(rl.scope.match, f, e) for rl in limits for f, _, e in rl.entries]
    if isinstance(cfg.get("rate_limits"), list):  # the filter's own (Envoy 1.33+) win over the route's
        own = [(f"{where}.rate_limits[{i}]", as_dict(e)) for i, e in enumerate(cfg["rate_limits"])]
        cleaned = [(f, clean_entry(e, f, scope.source, report)) for f, e in own]
        sources = [(Match(), f, e) for f, e in cleaned if e is not None]
    only_descriptors = cfg.get("always_consume_default_token_bucket") is False and out.has_default
    replaces = [out.rules[0]["name"]] if only_descriptors else []
    for i, desc in enumerate(as_list(cfg.get("descriptors"))):
        here, desc = f"{where}.descriptors[{i}]", as_dict(desc)
        entries = [
            (str(as_dict(e).get("key", "")), str(as_dict(e).get("value", "")))
            for e in as_list(desc.get("entries"))
        ]
        rate = bucket_rate(as_dict(desc.get("token_bucket")), f"{here}.token_bucket", t.add)
        found = False
        for scope_match, entry_where, entry in sources:
            actions = [as_dict(a) for a in as_list(entry.get("actions"))]
            if [action_key(a) for a in actions] != [k for k, _ in entries]:
                continue
            made = t.descriptor(actions, entries, Match(), [scope.match, scope_match], here)
            found = found or made is not None
            if made is not None and rate is not None:
                name = safe_name(f"{base}-{'-'.join(v or k for k, v in entries)}", taken)
                out.rules.append(_rule(name, made[0], made[1], rate, shadow, replaces))
                report.translated(scope.source, here, f"descriptor (with {entry_where}) -> rule {name}")
                out.used.add(entry_where)
        if not found:
            t.add("untranslated", here, f"no translatable rate_limits entry produces {entries}; left out")
    percentages(cfg, where, t.add, translated=bool(out.rules))
    other_fields(cfg, where, t.add)
    return out


_PER_POD = (
    "Envoy counted this bucket per pod; the rule's counter is shared by every replica: divide the limit"
    " by the replica count to keep the old total, or keep it to limit the whole service to that rate"
)


def _rule(
    name: str, match: Match, key: Any, rate: str, shadow: bool, replaces: list[str] | None = None
) -> dict[str, Any]:
    rule: dict[str, Any] = {"name": name}
    if match.config():
        rule["match"] = match.config()
    rule.update(key=key, limits=rate)
    if shadow:
        rule["shadow"] = True
    if replaces:
        rule["replaces"] = list(replaces)
    return rule
