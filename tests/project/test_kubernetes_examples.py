"""The Kubernetes example is well-formed, its objects agree with each other, and its limits load."""

from __future__ import annotations

import asyncio
import copy
import importlib.util
import os
import posixpath
import re
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import yaml
from jsonschema import Draft202012Validator
from support.k8s_schemas import SCHEMAS

from ratelimit import Limiter
from ratelimit.config import ConfigError, load_config
from ratelimit.envoy import DescriptorRule
from ratelimit.testing import FakeClock

KUBE = Path(__file__).resolve().parents[2] / "examples" / "kubernetes"
KUSTOMIZATION = "kustomization.yaml"
CONFIG_ENV = "RATELIMIT_CONFIG"
# The ingress gateway's namespace, where its EnvoyFilters live (a workloadSelector selects
# pods of its own namespace only), and the identity the ratelimit service admits.
GATEWAY_NAMESPACE = "istio-system"
GATEWAY_PRINCIPALS = {"cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account"}
# outbound|<port>|<subset>|<service FQDN>: the cluster istiod builds for a Service port.
OUTBOUND_CLUSTER = re.compile(r"outbound\|(\d+)\|([^|]*)\|([a-z0-9-]+)\.([a-z0-9-]+)\.svc\.cluster\.local")
SERVE_DEFAULTS = {"--grpc-port": "8081", "--http-port": "8080", "--grace": "15", "--workers": "1"}


@dataclass
class Manifest:
    """One YAML document of one file: where it came from and the object it holds."""

    file: str
    index: int
    obj: dict[str, Any]

    @property
    def kind(self) -> str:
        return str(self.obj.get("kind"))

    @property
    def name(self) -> str:
        return str(self.obj.get("metadata", {}).get("name", ""))

    def __str__(self) -> str:
        return f"{self.file}#{self.index} {self.kind}" + (f"/{self.name}" if self.name else "")


def load_manifests(directory: Path = KUBE) -> list[Manifest]:
    """Every document of every YAML file under ``directory``, in file order."""
    found = []
    for path in sorted([*directory.rglob("*.yaml"), *directory.rglob("*.yml")]):
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        assert docs, f"{path} holds no YAML document"
        for i, doc in enumerate(docs):
            assert isinstance(doc, dict), f"{path} document {i} is not a mapping"
            found.append(Manifest(path.relative_to(directory).as_posix(), i, doc))
    return found


MANIFESTS = load_manifests()


def schema_problems(manifests: list[Manifest]) -> list[str]:
    """Every schema violation of every object, as readable lines."""
    out = []
    for m in manifests:
        schema = SCHEMAS.get((str(m.obj.get("apiVersion")), m.kind))
        if schema is None:
            out.append(f"{m}: no schema for {m.obj.get('apiVersion')} {m.kind}")
            continue
        for error in Draft202012Validator(schema).iter_errors(m.obj):
            out.append(f"{m}: {'.'.join(map(str, error.absolute_path)) or '<root>'}: {error.message}")
    return out


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    """Whether a non-empty label selector matches ``labels``."""
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def pod_labels(deployment: dict[str, Any]) -> dict[str, str]:
    return deployment["spec"]["template"]["metadata"].get("labels", {})


def containers(deployment: dict[str, Any]) -> list[dict[str, Any]]:
    return deployment["spec"]["template"]["spec"]["containers"]


def env_of(deployment: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for c in containers(deployment) for e in c.get("env", [])}


