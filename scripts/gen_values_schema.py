#!/usr/bin/env python3
"""Generate the Helm chart's values.schema.json: the chart's own keys plus the pdserve config tree.

The `pdserve` key of the chart's values mirrors the config tree (`orchestrator.config`), so its schema
is taken from `config_json_schema()` (one source of truth) and made fit for Helm's JSON-schema
validators (the Go libraries behind `helm lint`, `helm template` and `helm install`):
  - every `$ref` is inlined (no `$defs`, no `$id`, nothing fetched);
  - `anyOf: [X, {type: null}]` becomes `X` with `type: [X's type, "null"]`, so a wrong type reads
    "Invalid type. Expected: integer,null" rather than "must validate one schema (anyOf)";
  - every object with properties refuses unknown keys (`additionalProperties: false`);
  - pydantic-only annotations (`title`, `format: path`) are dropped.
The chart's own keys (image, worker groups, services, ...) are described below, by hand.

    python scripts/gen_values_schema.py           # write helm/pdserve/values.schema.json
    python scripts/gen_values_schema.py --check   # exit 1 when the committed file is stale
"""

from __future__ import annotations

import argparse
import copy
import difflib
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SCHEMA_PATH = ROOT / "helm" / "pdserve" / "values.schema.json"

# A Kubernetes resource quantity: "500m", "4", "16Gi", "1.5".
QUANTITY_PATTERN = r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$"
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"

Schema = dict[str, Any]


# ---- the config tree, made fit for Helm --------------------------------------------------------------


def config_schema() -> Schema:
    """The pdserve config tree's JSON schema with refs inlined and unknown keys refused at every level."""
    sys.path.insert(0, str(ROOT))
    from orchestrator.config import config_json_schema

    raw = config_json_schema()
    defs = raw.pop("$defs", {})
    schema = _clean(_inline(raw, defs, seen=()))
    schema["description"] = (
        "The pdserve config (orchestrator/config), written to the ConfigMap as /etc/pdserve/config.yaml. "
        "Keys left out take the config's own defaults."
    )
    return schema


