"""JSON schemas for the Kubernetes objects of examples/kubernetes, keyed by (apiVersion, kind).

Each models the subset of the real API the examples use or plausibly would, with
``additionalProperties: false`` wherever it is modelled, so a misspelled field fails
instead of being silently dropped the way ``kubectl apply`` drops unknown fields of
some CRDs. Extend a schema when an example needs a field it does not list yet.
"""

from __future__ import annotations

from typing import Any

Schema = dict[str, Any]

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
LABEL_KEY = r"^(" + DNS_SUBDOMAIN[1:-1] + r"/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"


def obj(properties: Schema, required: tuple[str, ...] = (), **extra: Any) -> Schema:
    """A closed object: only ``properties``, with ``required`` ones present."""
    return {
        "type": "object",
        "properties": properties,
        "required": list(required),
        "additionalProperties": False,
        **extra,
    }


def array(items: Schema, min_items: int = 0) -> Schema:
    """An array of ``items``, at least ``min_items`` long."""
    return {"type": "array", "items": items, "minItems": min_items}


def one_of_keys(*keys: str) -> Schema:
    """Exactly one of ``keys`` is present (a Kubernetes union, such as a probe's handler)."""
    return {"oneOf": [{"required": [key]} for key in keys]}


STR: Schema = {"type": "string"}
STRS = array(STR)
BOOL: Schema = {"type": "boolean"}
NONNEG: Schema = {"type": "integer", "minimum": 0}
POSITIVE: Schema = {"type": "integer", "minimum": 1}
NAME: Schema = {"type": "string", "pattern": DNS_LABEL, "maxLength": 63}
SUBDOMAIN: Schema = {"type": "string", "pattern": DNS_SUBDOMAIN, "maxLength": 253}
LABELS: Schema = {
    "type": "object",
    "propertyNames": {"pattern": LABEL_KEY},
    "additionalProperties": {"type": "string", "pattern": LABEL_VALUE, "maxLength": 63},
}
STRING_MAP: Schema = {"type": "object", "additionalProperties": STR}
PORT_NUMBER: Schema = {"type": "integer", "minimum": 1, "maximum": 65535}
PORT_NAME: Schema = {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 15}
PORT: Schema = {"oneOf": [PORT_NUMBER, PORT_NAME]}
PROTOCOL: Schema = {"enum": ["TCP", "UDP", "SCTP"]}
QUANTITY: Schema = {
    "oneOf": [NONNEG, {"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|Ki|Mi|Gi|Ti|Pi)?$"}]
}
SELECTOR = obj(
    {
        "matchLabels": LABELS,
        "matchExpressions": array(
            obj(
                {"key": STR, "operator": {"enum": ["In", "NotIn", "Exists", "DoesNotExist"]}, "values": STRS},
                ("key", "operator"),
            )
        ),
    }
)
SECCOMP = obj(
    {"type": {"enum": ["RuntimeDefault", "Localhost", "Unconfined"]}, "localhostProfile": STR}, ("type",)
)


def metadata(namespaced: bool) -> Schema:
    """ObjectMeta as written in a manifest: a name, a namespace when the kind has one."""
    props: Schema = {"name": SUBDOMAIN, "labels": LABELS, "annotations": STRING_MAP}
    if namespaced:
        props["namespace"] = NAME
    return obj(props, ("name", "namespace") if namespaced else ("name",))


def resource(
    api_version: str, kind: str, namespaced: bool = True, spec_required: bool = True, **fields: Schema
) -> Schema:
    """A top-level object: apiVersion, kind, metadata and the given fields (spec, data...)."""
    props = {
        "apiVersion": {"const": api_version},
        "kind": {"const": kind},
        "metadata": metadata(namespaced),
        **fields,
    }
    required = ("apiVersion", "kind", "metadata", *(("spec",) if "spec" in fields and spec_required else ()))
    return obj(props, required)


# --- core/v1 and apps/v1 -------------------------------------------------------------