def consistency_problems(manifests: list[Manifest]) -> list[str]:
    """What Kubernetes and Istio would accept but the example would get wrong at run time."""
    out: list[str] = []
    of = {kind: [m for m in manifests if m.kind == kind] for kind in {m.kind for m in manifests}}
    named = {(m.kind, m.name): m.obj for m in manifests}
    deployments = [m.obj for m in of.get("Deployment", [])]

    (namespace,) = of["Namespace"]
    ns_labels = namespace.obj["metadata"].get("labels", {})
    if ns_labels.get("istio.io/dataplane-mode") != "ambient":
        out.append(f"{namespace}: not labelled istio.io/dataplane-mode=ambient")
    waypoint = named.get(("Gateway", ns_labels.get("istio.io/use-waypoint", "")))
    if waypoint is None or waypoint["spec"]["gatewayClassName"] != "istio-waypoint":
        out.append(f"{namespace}: istio.io/use-waypoint names no istio-waypoint Gateway")
    for m in manifests:
        wanted = GATEWAY_NAMESPACE if m.kind == "EnvoyFilter" else namespace.name
        if m.kind not in ("Namespace", "Kustomization") and m.obj["metadata"].get("namespace") != wanted:
            out.append(f"{m}: not in namespace {wanted}")

    for m in of.get("Deployment", []):
        if not selects(m.obj["spec"]["selector"].get("matchLabels", {}), pod_labels(m.obj)):
            out.append(f"{m}: selector does not match its pod template labels")
        account = m.obj["spec"]["template"]["spec"].get("serviceAccountName")
        if account and ("ServiceAccount", account) not in named:
            out.append(f"{m}: serviceAccountName {account} is not defined")
        out += probe_problems(m)

    for m in of.get("Service", []):
        pods = [d for d in deployments if selects(m.obj["spec"].get("selector", {}), pod_labels(d))]
        if not pods:
            out.append(f"{m}: selector selects no Deployment's pods")
        for port in m.obj["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            for d in pods:
                ports = [p for c in containers(d) for p in c.get("ports", [])]
                if target not in [p["containerPort"] for p in ports] + [p.get("name") for p in ports]:
                    out.append(f"{m}: targetPort {target} is no containerPort of {d['metadata']['name']}")

    accounts = {name for kind, name in named if kind in ("ServiceAccount", "Gateway")}
    for m in of.get("AuthorizationPolicy", []) + of.get("RequestAuthentication", []):
        selector = m.obj["spec"].get("selector", {}).get("matchLabels")
        if selector is not None and not any(selects(selector, pod_labels(d)) for d in deployments):
            out.append(f"{m}: selector selects no Deployment's pods")
        for ref in m.obj["spec"].get("targetRefs", []):
            if (ref["kind"], ref["name"]) not in named:
                out.append(f"{m}: targetRefs names no {ref['kind']} {ref['name']}")
        for rule in m.obj["spec"].get("rules", []):
            for source in rule.get("from", []):
                for principal in source["source"].get("principals", []):
                    sa = re.fullmatch(r"[^/]+/ns/([^/]+)/sa/([^/]+)", principal)
                    if principal in GATEWAY_PRINCIPALS:
                        continue
                    if not sa or sa[1] != namespace.name or sa[2] not in accounts:
                        out.append(f"{m}: principal {principal} is no service account here")

    apps = [m for m in of.get("Deployment", []) if CONFIG_ENV in env_of(m.obj)]
    if not apps:
        out.append(f"no Deployment sets {CONFIG_ENV}")
    for m in apps:
        out += app_problems(m, named, deployments, of.get("RequestAuthentication", []))
    servers = [m for m in of.get("Deployment", []) if serve_args(m.obj) is not None]
    for m in servers:
        out += serve_problems(m, named, deployments, apps)
    for m in of.get("EnvoyFilter", []):
        out += envoy_filter_problems(m, of["EnvoyFilter"], named, servers)

    # The kustomization applies everything of the example's namespace; a file of objects
    # elsewhere (the gateway's EnvoyFilters) must stay out, or `namespace:` would move them.
    (kustomization,) = of["Kustomization"]
    listed = set(kustomization.obj.get("resources", []))
    elsewhere = {x.file for x in of.get("EnvoyFilter", [])}
    files = {x.file for x in manifests} - {KUSTOMIZATION} - elsewhere
    if listed != files:
        out.append(f"{kustomization}: lists {sorted(listed)}, the manifests are {sorted(files)}")
    return out


def probe_problems(deployment: Manifest) -> list[str]:
    """Every probe hits a port its container declares (by name or number)."""
    out = []
    for c in containers(deployment.obj):
        declared = [p["containerPort"] for p in c.get("ports", [])] + [
            p.get("name") for p in c.get("ports", [])
        ]
        for kind in ("readinessProbe", "livenessProbe", "startupProbe"):
            probe = c.get(kind, {})
            for handler in ("httpGet", "tcpSocket", "grpc"):
                if handler in probe and probe[handler]["port"] not in declared:
                    out.append(
                        f"{deployment}: {kind} port {probe[handler]['port']} is no port of {c['name']}"
                    )
    return out


def serve_args(deployment: dict[str, Any]) -> dict[str, str] | None:
    """The config path and flags of a container running ``ratelimit serve``, else None."""
    for c in containers(deployment):
        argv = [*c.get("command", []), *c.get("args", [])]
        if argv[:2] == ["ratelimit", "serve"] or argv[1:4] == ["-m", "ratelimit", "serve"]:
            rest = argv[argv.index("serve") + 1 :]
            found = dict(SERVE_DEFAULTS)
            positional = []
            while rest:
                arg = rest.pop(0)
                if arg.startswith("--"):
                    found[arg] = rest.pop(0) if rest else ""
                else:
                    positional.append(arg)
            found["config"] = positional[0] if positional else ""
            return found
    return None


def config_source(
    deployment: Manifest, config_path: str, named: dict[tuple[str, str], Any], label: str = ""
) -> tuple[list[str], str | None, str]:
    """Problems with how ``config_path`` (``label``) reaches the pod, its ConfigMap and key."""
    out = []
    config_dir, config_key = posixpath.split(config_path)
    pod = deployment.obj["spec"]["template"]["spec"]
    mounts = [v for c in pod["containers"] for v in c.get("volumeMounts", [])]
    mount = next((v for v in mounts if v["mountPath"].rstrip("/") == config_dir), None)
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    if mount is None:
        problem = f"{deployment}: nothing is mounted at {config_dir}, the directory of {label or config_path}"
        return [problem], None, config_key
    if "subPath" in mount or "subPathExpr" in mount:
        out.append(f"{deployment}: the config is mounted with subPath, which never receives updates")
    source = volumes.get(mount["name"], {}).get("configMap", {}).get("name", "")
    config_map = named.get(("ConfigMap", source))
    if config_map is None:
        out.append(f"{deployment}: the volume at {config_dir} is no ConfigMap of the example")
        return out, None, config_key
    if config_key not in config_map.get("data", {}):
        out.append(f"{deployment}: ConfigMap {source} has no key {config_key}")
    return out, source, config_key


def redis_problems(
    deployment: Manifest, named: dict[tuple[str, str], Any], deployments: list[Any]
) -> list[str]:
    """REDIS_URL names the example's redis Service, on a port it serves."""
    url = urlsplit(env_of(deployment.obj).get("REDIS_URL", ""))
    host = (url.hostname or "").split(".")
    service = named.get(("Service", host[0]))
    redis_pods = [
        d
        for d in deployments
        if service
        and selects(service["spec"].get("selector", {}), pod_labels(d))
        and any(c["image"].startswith("redis:") for c in containers(d))
    ]
    ports = [p["port"] for p in (service or {}).get("spec", {}).get("ports", [])]
    if (
        not redis_pods
        or (url.port or 6379) not in ports
        or host[1:2] not in ([], [deployment.obj["metadata"]["namespace"]])
    ):
        return [f"{deployment}: REDIS_URL {url.geturl()} is not the redis Service's name and port"]
    return []


def serve_problems(
    server: Manifest, named: dict[tuple[str, str], Any], deployments: list[Any], apps: list[Manifest]
) -> list[str]:
    """The ratelimit service's wiring: the app's config and Redis, its ports, its shutdown."""
    args = serve_args(server.obj)
    assert args is not None
    out, config_map, key = config_source(server, args["config"], named)
    for app in apps:
        _, app_map, app_key = config_source(app, env_of(app.obj)[CONFIG_ENV], named)
        if (config_map, key) != (app_map, app_key):
            out.append(
                f"{server}: serves ConfigMap {config_map} key {key}, the app reads {app_map} key {app_key}"
            )
    out += redis_problems(server, named, deployments)

    pod = server.obj["spec"]["template"]["spec"]
    (container,) = [c for c in pod["containers"] if "serve" in c.get("command", []) + c.get("args", [])]
    numbers = {p["containerPort"] for p in container.get("ports", [])}
    for flag in ("--grpc-port", "--http-port"):
        if int(args[flag]) not in numbers:
            out.append(f"{server}: {flag} {args[flag]} is no containerPort")
    stop = container.get("lifecycle", {}).get("preStop", {})
    pause = stop.get("sleep", {}).get("seconds", 0)
    command = stop.get("exec", {}).get("command", [])
    if command[:1] == ["sleep"]:
        pause = int(command[1])
    grace = float(args["--grace"])
    if pod.get("terminationGracePeriodSeconds", 30) <= pause + grace:
        out.append(
            f"{server}: terminationGracePeriodSeconds {pod.get('terminationGracePeriodSeconds', 30)}"
            f" is not above the preStop pause ({pause} s) plus --grace ({grace:g} s)"
        )
    for app in apps:
        if pod.get("securityContext") != app.obj["spec"]["template"]["spec"].get("securityContext"):
            out.append(f"{server}: the pod's securityContext differs from {app.name}'s")
        (app_container,) = containers(app.obj)
        if container.get("securityContext") != app_container.get("securityContext"):
            out.append(f"{server}: the container's securityContext differs from {app.name}'s")
    return out


def envoy_filter_problems(
    envoy_filter: Manifest,
    filters: list[Manifest],
    named: dict[tuple[str, str], Any],
    servers: list[Manifest],
) -> list[str]:
    """The gateway's filter calls the ratelimit Service's gRPC port, with a domain it serves.

    The first key of every descriptor the gateway's routes send (``rate_limits`` actions of
    any EnvoyFilter) must be a top-level key of that domain, or no limit ever applies.
    """
    out = []
    first_keys = {
        body["descriptor_key"]
        for f in filters
        for patch in f.obj["spec"]["configPatches"]
        for limits in patch["patch"].get("value", {}).get("rate_limits", [])
        for body in limits["actions"][0].values()
        if "descriptor_key" in body
    }
    for patch in envoy_filter.obj["spec"]["configPatches"]:
        value = patch["patch"].get("value", {})
        config = value.get("typed_config", {})
        if value.get("name") != "envoy.filters.http.ratelimit":
            continue
        grpc_service = config["rate_limit_service"]["grpc_service"]["envoy_grpc"]
        cluster = OUTBOUND_CLUSTER.fullmatch(grpc_service["cluster_name"])
        if cluster is None:
            out.append(f"{envoy_filter}: cluster_name {grpc_service['cluster_name']} is no outbound cluster")
            continue
        port, _, name, namespace = int(cluster[1]), cluster[2], cluster[3], cluster[4]
        host = f"{name}.{namespace}.svc.cluster.local"
        if grpc_service.get("authority", host) != host:
            out.append(f"{envoy_filter}: authority {grpc_service['authority']} is not {host}")
        service = named.get(("Service", name))
        if service is None or service["metadata"]["namespace"] != namespace:
            out.append(f"{envoy_filter}: cluster_name names no Service {name} in namespace {namespace}")
            continue
        (service_port,) = [p for p in service["spec"]["ports"] if p["port"] == port] or [None]
        if service_port is None:
            out.append(f"{envoy_filter}: cluster_name names port {port}, which Service {name} lacks")
            continue
        if service_port.get("appProtocol") != "grpc" and not str(service_port.get("name", "")).startswith(
            "grpc"
        ):
            out.append(f"{envoy_filter}: port {port} of Service {name} is not declared gRPC (HTTP/2)")
        backends = [s for s in servers if selects(service["spec"].get("selector", {}), pod_labels(s.obj))]
        if not backends:
            out.append(f"{envoy_filter}: Service {name} selects no pod running ratelimit serve")
        for s in backends:
            args = serve_args(s.obj)
            assert args is not None
            target = service_port.get("targetPort", port)
            by_name = {
                p.get("name"): p["containerPort"] for c in containers(s.obj) for p in c.get("ports", [])
            }
            if by_name.get(target, target) != int(args["--grpc-port"]):
                out.append(
                    f"{envoy_filter}: port {port} of Service {name} does not reach --grpc-port of {s.name}"
                )
            _, config_map, key = config_source(s, args["config"], named)
            text = named.get(("ConfigMap", config_map or ""), {}).get("data", {}).get(key, "")
            domains = {e.get("domain"): e for e in (yaml.safe_load(text) or {}).get("envoy", [])}
            if config["domain"] not in domains:
                out.append(
                    f"{envoy_filter}: domain {config['domain']} is no envoy domain of {s.name}'s config"
                )
                continue
            keys = {d["key"] for d in domains[config["domain"]].get("descriptors", [])}
            if first_keys - keys:
                out.append(
                    f"{envoy_filter}: the gateway sends descriptor keys {sorted(first_keys - keys)},"
                    f" which domain {config['domain']} has not"
                )
    return out


def app_problems(
    app: Manifest, named: dict[tuple[str, str], Any], deployments: list[Any], auths: list[Manifest]
) -> list[str]:
    """The rate-limited app's wiring: its config mount, its Redis, its claim headers."""
    out, source, config_key = config_source(app, env_of(app.obj)[CONFIG_ENV], named, CONFIG_ENV)
    config_map = named.get(("ConfigMap", source or ""))
    out += redis_problems(app, named, deployments)

    if config_map is not None and config_key in config_map.get("data", {}):
        identity = yaml.safe_load(config_map["data"][config_key]).get("identity", {})
        wanted = {k: v.lower() for k, v in identity.get("claim_headers", {}).items()}
        written = {
            out_claim["claim"]: out_claim["header"].lower()
            for m in auths
            for rule in m.obj["spec"]["jwtRules"]
            for out_claim in rule.get("outputClaimToHeaders", [])
        }
        if wanted != written:
            out.append(f"claim_headers {wanted} differ from the waypoint's outputClaimToHeaders {written}")
    return out


def config_text(manifests: list[Manifest] = MANIFESTS) -> tuple[str, str]:
    """The app's config file name and the text the ConfigMap gives it."""
    (app,) = [m.obj for m in manifests if m.kind == "Deployment" and CONFIG_ENV in env_of(m.obj)]
    key = posixpath.basename(env_of(app)[CONFIG_ENV])
    (text,) = [
        m.obj["data"][key] for m in manifests if m.kind == "ConfigMap" and key in m.obj.get("data", {})
    ]
    return key, text


def test_every_manifest_file_parses() -> None:
    """Each YAML file holds mappings with a kind, and the example has every expected file."""
    files = {m.file for m in MANIFESTS}
    assert files >= {
        "namespace.yaml",
        "waypoint.yaml",
        "request-authentication.yaml",
        "redis.yaml",
        "limits-configmap.yaml",
        "app.yaml",
        "ratelimit-service.yaml",
        "envoyfilter-ingress.yaml",
        KUSTOMIZATION,
    }
    assert all(m.obj.get("kind") for m in MANIFESTS)


@pytest.mark.parametrize("manifest", MANIFESTS, ids=str)
def test_object_matches_its_schema(manifest: Manifest) -> None:
    """Every object fits the schema of its kind: no unknown fields, no missing ones."""
    assert schema_problems([manifest]) == []


def test_schemas_are_valid_json_schemas() -> None:
    """The hand-written schemas are themselves valid draft 2020-12 schemas."""
    for schema in SCHEMAS.values():
        Draft202012Validator.check_schema(schema)


def test_manifests_agree_with_each_other() -> None:
    """Selectors, ports, mounts, Redis URL, claim headers and the kustomization line up."""
    assert consistency_problems(MANIFESTS) == []


def test_limits_config_passes_validation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The ConfigMap's limits.yaml loads with the project's own config validation."""
    key, text = config_text()
    (app,) = [m.obj for m in MANIFESTS if m.kind == "Deployment" and CONFIG_ENV in env_of(m.obj)]
    monkeypatch.setenv("REDIS_URL", env_of(app)["REDIS_URL"])
    path = tmp_path / key
    path.write_text(text)
    config = load_config(path)
    assert config.limiter_options["storage"] == env_of(app)["REDIS_URL"]
    assert [r.name for r in config.ruleset.rules] == [
        "api-per-user",
        "login",
        "search-shadow",
        "cart-grpc",
        "envoy-ratelimit",
    ]
    assert config.ruleset.trusted_proxies == 1
    # The gateway's domain: the one its EnvoyFilter names, keyed by the descriptor it sends,
    # and never charged by the app (every request the gateway counted reaches the app next).
    (domain,) = [r for r in config.ruleset.rules if isinstance(r, DescriptorRule)]
    assert domain.tree.domain == gateway_filter()["domain"]
    assert domain.descriptors == []
    assert domain.charge([("PATH", "/login")]) is not None
    assert domain.charge([("PATH", "/api/items")]) is not None


def test_limits_config_validation_catches_a_typo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A misspelled key in a copy of limits.yaml is refused, naming the key."""
    key, text = config_text()
    monkeypatch.setenv("REDIS_URL", "memory://")
    path = tmp_path / key
    path.write_text(text.replace("claim_headers:", "claim_header:"))
    with pytest.raises(ConfigError, match="unknown key 'claim_header'"):
        load_config(path)


def gateway_filter() -> dict[str, Any]:
    """The typed_config of the ingress gateway's rate limit filter (envoyfilter-ingress.yaml)."""
    (config,) = [
        patch["patch"]["value"]["typed_config"]
        for m in MANIFESTS
        if m.kind == "EnvoyFilter"
        for patch in m.obj["spec"]["configPatches"]
        if patch["patch"].get("value", {}).get("name") == "envoy.filters.http.ratelimit"
    ]
    return config


def gateway_rate_limits() -> list[dict[str, Any]]:
    """The ``rate_limits`` the gateway's routes get (the descriptors it sends)."""
    (limits,) = [
        patch["patch"]["value"]["rate_limits"]
        for m in MANIFESTS
        if m.kind == "EnvoyFilter"
        for patch in m.obj["spec"]["configPatches"]
        if "rate_limits" in patch["patch"].get("value", {})
    ]
    return limits


def test_envoy_filter_is_the_istio_tasks_but_for_the_namespace() -> None:
    """The gateway's filter is Istio's rate-limit task's, the Service's namespace aside."""
    config = gateway_filter()
    grpc_service = config["rate_limit_service"]["grpc_service"]["envoy_grpc"]
    assert grpc_service["cluster_name"] == "outbound|8081||ratelimit.shop.svc.cluster.local"
    assert grpc_service["authority"] == "ratelimit.shop.svc.cluster.local"
    assert (config["domain"], config["failure_mode_deny"], config["timeout"]) == ("ratelimit", True, "10s")
    assert config["rate_limit_service"]["transport_api_version"] == "V3"
    assert gateway_rate_limits() == [
        {"actions": [{"request_headers": {"header_name": ":path", "descriptor_key": "PATH"}}]}
    ]


def test_app_compiles() -> None:
    """app/main.py is valid Python and loads its limits from RATELIMIT_CONFIG."""
    path = KUBE / "app" / "main.py"
    source = path.read_text()
    compile(source, str(path), "exec")
    assert f'os.environ.get("{CONFIG_ENV}"' in source


def test_dockerfile_matches_the_deployment() -> None:
    """The image runs as the numeric non-root user and on the port the Deployment expects."""
    text = (KUBE / "Dockerfile").read_text()
    (app,) = [m.obj for m in MANIFESTS if m.kind == "Deployment" and CONFIG_ENV in env_of(m.obj)]
    user = re.search(r"^USER (\d+)", text, re.MULTILINE)
    assert user is not None
    assert int(user[1]) == app["spec"]["template"]["spec"]["securityContext"]["runAsUser"] != 0
    (port,) = [p["containerPort"] for c in containers(app) for p in c["ports"]]
    assert f'"--port", "{port}"' in text
    # The ratelimit service runs the same image, whose requirements bring `ratelimit serve`.
    server = find(MANIFESTS, "Deployment", "ratelimit")
    assert containers(server)[0]["image"] == containers(app)[0]["image"]
    assert "COPY app/requirements.txt" in text
    requirements = (KUBE / "app" / "requirements.txt").read_text()
    extras = re.search(r"^ambient-ratelimit\[([^\]]*)\]", requirements, re.MULTILINE)
    assert extras is not None and "serve" in extras[1].split(",")


def find(manifests: list[Manifest], kind: str, name: str) -> dict[str, Any]:
    return next(m.obj for m in manifests if (m.kind, m.name) == (kind, name))


def app_container(manifests: list[Manifest]) -> dict[str, Any]:
    return containers(find(manifests, "Deployment", "shop-api"))[0]


def set_env(manifests: list[Manifest], name: str, value: str) -> None:
    (var,) = [e for e in app_container(manifests)["env"] if e["name"] == name]
    var["value"] = value


def rename(mapping: dict[str, Any], old: str, new: str) -> None:
    mapping[new] = mapping.pop(old)


def jwt_rule(manifests: list[Manifest]) -> dict[str, Any]:
    return find(manifests, "RequestAuthentication", "shop-jwt")["spec"]["jwtRules"][0]


def config_mount(manifests: list[Manifest]) -> dict[str, Any]:
    return app_container(manifests)["volumeMounts"][0]


def waypoint_only_source(manifests: list[Manifest]) -> dict[str, Any]:
    policy = find(manifests, "AuthorizationPolicy", "shop-api-only-via-waypoint")
    return policy["spec"]["rules"][0]["from"][0]["source"]


def serve_container(manifests: list[Manifest]) -> dict[str, Any]:
    return containers(find(manifests, "Deployment", "ratelimit"))[0]


def set_serve_arg(manifests: list[Manifest], flag: str, value: str) -> None:
    command = serve_container(manifests)["command"]
    command[command.index(flag) + 1] = value


def grpc_port(manifests: list[Manifest]) -> dict[str, Any]:
    return find(manifests, "Service", "ratelimit")["spec"]["ports"][0]


def filter_service(manifests: list[Manifest]) -> dict[str, Any]:
    return find(manifests, "EnvoyFilter", "filter-ratelimit")["spec"]["configPatches"][0]["patch"]["value"][
        "typed_config"
    ]


def set_limits_text(manifests: list[Manifest], old: str, new: str) -> None:
    data = find(manifests, "ConfigMap", "shop-ratelimits")["data"]
    assert old in data["limits.yaml"]
    data["limits.yaml"] = data["limits.yaml"].replace(old, new)


Mutation = Callable[[list[Manifest]], None]
BROKEN: dict[str, tuple[Mutation, str]] = {
    "misspelled-claim-field": (
        lambda ms: rename(jwt_rule(ms), "outputClaimToHeaders", "outputClaimToHeader"),
        "'outputClaimToHeader' was unexpected",
    ),
    "misspelled-container-field": (
        lambda ms: rename(app_container(ms), "readinessProbe", "readinesProbe"),
        "'readinesProbe' was unexpected",
    ),
    "unknown-port-protocol": (
        lambda ms: find(ms, "Service", "shop-api")["spec"]["ports"][0].update(protocol="HTTP"),
        "'HTTP' is not one of",
    ),
    "missing-required-field": (
        lambda ms: find(ms, "Gateway", "waypoint")["spec"].pop("listeners"),
        "'listeners' is a required property",
    ),
    "unknown-api-version": (
        lambda ms: find(ms, "AuthorizationPolicy", "shop-api-require-jwt").update(
            apiVersion="security.istio.io/v2"
        ),
        "no schema for security.istio.io/v2",
    ),
    "service-selects-nothing": (
        lambda ms: find(ms, "Service", "shop-api")["spec"].update(selector={"app": "shop-apii"}),
        "Service/shop-api: selector selects no Deployment's pods",
    ),
    "target-port-not-a-container-port": (
        lambda ms: find(ms, "Service", "shop-api")["spec"]["ports"][0].update(targetPort=8080),
        "targetPort 8080 is no containerPort",
    ),
    "deployment-selector-mismatch": (
        lambda ms: find(ms, "Deployment", "redis")["spec"]["selector"].update(matchLabels={"app": "cache"}),
        "selector does not match its pod template labels",
    ),
    "subpath-config-mount": (
        lambda ms: config_mount(ms).update(subPath="limits.yaml"),
        "mounted with subPath",
    ),
    "subpath-file-mount": (
        lambda ms: config_mount(ms).update(mountPath="/etc/ratelimit/limits.yaml", subPath="limits.yaml"),
        "nothing is mounted at /etc/ratelimit",
    ),
    "volume-names-other-configmap": (
        lambda ms: find(ms, "ConfigMap", "shop-ratelimits")["metadata"].update(name="ratelimits"),
        "is no ConfigMap of the example",
    ),
    "redis-url-wrong-host": (
        lambda ms: set_env(ms, "REDIS_URL", "redis://redis-master:6379/0"),
        "REDIS_URL redis://redis-master:6379/0",
    ),
    "redis-url-wrong-port": (
        lambda ms: set_env(ms, "REDIS_URL", "redis://redis:6380/0"),
        "REDIS_URL redis://redis:6380/0",
    ),
    "claim-header-mismatch": (
        lambda ms: jwt_rule(ms)["outputClaimToHeaders"][1].update(header="x-plan"),
        "differ from the waypoint's outputClaimToHeaders",
    ),
    "kustomization-forgets-a-file": (
        lambda ms: find(ms, "Kustomization", "")["resources"].remove("redis.yaml"),
        "kustomization.yaml#0 Kustomization: lists",
    ),
    "namespace-not-ambient": (
        lambda ms: find(ms, "Namespace", "shop")["metadata"]["labels"].pop("istio.io/dataplane-mode"),
        "not labelled istio.io/dataplane-mode=ambient",
    ),
    "object-in-other-namespace": (
        lambda ms: find(ms, "Service", "redis")["metadata"].update(namespace="default"),
        "Service/redis: not in namespace shop",
    ),
    "cluster-names-the-default-namespace": (
        lambda ms: filter_service(ms)["rate_limit_service"]["grpc_service"]["envoy_grpc"].update(
            cluster_name="outbound|8081||ratelimit.default.svc.cluster.local"
        ),
        "cluster_name names no Service ratelimit in namespace default",
    ),
    "authority-differs-from-cluster": (
        lambda ms: filter_service(ms)["rate_limit_service"]["grpc_service"]["envoy_grpc"].update(
            authority="ratelimit.default.svc.cluster.local"
        ),
        "authority ratelimit.default.svc.cluster.local is not ratelimit.shop.svc.cluster.local",
    ),
    "service-port-not-the-clusters": (
        lambda ms: grpc_port(ms).update(port=9091),
        "cluster_name names port 8081, which Service ratelimit lacks",
    ),
    "service-port-not-grpc": (
        lambda ms: grpc_port(ms).update(name="tcp-ratelimit", appProtocol="tcp"),
        "port 8081 of Service ratelimit is not declared gRPC",
    ),
    "service-port-reaches-the-http-port": (
        lambda ms: grpc_port(ms).update(targetPort="http"),
        "does not reach --grpc-port of ratelimit",
    ),
    "filter-names-another-domain": (
        lambda ms: filter_service(ms).update(domain="productpage-ratelimit"),
        "domain productpage-ratelimit is no envoy domain",
    ),
    "domain-lacks-the-sent-key": (
        lambda ms: set_limits_text(ms, "- key: PATH\n", "- key: path\n"),
        "the gateway sends descriptor keys ['PATH']",
    ),
    "serve-reads-another-key": (
        # the argument after `serve` is the config file
        lambda ms: set_serve_arg(ms, "serve", "/etc/ratelimit/config.yaml"),
        "ConfigMap shop-ratelimits has no key config.yaml",
    ),
    "serve-reads-another-configmap": (
        lambda ms: find(ms, "Deployment", "ratelimit")["spec"]["template"]["spec"]["volumes"][0][
            "configMap"
        ].update(name="ratelimit-config"),
        "the volume at /etc/ratelimit is no ConfigMap of the example",
    ),
    "serve-redis-url-wrong-host": (
        lambda ms: serve_container(ms)["env"][0].update(value="redis://localhost:6379/0"),
        "Deployment/ratelimit: REDIS_URL redis://localhost:6379/0",
    ),
    "serve-grpc-port-not-declared": (
        lambda ms: set_serve_arg(ms, "--grpc-port", "9081"),
        "--grpc-port 9081 is no containerPort",
    ),
    "probe-on-an-undeclared-port": (
        lambda ms: serve_container(ms)["readinessProbe"]["grpc"].update(port=9081),
        "readinessProbe port 9081 is no port of ratelimit",
    ),
    "grace-above-termination-period": (
        lambda ms: set_serve_arg(ms, "--grace", "30"),
        "terminationGracePeriodSeconds 30 is not above the preStop pause (5 s) plus --grace (30 s)",
    ),
    "serve-runs-as-another-user": (
        lambda ms: find(ms, "Deployment", "ratelimit")["spec"]["template"]["spec"]["securityContext"].update(
            runAsUser=0
        ),
        "Deployment/ratelimit: the pod's securityContext differs from shop-api's",
    ),
    "envoyfilter-in-the-apps-namespace": (
        lambda ms: find(ms, "EnvoyFilter", "filter-ratelimit")["metadata"].update(namespace="shop"),
        "EnvoyFilter/filter-ratelimit: not in namespace istio-system",
    ),
    "kustomization-lists-the-envoyfilter": (
        lambda ms: find(ms, "Kustomization", "")["resources"].append("envoyfilter-ingress.yaml"),
        "kustomization.yaml#0 Kustomization: lists",
    ),
    "misspelled-envoyfilter-field": (
        lambda ms: rename(
            find(ms, "EnvoyFilter", "filter-ratelimit")["spec"]["configPatches"][0]["match"],
            "context",
            "contxt",
        ),
        "'contxt' was unexpected",
    ),
    "ratelimit-admits-another-namespace": (
        lambda ms: find(ms, "AuthorizationPolicy", "ratelimit-only-from-ingress-gateway")["spec"]["rules"][0][
            "from"
        ][0]["source"].update(principals=["cluster.local/ns/default/sa/default"]),
        "principal cluster.local/ns/default/sa/default",
    ),
    "principal-names-no-account": (
        lambda ms: waypoint_only_source(ms).update(principals=["cluster.local/ns/shop/sa/waypont"]),
        "principal cluster.local/ns/shop/sa/waypont",
    ),
}


@pytest.mark.parametrize(("mutate", "expected"), BROKEN.values(), ids=BROKEN.keys())
def test_checks_catch_a_broken_copy(mutate: Mutation, expected: str) -> None:
    """A copy of the manifests with one mistake fails the checks, naming that mistake."""
    broken = copy.deepcopy(MANIFESTS)
    mutate(broken)
    found = schema_problems(broken) + consistency_problems(broken)
    assert any(expected in problem for problem in found), found


def test_checks_catch_a_broken_file(tmp_path: Path) -> None:
    """A mistake written into a copy of the files is caught through the loading path too."""
    for path in KUBE.rglob("*"):
        if path.is_file():
            (tmp_path / path.relative_to(KUBE)).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / path.relative_to(KUBE)).write_bytes(path.read_bytes())
    app = tmp_path / "app.yaml"
    text = app.read_text()
    assert "mountPath: /etc/ratelimit\n" in text
    app.write_text(
        text.replace("mountPath: /etc/ratelimit\n", "mountPath: /etc/ratelimit\n              subPath: x\n")
    )
    problems = consistency_problems(load_manifests(tmp_path))
    assert any("mounted with subPath" in p for p in problems), problems