def _inline(node: Any, defs: dict[str, Schema], seen: tuple[str, ...]) -> Any:
    """Replace every {"$ref": "#/$defs/X", ...} by a copy of X (sibling keys such as description win)."""
    if isinstance(node, list):
        return [_inline(item, defs, seen) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        name = node["$ref"].removeprefix("#/$defs/")
        if name not in defs:
            raise SystemExit(f"gen_values_schema: cannot resolve $ref {node['$ref']!r}")
        if name in seen:
            raise SystemExit(f"gen_values_schema: recursive config model {name} cannot be inlined")
        merged = copy.deepcopy(defs[name])
        merged.update({key: value for key, value in node.items() if key != "$ref"})
        return _inline(merged, defs, seen + (name,))
    return {key: _inline(value, defs, seen) for key, value in node.items()}


def _clean(node: Any) -> Any:
    """Drop pydantic-only keys, collapse nullable anyOf, refuse unknown keys on every object."""
    if isinstance(node, list):
        return [_clean(item) for item in node]
    if not isinstance(node, dict):
        return node
    out: Schema = {}
    for key, value in node.items():
        if key == "title" or (key == "format" and value == "path"):
            continue
        if key in ("properties", "patternProperties"):
            out[key] = {name: _clean(sub) for name, sub in value.items()}
        elif key == "default":
            out[key] = value
        else:
            out[key] = _clean(value)
    out = _collapse_nullable(out)
    if "properties" in out and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


def _collapse_nullable(node: Schema) -> Schema:
    options = node.get("anyOf")
    if not isinstance(options, list) or len(options) != 2 or {"type": "null"} not in options:
        return node
    other = next(option for option in options if option != {"type": "null"})
    if not isinstance(other.get("type"), str):
        return node
    merged = {key: value for key, value in node.items() if key != "anyOf"}
    merged.update({key: value for key, value in other.items() if key != "type"})
    merged["type"] = [other["type"], "null"]
    return merged


# ---- the chart's own keys ----------------------------------------------------------------------------


def _obj(properties: dict[str, Schema], description: str, required: list[str] | None = None) -> Schema:
    schema: Schema = {"type": "object", "description": description, "properties": properties,
                      "additionalProperties": False}
    if required:
        schema["required"] = required
    return schema


def _int(minimum: int, description: str, maximum: int | None = None) -> Schema:
    schema: Schema = {"type": "integer", "minimum": minimum, "description": description}
    if maximum is not None:
        schema["maximum"] = maximum
    return schema


def _str(description: str, **extra: Any) -> Schema:
    return {"type": "string", "description": description, **extra}


def _bool(description: str) -> Schema:
    return {"type": "boolean", "description": description}


def _quantity(description: str) -> Schema:
    return {"type": ["string", "number"], "pattern": QUANTITY_PATTERN, "minimum": 0, "description": description}


def _string_map(description: str) -> Schema:
    return {"type": "object", "additionalProperties": {"type": "string"}, "description": description}


def _free_object(description: str) -> Schema:
    return {"type": "object", "description": description}


def _tolerations() -> Schema:
    item = _obj({
        "key": _str("Taint key (empty with operator Exists: every taint)."),
        "operator": {"type": "string", "enum": ["Exists", "Equal"], "description": "Exists or Equal."},
        "value": _str("Taint value (operator Equal)."),
        "effect": {"type": "string", "enum": ["", "NoSchedule", "PreferNoSchedule", "NoExecute"],
                   "description": "Taint effect to tolerate (empty: all)."},
        "tolerationSeconds": _int(0, "How long a NoExecute taint is tolerated."),
    }, "A Kubernetes toleration.")
    return {"type": "array", "items": item, "description": "Tolerations of the group's pods."}


def _affinity() -> Schema:
    return _obj({
        "nodeAffinity": _free_object("Kubernetes node affinity."),
        "podAffinity": _free_object("Kubernetes pod affinity."),
        "podAntiAffinity": _free_object("Kubernetes pod anti-affinity."),
    }, "Kubernetes affinity of the group's pods.")


def _env() -> Schema:
    item = _obj({
        "name": _str("Variable name.", minLength=1),
        "value": _str("Literal value."),
        "valueFrom": _free_object("Kubernetes EnvVarSource (secretKeyRef, configMapKeyRef, fieldRef, ...)."),
    }, "An environment variable.", required=["name"])
    return {"type": "array", "items": item, "description": "Extra environment variables of the pdserve container."}


def _pod_placement(what: str) -> dict[str, Schema]:
    return {
        "nodeSelector": _string_map(f"Node labels the {what} pods must run on."),
        "tolerations": _tolerations(),
        "affinity": _affinity(),
        "podAnnotations": _string_map(f"Extra annotations of the {what} pods."),
        "podLabels": _string_map(f"Extra labels of the {what} pods."),
        "env": _env(),
        "rayStartParams": _string_map(f"Extra `ray start` parameters of the {what} pods (values are strings)."),
    }


def _head() -> Schema:
    return _obj({
        "cpu": _quantity("CPU of the head pod (requests = limits)."),
        "memory": _quantity("Memory of the head pod (requests = limits), e.g. 16Gi."),
        "gpus": _int(0, "nvidia.com/gpu of the head pod (0: none; the head runs no engine)."),
        "extraVolumes": {"type": "array", "items": _obj({"name": _str("Volume name.", minLength=1)}, "", ["name"]) | {
            # name plus one volume source (secret, configMap, persistentVolumeClaim, ...), an object.
            "additionalProperties": {"type": "object"}, "description": "A Kubernetes volume."},
            "description": "Extra volumes of the head pod, e.g. a Secret holding TLS files or API keys."},
        "extraVolumeMounts": {"type": "array", "items": _obj({
            "name": _str("Volume name.", minLength=1), "mountPath": _str("Where.", pattern="^/"),
            "readOnly": _bool("Mount read-only."), "subPath": _str("Sub-path in the volume."),
        }, "A volume mount.", ["name", "mountPath"]), "description": "Mounts of extraVolumes in the pdserve container."},
        **_pod_placement("head"),
    }, "The Ray head pod: controller, gRPC and HTTP APIs, planner.")


def _worker_group(tier: str) -> Schema:
    return _obj({
        "replicas": _int(0, f"{tier.capitalize()} pods at install (one {tier} worker each)."),
        "minReplicas": _int(0, "Fewest pods the Ray autoscaler keeps."),
        "maxReplicas": _int(0, "Most pods the Ray autoscaler (or the planner) may run."),
        "gpus": _int(0, "nvidia.com/gpu per pod (0: a CPU-only pod)."),
        "cpu": _quantity("CPU per pod (requests = limits)."),
        "memory": _quantity("Memory per pod (requests = limits), e.g. 64Gi."),
        "terminationGracePeriodSeconds": _int(0, "Time a pod is given to drain its requests when removed."),
        **_pod_placement(tier),
    }, f"The `{tier}` Ray worker group (Ray custom resource {{\"{tier}\": 1}} per pod).")


def _service(what: str, port: int) -> Schema:
    return _obj({
        "type": {"type": "string", "enum": ["ClusterIP", "NodePort", "LoadBalancer"], "description": "Service type."},
        "port": _int(1, f"Service port (default {port}).", maximum=65535),
        "annotations": _string_map("Service annotations (e.g. for a cloud load balancer)."),
    }, f"The {what} Service.")


def _security_contexts() -> dict[str, Schema]:
    return {
        "podSecurityContext": _free_object("Pod securityContext of every pod (non-root, RuntimeDefault seccomp)."),
        "securityContext": _free_object(
            "Container securityContext of the pdserve containers (no privilege escalation, capabilities dropped, "
            "read-only root filesystem: /tmp, $HOME and the model cache are emptyDir or PVC mounts)."),
    }


def chart_schema(pdserve: Schema) -> Schema:
    """The whole values schema: the chart's keys, with the config tree under `pdserve`."""
    properties: dict[str, Schema] = {
        "nameOverride": _str("Replaces the chart name in object names."),
        "fullnameOverride": _str("Replaces the release-chart name of every object."),
        "image": _obj({
            "repository": _str("Image repository (built from the repository's Dockerfile).", minLength=1),
            "tag": _str("Image tag; empty: the chart's appVersion."),
            "pullPolicy": {"type": "string", "enum": ["Always", "IfNotPresent", "Never"], "description": "Pull policy."},
        }, "The pdserve image (vLLM base with pdserve installed)."),
        "imagePullSecrets": {"type": "array", "items": _obj({"name": _str("Secret name.", minLength=1)},
                                                             "A pull secret.", required=["name"]),
                             "description": "Secrets to pull the image."},
        "ray": _obj({
            "version": _str("rayVersion of the RayCluster: the Ray version installed in the image.", minLength=1),
            "autoscaler": _obj({
                "enabled": _bool("enableInTreeAutoscaling: the Ray autoscaler adds and removes worker pods."),
                "upscalingMode": {"type": "string", "enum": ["Default", "Aggressive", "Conservative"],
                                  "description": "How fast the Ray autoscaler adds pods."},
                "idleTimeoutSeconds": _int(0, "Idle time before the Ray autoscaler removes a worker pod."),
                "cpu": _quantity("CPU of the autoscaler sidecar."),
                "memory": _quantity("Memory of the autoscaler sidecar."),
            }, "The Ray autoscaler (a sidecar of the head pod, run by KubeRay)."),
            "auth": _obj({
                "enabled": _bool("Ray token authentication (RAY_AUTH_MODE=token) on every Ray process of the release."),
                "existingSecret": _str("A Secret of the namespace holding the token; empty: the chart creates "
                                       "<fullname>-ray-auth (e.g. pdserve-ray-auth) with a random token, kept across upgrades.",
                                       pattern=r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?)?$", maxLength=253),
                "secretKey": _str("Key of the token in the Secret.", pattern=r"^[-._a-zA-Z0-9]+$"),
            }, "Ray's token authentication: the token comes from a Kubernetes Secret."),
        }, "Ray and KubeRay settings."),
        "head": _head(),
        "prefill": _worker_group("prefill"),
        "decode": _worker_group("decode"),
        "services": _obj({
            "grpc": _service("gRPC API (pdserve.v1.Inference)", 50051),
            "http": _service("HTTP API (OpenAI-compatible, /health, /metrics)", 8000),
            "metrics": _obj({
                "annotations": _string_map("Service annotations (e.g. prometheus.io/scrape)."),
            }, "The metrics Service (pdserve /metrics and the Ray head's metrics, ClusterIP)."),
        }, "Services in front of the head pod."),
        "serviceAccount": _obj({
            "create": _bool("Create the ServiceAccount of the pods."),
            "name": _str("Its name; empty: the release's full name."),
            "annotations": _string_map("ServiceAccount annotations (e.g. a cloud IAM role)."),
        }, "ServiceAccount of the head (and workers, which do not mount its token)."),
        "rbac": _obj({
            "create": _bool("Create the namespaced Role/RoleBinding of the planner's Kubernetes actuator "
                            "(get and patch on this release's RayCluster only)."),
        }, "RBAC of the planner."),
        "podDisruptionBudget": _obj({
            "enabled": _bool("Create PodDisruptionBudgets for the head and each worker group."),
            "head": _obj({"maxUnavailable": _int(0, "Head pods a voluntary disruption may take (0: none).")},
                         "PDB of the head pod."),
            "workers": _obj({"maxUnavailable": _int(1, "Pods of one worker group a voluntary disruption may take.")},
                            "PDB of each worker group."),
        }, "PodDisruptionBudgets."),
        "modelCache": _obj({
            "existingClaim": _str("A PersistentVolumeClaim (ReadWriteMany to share it) holding models; "
                                  "empty: an emptyDir per pod."),
            "sizeLimit": _quantity("sizeLimit of the emptyDir when no claim is given."),
            "mountPath": _str("Where it is mounted (PDSERVE_HOME and HF_HOME live under it).", pattern="^/"),
        }, "Where the pods keep model weights."),
        "metrics": _obj({
            "serviceMonitor": _obj({
                "enabled": _bool("Create a Prometheus Operator ServiceMonitor (needs its CRDs)."),
                "interval": _str("Scrape interval.", pattern=r"^[0-9]+(ms|s|m|h)$"),
                "labels": _string_map("Extra labels (e.g. the `release` your Prometheus selects)."),
            }, "Prometheus Operator ServiceMonitor."),
            "grafanaDashboard": _obj({
                "enabled": _bool("Create a ConfigMap holding the Grafana dashboard."),
                "labels": _string_map("Labels the Grafana sidecar selects (default grafana_dashboard: \"1\")."),
            }, "Grafana dashboard ConfigMap."),
        }, "Monitoring."),
        **_security_contexts(),
        "pdserve": pdserve,
    }
    return {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "description": "Values of the pdserve chart. GENERATED by scripts/gen_values_schema.py: do not edit.",
        "type": "object",
        "properties": properties,
        "additionalProperties": False,
    }


def render() -> str:
    return json.dumps(chart_schema(config_schema()), indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when the committed schema is stale")
    parser.add_argument("--output", type=Path, default=SCHEMA_PATH, help=f"default: {SCHEMA_PATH.relative_to(ROOT)}")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = args.output.read_text() if args.output.exists() else ""
        if current == text:
            return 0
        diff = difflib.unified_diff(current.splitlines(), text.splitlines(), str(args.output), "generated", lineterm="")
        print("\n".join(list(diff)[:40]), file=sys.stderr)
        print(f"{args.output} is stale: regenerate it with `python scripts/gen_values_schema.py`", file=sys.stderr)
        return 1
    args.output.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
