"""``ratelimit migrate``: Istio EnvoyFilters and envoyproxy/ratelimit ConfigMaps -> a config file.

Reads YAML files holding any mix of Kubernetes objects and writes one config file
(docs/configuration.md) with a header comment listing what was translated and every
finding. Global limits keep their service config verbatim under ``envoy:`` (the
descriptor engine matches as the service did); local token buckets become ``rules:``;
RequestAuthentication ``outputClaimToHeaders`` becomes ``identity.claim_headers``.
Whatever cannot be translated is reported by name, never dropped silently.

Example::

    from ratelimit.migrate import migrate

    result = migrate(["envoyfilter.yaml", "ratelimit-configmap.yaml"])
    for finding in result.findings:
        print(finding)
    Path("limits.yaml").write_text(result.text)
"""

from __future__ import annotations

import sys
import textwrap
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._assemble import backend, envoy_entries, local_rules
from ._envoyfilter import collect_routes, read_envoyfilter
from ._found import Parsed
from ._manifest import Finding, Manifest, MigrationError, Report, as_dict, as_list, is_header, load_manifests
from ._routes import RouteTable
from ._servicecfg import ServiceConfig, read_service_configs

__all__ = ["Finding", "Migration", "MigrationError", "cli", "migrate"]


@dataclass
class Migration:
    """The result of :func:`migrate`.

    Attributes:
        config: the config document (what ``text`` holds, as a mapping).
        text: the YAML to write, with a header comment listing what was translated and
            every finding.
        findings: what could not be translated, was approximated, or is worth knowing,
            in the order of the inputs.
        translated: one line per translated piece (``EnvoyFilter ns/name field: -> where``).
    """

    config: dict[str, Any]
    text: str
    findings: list[Finding] = field(default_factory=list)
    translated: list[str] = field(default_factory=list)


def migrate(paths: Sequence[str | Path]) -> Migration:
    """Translate the manifests in ``paths`` into a config file.

    Raises :class:`MigrationError` (naming the file) when an input cannot be read or
    is not YAML.
    """
    if not paths:
        raise MigrationError("no input files")
    manifests = load_manifests(list(paths))
    report, routes, parsed = Report(), RouteTable(), Parsed()
    for m in manifests:
        if m.kind in ("VirtualService", "EnvoyFilter"):
            collect_routes(m, routes)
    services: list[ServiceConfig] = []
    claims: dict[str, str] = {}  # claim -> header
    for m in manifests:
        if m.kind == "EnvoyFilter":
            read_envoyfilter(m, routes, report, parsed)
        elif m.kind in ("ConfigMap", "ServiceConfig"):
            services += read_service_configs(m, report)
        elif m.kind == "RequestAuthentication":
            _request_authentication(m, claims, report)
        elif m.kind == "VirtualService":
            report.add(m, "note", "", "read for the paths of its named http routes")
        elif "envoyproxy/ratelimit" in str(m.body):
            report.add(
                m,
                "note",
                "",
                "the envoyproxy/ratelimit service: no longer needed once the app enforces the limits",
            )
        else:
            report.add(m, "note", "", "ignored (not a rate limit object)")
    config: dict[str, Any] = {"version": 1, "backend": backend(parsed.filters, report)}
    if claims:
        config["identity"] = {"claim_headers": claims}
    taken: set[str] = set()  # rule names
    used: set[str] = set()  # rate_limits entries that local descriptors read
    rules = local_rules(parsed, {h: c for c, h in claims.items()}, taken, used, report)
    if rules:
        config["rules"] = rules
    entries = envoy_entries(parsed, services, taken, used, report)
    if entries:
        config["envoy"] = entries
    if not rules and not entries:
        report.add(
            manifests[0] if manifests else _nothing(paths), "note", "", "no rate limit found in the inputs"
        )
    findings = report.findings()
    text = _render(config, [str(p) for p in paths], report.translations(), findings)
    return Migration(config, text, findings, report.translations())


def _nothing(paths: Sequence[str | Path]) -> Manifest:
    return Manifest("(input)", str(paths[0]), {}, str(paths[0]), (0, 0))