def kubelet_update(volume: Path, files: dict[str, str], generation: int) -> None:
    """Write ``files`` into ``volume`` the way the kubelet updates a ConfigMap volume.

    The data goes into a new hidden directory, then the ``..data`` symlink is renamed
    onto it in one step; each key is a symlink through ``..data`` (made once).
    """
    target = volume / f"..2025_01_01_00_00_{generation:02d}.000000001"
    target.mkdir()
    for name, text in files.items():
        (target / name).write_text(text)
    (volume / "..data_tmp").symlink_to(target.name)
    os.replace(volume / "..data_tmp", volume / "..data")
    for name in files:
        if not (volume / name).is_symlink():
            (volume / name).symlink_to(f"..data/{name}")


@pytest.fixture
def shop_api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[ModuleType, Path]]:
    """app/main.py imported as the pod runs it, on the memory backend and a fake clock."""
    key, text = config_text()
    volume = tmp_path / "ratelimit"
    volume.mkdir()
    kubelet_update(volume, {key: text}, 1)
    monkeypatch.setenv(CONFIG_ENV, str(volume / key))
    monkeypatch.setenv("REDIS_URL", "memory://")
    clock = FakeClock()
    from_config = Limiter.from_config.__func__  # type: ignore[attr-defined]
    monkeypatch.setattr(
        Limiter, "from_config", classmethod(lambda cls, path, **kw: from_config(cls, path, clock=clock, **kw))
    )
    spec = importlib.util.spec_from_file_location("shop_api_main", KUBE / "app" / "main.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module, volume
    module.limiter.close()


async def hits(
    client: httpx.AsyncClient, n: int, headers: dict[str, str], path: str = "/api/items", method: str = "GET"
) -> list[int]:
    return [(await client.request(method, path, headers=headers)).status_code for _ in range(n)]


def client_of(module: ModuleType) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=module.app), base_url="http://shop-api")


