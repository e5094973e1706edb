"""The Grafana dashboard in docs/grafana: well-formed, and it queries only real metrics.

Every metric name in a PromQL expression must be one that ``ratelimit.metrics.Metrics``
registers (with the ``_total``/``_bucket``/``_count``/``_sum`` sample suffixes), and every
label it filters or groups on must be a label of those series, so the dashboard cannot
drift from the code unnoticed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from ratelimit.metrics import DECISION_RESULTS, ERROR_KINDS, Metrics

DASHBOARD = Path(__file__).resolve().parents[2] / "docs" / "grafana" / "ratelimit-dashboard.json"
DATASOURCE = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}

# PromQL words that are not metric names: aggregation modifiers, set operators, offsets.
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool"}
_KEYWORDS |= {"and", "or", "unless", "offset"}
_IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_SELECTOR = re.compile(r"([A-Za-z_:][A-Za-z0-9_:]*)\s*\{([^}]*)\}")
_MATCHER = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)")


def _registered_series() -> dict[str, set[str]]:
    """Sample name -> label names, from a Metrics instance on a fresh registry."""
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    # Labelled series only produce samples once a child exists: record one of each.
    metrics.decision("r", "allowed", "asgi")
    metrics.backend_latency("redis", 0.001)
    metrics.backend_error("redis", "timeout")
    metrics.deny_cache_hit("r")
    series: dict[str, set[str]] = {}
    for family in registry.collect():
        for sample in family.samples:
            series.setdefault(sample.name, set()).update(sample.labels)
    return series


SERIES = _registered_series()


def _dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def _queries() -> Iterator[tuple[str, str, set[str]]]:
    """(where, PromQL, labels it reads besides its matchers) for targets and query variables."""
    board = _dashboard()
    for panel in _panels(board["panels"]):
        for target in panel.get("targets", []):
            yield f"panel {panel['title']!r} {target['refId']}", target["expr"], set()
    for var in board["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            found = re.fullmatch(r"label_values\((.*),\s*([A-Za-z_][A-Za-z0-9_]*)\)", query.strip())
            assert found, f"variable {var['name']}: unexpected query {query!r}"
            yield f"variable {var['name']}", found.group(1), {found.group(2)}


def _metric_names(expr: str) -> set[str]:
    """The metric names an expression selects (functions, keywords and labels removed)."""
    bare = _STRING.sub('""', expr)
    bare = re.sub(r"\{[^}]*\}", "", bare)  # label matchers
    bare = re.sub(r"\[[^\]]*\]", "", bare)  # range selectors
    bare = _GROUPING.sub("", bare)  # by (...) and friends
    names = set()
    for found in _IDENT.finditer(bare):
        rest = bare[found.end() :].lstrip()
        if rest.startswith("(") or found.group() in _KEYWORDS:
            continue  # a function call or a keyword
        if bare[found.start() - 1 : found.start()].isdigit() or found.group() in ("e", "Inf", "NaN"):
            continue
        names.add(found.group())
    return names


QUERIES = list(_queries())


def test_dashboard_is_a_grafana_json_model() -> None:
    """The file parses and has the top-level shape Grafana imports."""
    board = _dashboard()
    assert board["title"] and board["uid"]
    assert 36 <= board["schemaVersion"] <= 41
    assert board["id"] is None  # a model to import, not an export bound to one Grafana
    assert isinstance(board["panels"], list) and board["panels"]


def test_datasource_is_a_variable() -> None:
    """The data source is the DS_PROMETHEUS variable, and every query uses it."""
    board = _dashboard()
    variables = {v["name"]: v for v in board["templating"]["list"]}
    ds = variables["DS_PROMETHEUS"]
    assert ds["type"] == "datasource" and ds["query"] == "prometheus"
    for panel in _panels(board["panels"]):
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == DATASOURCE, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]
    for var in board["templating"]["list"]:
        if var["type"] == "query":
            assert var["datasource"] == DATASOURCE, var["name"]


def test_rule_and_adapter_variables() -> None:
    """Rule and adapter are multi-value query variables with an "All" option."""
    variables = {v["name"]: v for v in _dashboard()["templating"]["list"]}
    for name in ("rule", "adapter"):
        var = variables[name]
        assert var["type"] == "query" and var["multi"] and var["includeAll"], name
        assert var["allValue"] == ".*", name


def test_panels_have_unique_ids_targets_and_positions() -> None:
    """Every panel has a unique id, a grid position, and (unless a row) PromQL targets."""
    panels = list(_panels(_dashboard()["panels"]))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    occupied: set[tuple[int, int]] = set()
    for panel in panels:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24 and pos["w"] > 0 and pos["h"] > 0, panel["title"]
        xs, ys = range(pos["x"], pos["x"] + pos["w"]), range(pos["y"], pos["y"] + pos["h"])
        cells = {(x, y) for x in xs for y in ys}
        assert not cells & occupied, f"panel {panel['title']!r} overlaps another"
        occupied |= cells
        if panel["type"] == "row":
            continue
        assert panel["title"] and panel["targets"], panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        assert all(t["expr"].strip() for t in panel["targets"]), panel["title"]


@pytest.mark.parametrize(("where", "expr", "reads"), QUERIES, ids=[q[0] for q in QUERIES])
def test_queries_use_only_registered_metrics_and_labels(where: str, expr: str, reads: set[str]) -> None:
    """Each metric a query names is registered by Metrics; each label it uses exists on it."""
    names = _metric_names(expr)
    assert names, f"{where}: no metric in {expr!r}"
    unknown = names - SERIES.keys()
    assert not unknown, f"{where}: {sorted(unknown)} are not registered by Metrics (only {sorted(SERIES)})"
    for metric, matchers in _SELECTOR.findall(expr):
        for label, _, value in _MATCHER.findall(matchers):
            assert label in SERIES[metric], f"{where}: {metric} has no label {label!r}"
            if label == "result" and not value.startswith("$"):
                assert value in DECISION_RESULTS, f"{where}: result={value!r}"
            if label == "kind" and not value.startswith("$"):
                assert value in ERROR_KINDS, f"{where}: kind={value!r}"
    labels = set().union(*(SERIES[n] for n in names))
    assert reads <= labels, f"{where}: reads {sorted(reads - labels)}, which {sorted(names)} do not have"
    for grouping in _GROUPING.findall(expr):
        for label in filter(None, (part.strip() for part in grouping.split(","))):
            assert label in labels, f"{where}: grouping by {label!r}, which {sorted(names)} do not have"


def test_every_metric_family_is_on_the_dashboard() -> None:
    """Decisions, latency, errors and deny-cache hits all have a panel."""
    used = set().union(*(_metric_names(expr) for _, expr, _ in QUERIES))
    for family in (
        "ratelimit_decisions_total",
        "ratelimit_backend_latency_seconds_bucket",
        "ratelimit_backend_errors_total",
        "ratelimit_deny_cache_hits_total",
    ):
        assert family in used, family
    results = {v for _, expr, _ in QUERIES for v in re.findall(r'result="([a-z]+)"', expr)}
    assert {"denied", "shadow", "fallback"} <= results


def test_metric_name_extraction() -> None:
    """The PromQL scanner finds metric names and skips functions, labels and keywords."""
    expr = (
        'histogram_quantile(0.99, sum by (le, backend) (rate(a_bucket{x="y{z}"}[5m])))'
        " / on (backend) group_left sum(b_total offset 5m) > bool 1e3"
    )
    assert _metric_names(expr) == {"a_bucket", "b_total"}