def _request_authentication(m: Manifest, claims: dict[str, str], report: Report) -> None:
    spec = as_dict(m.body.get("spec"))
    for i, rule in enumerate(as_list(spec.get("jwtRules"))):
        rule, where = as_dict(rule), f"spec.jwtRules[{i}]"
        for j, out in enumerate(as_list(rule.get("outputClaimToHeaders"))):
            header, claim = str(as_dict(out).get("header", "")).lower(), str(as_dict(out).get("claim", ""))
            here = f"{where}.outputClaimToHeaders[{j}]"
            if not is_header(header) or header.startswith(":") or not is_header(claim):
                report.add(
                    m, "untranslated", here, f"claim {claim!r} -> header {header!r}: not names the app reads"
                )
            elif claims.get(claim, header) != header or header in {
                h for c, h in claims.items() if c != claim
            }:
                report.add(
                    m,
                    "untranslated",
                    here,
                    f"claim {claim} -> {header} conflicts with an earlier mapping; kept the first",
                )
            else:
                claims[claim] = header
                report.translated(m, here, f"claim {claim} in header {header} -> identity.claim_headers")
        if rule.get("issuer") or rule.get("jwksUri"):
            report.add(
                m,
                "note",
                where,
                f"tokens of {rule.get('issuer', '(any issuer)')} are verified by the"
                " waypoint; the app trusts identity.claim_headers, which only the waypoint may set"
                " (without a waypoint, configure identity.jwt instead)",
            )
        if not rule.get("forwardOriginalToken"):
            report.add(
                m,
                "note",
                f"{where}.forwardOriginalToken",
                "false (the default): the app never sees the Authorization header, only the claim headers",
            )


def _render(config: dict[str, Any], inputs: list[str], translated: list[str], findings: list[Finding]) -> str:
    import yaml

    counts = Counter(f.severity for f in findings)
    summary = ", ".join(f"{counts[s]} {s}" for s in ("untranslated", "approximated", "note") if counts[s])
    lines = ["# Generated by `ratelimit migrate` from:", *(f"#   {p}" for p in inputs), "#", "# Translated:"]
    lines += [_wrap(t, "#   - ", "#     ") for t in translated] or ["#   (nothing)"]
    lines += ["#", f"# Findings ({summary or 'none'}):"]
    lines += [_wrap(str(f), "#   - ", "#     ") for f in findings]
    lines += [
        "#",
        "# backend.storage reads REDIS_URL: point it at the Redis every replica shares.",
        "# Check this file with `ratelimit check`; cut over with `shadow: true` first",
        "# (docs/migrating-from-envoyfilter.md).",
        "",
    ]

    class Dumper(yaml.SafeDumper):
        def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
            super().increase_indent(flow, False)  # lists indented under their key, as people write them

        def ignore_aliases(self, data: Any) -> bool:
            return True  # entries sharing a ConfigMap's descriptors are written out in full, no &id001

    body = yaml.dump(
        config, Dumper=Dumper, sort_keys=False, default_flow_style=False, allow_unicode=True, width=100
    )
    return "\n".join(lines) + body


def _wrap(text: str, first: str, rest: str) -> str:
    return "\n".join(
        textwrap.wrap(
            text,
            100,
            initial_indent=first,
            subsequent_indent=rest,
            break_long_words=False,
            break_on_hyphens=False,
        )
    )


def cli(paths: list[str], output: str | None) -> int:
    """``ratelimit migrate FILE... [-o OUTPUT]``: write the config, report findings on stderr.

    Returns 0, or 1 when an input cannot be read or parsed (the message names the file)
    or the output cannot be written.
    """
    try:
        result = migrate(paths)
    except MigrationError as exc:
        print(f"ratelimit migrate: error: {exc}", file=sys.stderr)
        return 1
    if output is None:
        sys.stdout.write(result.text)
    else:
        try:
            Path(output).write_text(result.text, encoding="utf-8")
        except OSError as exc:
            print(f"ratelimit migrate: error: {output}: cannot write: {exc}", file=sys.stderr)
            return 1
    for finding in result.findings:
        print(finding, file=sys.stderr)
    counts = Counter(f.severity for f in result.findings)
    print(
        f"ratelimit migrate: {counts['untranslated']} untranslated, {counts['approximated']} approximated,"
        f" {counts['note']} notes" + (f"; wrote {output}" if output else ""),
        file=sys.stderr,
    )
    return 0