def test_app_enforces_the_configmap_limits(shop_api: tuple[ModuleType, Path]) -> None:
    """Tiers by the waypoint's plan header, login per forwarded IP, a shadow rule that never denies."""
    module, _ = shop_api

    async def scenario() -> None:
        async with client_of(module) as client:
            assert (await client.get("/healthz")).status_code == 200
            free = {"x-user-id": "alice", "x-user-plan": "free"}
            assert await hits(client, 101, free) == [200] * 100 + [429]
            assert await hits(client, 51, {"x-user-id": "bob"}) == [200] * 50 + [429]
            assert await hits(client, 120, {"x-user-id": "carol", "x-user-plan": "pro"}) == [200] * 120
            allowed = await client.get("/api/items", headers={"x-user-id": "dave"})
            assert allowed.headers["RateLimit-Policy"] == '"api-per-user";q=50;w=60'
            # Shadow: 2/second is counted and reported, never enforced.
            search = {"x-user-id": "erin", "x-user-plan": "pro"}
            assert await hits(client, 10, search, "/api/search") == [200] * 10
            # The waypoint appends the peer it saw; whatever the client put before that is ignored.
            assert await hits(client, 5, {"x-forwarded-for": "203.0.113.7"}, "/login", "POST") == [200] * 5
            spoofed = {"x-forwarded-for": "198.51.100.1, 203.0.113.7"}
            assert await hits(client, 1, spoofed, "/login", "POST") == [429]
            assert await hits(client, 1, {"x-forwarded-for": "203.0.113.8"}, "/login", "POST") == [200]
            metrics = (await client.get("/metrics")).text
            assert 'ratelimit_decisions_total{adapter="asgi",result="denied",rule="login"}' in metrics
            assert 'ratelimit_backend_latency_seconds_count{backend="memory"}' in metrics

    asyncio.run(scenario())