PROBE = obj(
    {
        "exec": obj({"command": array(STR, 1)}, ("command",)),
        "httpGet": obj(
            {
                "path": STR,
                "port": PORT,
                "host": STR,
                "scheme": {"enum": ["HTTP", "HTTPS"]},
                "httpHeaders": array(obj({"name": STR, "value": STR}, ("name", "value"))),
            },
            ("port",),
        ),
        "tcpSocket": obj({"port": PORT, "host": STR}, ("port",)),
        "grpc": obj({"port": PORT_NUMBER, "service": STR}, ("port",)),
        "initialDelaySeconds": NONNEG,
        "periodSeconds": POSITIVE,
        "timeoutSeconds": POSITIVE,
        "successThreshold": POSITIVE,
        "failureThreshold": POSITIVE,
        "terminationGracePeriodSeconds": POSITIVE,
    },
    **one_of_keys("exec", "httpGet", "tcpSocket", "grpc"),
)

LIFECYCLE_HANDLER = obj(
    {
        "exec": obj({"command": array(STR, 1)}, ("command",)),
        "httpGet": PROBE["properties"]["httpGet"],
        "tcpSocket": PROBE["properties"]["tcpSocket"],
        "sleep": obj({"seconds": POSITIVE}, ("seconds",)),
    },
    **one_of_keys("exec", "httpGet", "tcpSocket", "sleep"),
)