def test_app_reloads_a_swapped_configmap(shop_api: tuple[ModuleType, Path]) -> None:
    """A kubelet-style swap of the mounted ConfigMap changes the limits and keeps the counters."""
    module, volume = shop_api
    key, text = config_text()
    assert "free: 100/minute" in text
    free = {"x-user-id": "frank", "x-user-plan": "free"}

    async def scenario() -> None:
        async with client_of(module) as client:
            assert await hits(client, 5, free) == [200] * 5
            kubelet_update(volume, {key: text.replace("free: 100/minute", "free: 7/minute")}, 2)
            module.limiter.reload_config()  # what the file watcher does within 2 s
            assert await hits(client, 3, free) == [200, 200, 429]
            kubelet_update(volume, {key: text.replace("free: 100/minute", "free: lots")}, 3)
            assert module.limiter.reload_config() is False
            grace = {"x-user-id": "grace", "x-user-plan": "free"}
            assert await hits(client, 8, grace) == [200] * 7 + [429]

    asyncio.run(scenario())


def serve_helpers() -> ModuleType:
    """tests/serve/conftest.py's server process and client helpers (skips without the serve extra)."""
    pytest.importorskip("grpc")
    pytest.importorskip("envoy.service.ratelimit.v3.rls_pb2_grpc")
    path = KUBE.parents[1] / "tests" / "serve" / "conftest.py"
    spec = importlib.util.spec_from_file_location("kube_serve_helpers", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def own_prefix(text: str) -> str:
    """The ConfigMap's limits.yaml under a key prefix of this test's own (Redis is shared)."""
    assert text.count("\n  prefix: shop\n") == 1
    return text.replace("\n  prefix: shop\n", f"\n  prefix: shop-{uuid.uuid4().hex[:10]}\n")


def away_from_minute_edge() -> None:
    """Start well inside a minute, so a sliding window's weighting cannot blur the counts."""
    if time.time() % 60 > 55:
        time.sleep(60 - time.time() % 60 + 0.1)


def test_serve_answers_the_gateway_from_the_configmap(
    tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`ratelimit serve` on the ConfigMap's file, as ratelimit-service.yaml runs it, answers the
    gateway's descriptors; and the app, given the gateway's action, charges the same counters."""
    helpers = serve_helpers()
    rls_pb2 = helpers.rls_pb2
    key, text = config_text()
    text = own_prefix(text)
    path = tmp_path / key
    path.write_text(text)
    args = serve_args(find(MANIFESTS, "Deployment", "ratelimit"))
    assert args is not None and posixpath.basename(args["config"]) == key
    domain = gateway_filter()["domain"]
    sent = gateway_rate_limits()[0]["actions"][0]["request_headers"]["descriptor_key"]
    (entry,) = yaml.safe_load(text)["envoy"]
    (login,) = [d for d in entry["descriptors"] if d.get("value") == "/login"]
    limit = login["rate_limit"]["requests_per_unit"]

    # The app as the pod runs it, but charging the domain with the gateway's own action.
    moved = yaml.safe_load(text)
    moved["envoy"][0]["rate_limits"] = gateway_rate_limits()
    app_config = tmp_path / "app" / key
    app_config.parent.mkdir()
    app_config.write_text(yaml.safe_dump(moved))
    monkeypatch.setenv(CONFIG_ENV, str(app_config))
    monkeypatch.setenv("REDIS_URL", redis_url)
    spec = importlib.util.spec_from_file_location("shop_api_main_serve", KUBE / "app" / "main.py")
    assert spec is not None and spec.loader is not None
    app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app)

    server = helpers.start(path, "--grace", args["--grace"], env={"REDIS_URL": redis_url})
    try:
        assert f"domains={domain} " in server.log, server.log
        away_from_minute_edge()
        OK, OVER = rls_pb2.RateLimitResponse.OK, rls_pb2.RateLimitResponse.OVER_LIMIT
        # The gateway's filter sends one descriptor per request: (PATH, :path).
        first = server.ask([(sent, "/login")], domain=domain, hits=limit)
        assert first.overall_code == OK
        assert first.statuses[0].current_limit.requests_per_unit == limit
        assert first.statuses[0].limit_remaining == 0
        over = server.ask([(sent, "/login")], domain=domain)
        assert over.overall_code == OVER
        assert over.statuses[0].code == OVER
        headers = {h.key.lower(): h.value for h in over.response_headers_to_add}
        assert "retry-after" in headers and "ratelimit-policy" in headers
        # Other paths have counters of their own; an unknown domain is let through, as upstream.
        assert server.ask([(sent, "/api/items")], domain=domain).overall_code == OK
        assert server.ask([(sent, "/login")], domain="productpage-ratelimit").overall_code == OK

        async def the_app_sees_the_same_counter() -> list[int]:
            async with client_of(app) as client:
                return [
                    (await client.post("/login")).status_code,
                    (await client.get("/api/items", headers={"x-user-id": "ivy"})).status_code,
                ]

        assert asyncio.run(the_app_sees_the_same_counter()) == [429, 200]
    finally:
        server.channel.close()
        code = server.stop()
        app.limiter.close()
    assert code == 0, server.log