KEY_REF = obj({"name": STR, "key": STR, "optional": BOOL}, ("key",))
ENV_VAR = obj(
    {
        "name": {"type": "string", "pattern": r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"},
        "value": STR,
        "valueFrom": obj(
            {
                "configMapKeyRef": KEY_REF,
                "secretKeyRef": KEY_REF,
                "fieldRef": obj({"fieldPath": STR, "apiVersion": STR}, ("fieldPath",)),
                "resourceFieldRef": obj(
                    {"resource": STR, "containerName": STR, "divisor": QUANTITY}, ("resource",)
                ),
            }
        ),
    },
    ("name",),
    **{"not": {"required": ["value", "valueFrom"]}},
)

RESOURCE_NAME = r"^(cpu|memory|ephemeral-storage|hugepages-.+|.+/.+)$"
RESOURCE_LIST: Schema = {
    "type": "object",
    "propertyNames": {"pattern": RESOURCE_NAME},
    "additionalProperties": QUANTITY,
}
CONTAINER = obj(
    {
        "name": NAME,
        "image": {"type": "string", "minLength": 1},
        "imagePullPolicy": {"enum": ["Always", "IfNotPresent", "Never"]},
        "command": STRS,
        "args": STRS,
        "workingDir": STR,
        "ports": array(
            obj(
                {
                    "name": PORT_NAME,
                    "containerPort": PORT_NUMBER,
                    "protocol": PROTOCOL,
                    "hostPort": PORT_NUMBER,
                },
                ("containerPort",),
            )
        ),
        "env": array(ENV_VAR),
        "envFrom": array(
            obj(
                {
                    "prefix": STR,
                    "configMapRef": obj({"name": STR, "optional": BOOL}),
                    "secretRef": obj({"name": STR, "optional": BOOL}),
                }
            )
        ),
        "resources": obj({"requests": RESOURCE_LIST, "limits": RESOURCE_LIST}),
        "readinessProbe": PROBE,
        "livenessProbe": PROBE,
        "startupProbe": PROBE,
        "lifecycle": obj({"preStop": LIFECYCLE_HANDLER, "postStart": LIFECYCLE_HANDLER}),
        "terminationMessagePolicy": {"enum": ["File", "FallbackToLogsOnError"]},
        "securityContext": obj(
            {
                "allowPrivilegeEscalation": BOOL,
                "privileged": BOOL,
                "readOnlyRootFilesystem": BOOL,
                "runAsNonRoot": BOOL,
                "runAsUser": NONNEG,
                "runAsGroup": NONNEG,
                "seccompProfile": SECCOMP,
                "capabilities": obj({"add": STRS, "drop": STRS}),
            }
        ),
        "volumeMounts": array(
            obj(
                {
                    "name": NAME,
                    "mountPath": {"type": "string", "pattern": "^/"},
                    "readOnly": BOOL,
                    "subPath": STR,
                    "subPathExpr": STR,
                    "mountPropagation": {"enum": ["None", "HostToContainer", "Bidirectional"]},
                },
                ("name", "mountPath"),
            )
        ),
    },
    ("name", "image"),
)

VOLUME = obj(
    {
        "name": NAME,
        "configMap": obj(
            {
                "name": SUBDOMAIN,
                "optional": BOOL,
                "defaultMode": NONNEG,
                "items": array(obj({"key": STR, "path": STR, "mode": NONNEG}, ("key", "path"))),
            },
            ("name",),
        ),
        "secret": obj({"secretName": SUBDOMAIN, "optional": BOOL, "defaultMode": NONNEG}, ("secretName",)),
        "emptyDir": obj({"medium": {"enum": ["", "Memory"]}, "sizeLimit": QUANTITY}),
    },
    ("name",),
    **one_of_keys("configMap", "secret", "emptyDir"),
)

POD_SPEC = obj(
    {
        "containers": array(CONTAINER, 1),
        "initContainers": array(CONTAINER),
        "volumes": array(VOLUME),
        "serviceAccountName": NAME,
        "automountServiceAccountToken": BOOL,
        "terminationGracePeriodSeconds": NONNEG,
        "nodeSelector": LABELS,
        "priorityClassName": STR,
        "securityContext": obj(
            {
                "runAsNonRoot": BOOL,
                "runAsUser": NONNEG,
                "runAsGroup": NONNEG,
                "fsGroup": NONNEG,
                "supplementalGroups": array(NONNEG),
                "seccompProfile": SECCOMP,
            }
        ),
        "affinity": {"type": "object"},
        "tolerations": array({"type": "object"}),
        "topologySpreadConstraints": array({"type": "object"}),
    },
    ("containers",),
)

DEPLOYMENT_SPEC = obj(
    {
        "replicas": NONNEG,
        "selector": SELECTOR,
        "revisionHistoryLimit": NONNEG,
        "minReadySeconds": NONNEG,
        "progressDeadlineSeconds": POSITIVE,
        "strategy": obj(
            {
                "type": {"enum": ["RollingUpdate", "Recreate"]},
                "rollingUpdate": obj(
                    {
                        "maxSurge": {"type": ["integer", "string"]},
                        "maxUnavailable": {"type": ["integer", "string"]},
                    }
                ),
            }
        ),
        "template": obj(
            {"metadata": obj({"labels": LABELS, "annotations": STRING_MAP}, ("labels",)), "spec": POD_SPEC},
            ("metadata", "spec"),
        ),
    },
    ("selector", "template"),
)

SERVICE_SPEC = obj(
    {
        "type": {"enum": ["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"]},
        "selector": LABELS,
        "clusterIP": STR,
        "sessionAffinity": {"enum": ["None", "ClientIP"]},
        "ports": array(
            obj(
                {
                    "name": PORT_NAME,
                    "port": PORT_NUMBER,
                    "targetPort": PORT,
                    "protocol": PROTOCOL,
                    "appProtocol": STR,
                    "nodePort": PORT_NUMBER,
                },
                ("port",),
            ),
            1,
        ),
    },
    ("ports",),
)

# --- Gateway API and Istio ------------------------------------------------------------

TARGET_REF = obj(
    {
        "group": {"type": "string", "pattern": "^$|" + DNS_SUBDOMAIN},
        "kind": STR,
        "name": SUBDOMAIN,
        "namespace": NAME,
    },
    ("group", "kind", "name"),
)
TARGETING: Schema = {"selector": SELECTOR, "targetRef": TARGET_REF, "targetRefs": array(TARGET_REF, 1)}
ONE_TARGETING: Schema = {
    "not": {
        "anyOf": [
            {"required": ["selector", "targetRefs"]},
            {"required": ["selector", "targetRef"]},
            {"required": ["targetRef", "targetRefs"]},
        ]
    }
}

GATEWAY_SPEC = obj(
    {
        "gatewayClassName": NAME,
        "listeners": array(
            obj(
                {
                    "name": NAME,
                    "hostname": STR,
                    "port": PORT_NUMBER,
                    "protocol": {"enum": ["HTTP", "HTTPS", "TLS", "TCP", "UDP", "HBONE"]},
                    "tls": {"type": "object"},
                    "allowedRoutes": obj(
                        {
                            "namespaces": obj(
                                {"from": {"enum": ["All", "Same", "Selector"]}, "selector": SELECTOR}
                            ),
                            "kinds": array(obj({"group": STR, "kind": STR}, ("kind",))),
                        }
                    ),
                },
                ("name", "port", "protocol"),
            ),
            1,
        ),
        "addresses": array({"type": "object"}),
        "infrastructure": obj({"labels": LABELS, "annotations": STRING_MAP}),
    },
    ("gatewayClassName", "listeners"),
)

JWT_RULE = obj(
    {
        "issuer": {"type": "string", "minLength": 1},
        "audiences": STRS,
        "jwksUri": {"type": "string", "pattern": "^https?://"},
        "jwks": STR,
        "fromHeaders": array(obj({"name": STR, "prefix": STR}, ("name",))),
        "fromParams": STRS,
        "fromCookies": STRS,
        "outputPayloadToHeader": STR,
        "forwardOriginalToken": BOOL,
        "timeout": STR,
        "outputClaimToHeaders": array(
            obj(
                {
                    "header": {"type": "string", "pattern": r"^[-_A-Za-z0-9]+$"},
                    "claim": {"type": "string", "minLength": 1},
                },
                ("header", "claim"),
            )
        ),
    },
    ("issuer",),
)

REQUEST_AUTHENTICATION_SPEC = obj({**TARGETING, "jwtRules": array(JWT_RULE, 1)}, **ONE_TARGETING)

SOURCE_FIELDS = (
    "principals",
    "requestPrincipals",
    "namespaces",
    "ipBlocks",
    "remoteIpBlocks",
    "serviceAccounts",
)
OPERATION_FIELDS = ("hosts", "ports", "methods", "paths")
AUTHZ_RULE = obj(
    {
        "from": array(
            obj(
                {
                    "source": obj(
                        {name: STRS for f in SOURCE_FIELDS for name in (f, "not" + f[0].upper() + f[1:])}
                    )
                },
                ("source",),
            )
        ),
        "to": array(
            obj(
                {
                    "operation": obj(
                        {name: STRS for f in OPERATION_FIELDS for name in (f, "not" + f[0].upper() + f[1:])}
                    )
                },
                ("operation",),
            )
        ),
        "when": array(obj({"key": STR, "values": STRS, "notValues": STRS}, ("key",))),
    }
)
AUTHORIZATION_POLICY_SPEC = obj(
    {
        **TARGETING,
        "action": {"enum": ["ALLOW", "DENY", "AUDIT", "CUSTOM"]},
        "rules": array(AUTHZ_RULE),
        "provider": obj({"name": STR}, ("name",)),
    },
    **ONE_TARGETING,
)

# EnvoyFilter: the match side is modelled field by field; a patch's value is Envoy's own
# config (any xDS message), left open.
ENVOY_FILTER_MATCH = obj(
    {
        "context": {"enum": ["ANY", "SIDECAR_INBOUND", "SIDECAR_OUTBOUND", "GATEWAY"]},
        "proxy": obj({"proxyVersion": STR, "metadata": STRING_MAP}),
        "listener": obj(
            {
                "portNumber": PORT_NUMBER,
                "name": STR,
                "listenerFilter": STR,
                "filterChain": obj(
                    {
                        "name": STR,
                        "sni": STR,
                        "transportProtocol": STR,
                        "applicationProtocols": STR,
                        "destinationPort": PORT_NUMBER,
                        "filter": obj({"name": STR, "subFilter": obj({"name": STR})}),
                    }
                ),
            }
        ),
        "routeConfiguration": obj(
            {
                "portNumber": PORT_NUMBER,
                "portName": STR,
                "gateway": STR,
                "name": STR,
                "vhost": obj(
                    {
                        "name": STR,
                        "domainName": STR,
                        "route": obj(
                            {"name": STR, "action": {"enum": ["ANY", "ROUTE", "REDIRECT", "DIRECT_RESPONSE"]}}
                        ),
                    }
                ),
            }
        ),
        "cluster": obj({"portNumber": PORT_NUMBER, "service": STR, "subset": STR, "name": STR}),
    },
    **{
        "not": {
            "anyOf": [
                {"required": a}
                for a in (
                    ["listener", "routeConfiguration"],
                    ["listener", "cluster"],
                    ["routeConfiguration", "cluster"],
                )
            ]
        }
    },
)
ENVOY_FILTER_SPEC = obj(
    {
        "workloadSelector": obj({"labels": LABELS}),
        "targetRefs": array(TARGET_REF, 1),
        "priority": {"type": "integer"},
        "configPatches": array(
            obj(
                {
                    "applyTo": {
                        "enum": [
                            "INVALID",
                            "LISTENER",
                            "FILTER_CHAIN",
                            "NETWORK_FILTER",
                            "HTTP_FILTER",
                            "ROUTE_CONFIGURATION",
                            "VIRTUAL_HOST",
                            "HTTP_ROUTE",
                            "CLUSTER",
                            "EXTENSION_CONFIG",
                            "BOOTSTRAP",
                            "LISTENER_FILTER",
                        ]
                    },
                    "match": ENVOY_FILTER_MATCH,
                    "patch": obj(
                        {
                            "operation": {
                                "enum": [
                                    "INVALID",
                                    "MERGE",
                                    "ADD",
                                    "REMOVE",
                                    "INSERT_BEFORE",
                                    "INSERT_AFTER",
                                    "INSERT_FIRST",
                                    "REPLACE",
                                ]
                            },
                            "value": {"type": "object"},
                            "filterClass": {"enum": ["UNSPECIFIED", "AUTHN", "AUTHZ", "STATS"]},
                        },
                        ("operation",),
                    ),
                },
                ("applyTo", "patch"),
            ),
            1,
        ),
    },
    ("configPatches",),
    **{"not": {"required": ["workloadSelector", "targetRefs"]}},
)

KUSTOMIZATION = obj(
    {
        "apiVersion": {"const": "kustomize.config.k8s.io/v1beta1"},
        "kind": {"const": "Kustomization"},
        "metadata": obj({"name": STR}),
        "namespace": NAME,
        "namePrefix": STR,
        "nameSuffix": STR,
        "resources": array(STR, 1),
        "labels": array({"type": "object"}),
        "commonAnnotations": STRING_MAP,
        "images": array(obj({"name": STR, "newName": STR, "newTag": STR, "digest": STR}, ("name",))),
        "patches": array({"type": "object"}),
    },
    ("apiVersion", "kind", "resources"),
)

SCHEMAS: dict[tuple[str, str], Schema] = {
    ("v1", "Namespace"): resource(
        "v1", "Namespace", namespaced=False, spec_required=False, spec=obj({"finalizers": STRS})
    ),
    ("v1", "ServiceAccount"): resource(
        "v1", "ServiceAccount", automountServiceAccountToken=BOOL, imagePullSecrets=array(obj({"name": STR}))
    ),
    ("v1", "ConfigMap"): resource("v1", "ConfigMap", data=STRING_MAP, binaryData=STRING_MAP, immutable=BOOL),
    ("v1", "Service"): resource("v1", "Service", spec=SERVICE_SPEC),
    ("apps/v1", "Deployment"): resource("apps/v1", "Deployment", spec=DEPLOYMENT_SPEC),
    ("gateway.networking.k8s.io/v1", "Gateway"): resource(
        "gateway.networking.k8s.io/v1", "Gateway", spec=GATEWAY_SPEC
    ),
    ("security.istio.io/v1", "RequestAuthentication"): resource(
        "security.istio.io/v1", "RequestAuthentication", spec=REQUEST_AUTHENTICATION_SPEC
    ),
    ("security.istio.io/v1", "AuthorizationPolicy"): resource(
        "security.istio.io/v1", "AuthorizationPolicy", spec=AUTHORIZATION_POLICY_SPEC
    ),
    ("networking.istio.io/v1alpha3", "EnvoyFilter"): resource(
        "networking.istio.io/v1alpha3", "EnvoyFilter", spec=ENVOY_FILTER_SPEC
    ),
    ("kustomize.config.k8s.io/v1beta1", "Kustomization"): KUSTOMIZATION,
}
