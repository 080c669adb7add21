"""The Kubernetes actuator: patches the replicas of a KubeRay RayCluster's prefill and decode worker groups.

Life of a decision here: 1. read the RayCluster (`ray.io/v1`, `rayclusters`) to find the index of each
worker group by its `groupName`; 2. send one JSON patch (RFC 6902) that, per group, first `test`s that
index still holds that group (so a concurrent reorder fails the patch instead of resizing the wrong
group) and then sets `replicas` (and widens `minReplicas`/`maxReplicas` when the count falls outside
them and `update_min_max` is on); 3. on a failed test or a conflict, read again and retry once. KubeRay
then creates or deletes pods; pods it deletes are drained by the controller first (the Ray actuator
path) or by the workers' preStop hook.
A merge patch cannot do this: for custom resources it replaces whole lists, so it would rewrite every
group from a possibly stale read. The `kubernetes` client is synchronous: calls run in a thread.
"""

from __future__ import annotations

import asyncio
from typing import Any

import urllib3
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException

from orchestrator.actuators.base import ActuationFailed, BaseActuator
from orchestrator.config.planner import KubernetesActuatorConfig
from orchestrator.errors import ConfigError
from orchestrator.planner.policy import TIERS, ScalingDecision

GROUP, VERSION, PLURAL = "ray.io", "v1", "rayclusters"
JSON_PATCH = "application/json-patch+json"
RETRY_STATUSES = (409, 422)  # conflict; a `test` op failed (the groups moved)
REQUEST_TIMEOUT_S = 10.0  # one API call; the planner loop tries again at its next decision


class KubernetesActuator(BaseActuator):
    """Scales the RayCluster's worker groups named in `KubernetesActuatorConfig`."""

    def __init__(self, config: KubernetesActuatorConfig, api_client: k8s.ApiClient | None = None) -> None:
        """`api_client`: a configured client (tests point one at an emulator); None: the pod's service
        account (`config.in_cluster`) or the local kubeconfig. Raises ConfigError when neither loads."""
        self.config = config
        if api_client is None:
            api_client = _load_api_client(config.in_cluster)
        self._objects = k8s.CustomObjectsApi(api_client)
        self._core = k8s.CoreV1Api(api_client)
        self._groups = {"prefill": config.prefill_group, "decode": config.decode_group}

    async def apply(self, decision: ScalingDecision) -> None:
        """Patch both worker groups' replicas in one request. Raises ConfigError when the RayCluster or a
        group does not exist, ActuationFailed when the API server refuses or cannot be reached."""
        await asyncio.to_thread(self._apply_sync, {tier: decision.num_for(tier) for tier in TIERS})

    async def observe_replicas(self) -> dict[str, int]:
        """Running and Ready pods of each group (labels `ray.io/cluster`, `ray.io/group`), pods being
        deleted excluded. Raises ActuationFailed when the pods cannot be listed."""
        return await asyncio.to_thread(self._observe_sync)

    def compute_patch(self, raycluster: dict[str, Any], replicas: dict[str, int]) -> list[dict[str, Any]]:
        """The JSON patch that sets `replicas[tier]` on each tier's group of `raycluster` (empty when
        nothing changes). Raises ConfigError naming the groups found when a group is missing."""
        specs = raycluster.get("spec", {}).get("workerGroupSpecs") or []
        names = [spec.get("groupName") for spec in specs]
        ops: list[dict[str, Any]] = []
        for tier in TIERS:
            group = self._groups[tier]
            if group not in names:
                raise ConfigError(f"RayCluster {self._where()} has no worker group {group!r} for the {tier} tier "
                                  f"(groups: {', '.join(map(str, names)) or 'none'}); set planner.kubernetes.{tier}_group")
            index = names.index(group)
            ops.extend(self._group_ops(index, specs[index], replicas[tier]))
        return ops

    def _group_ops(self, index: int, spec: dict[str, Any], replicas: int) -> list[dict[str, Any]]:
        path = f"/spec/workerGroupSpecs/{index}"
        changes = []
        if spec.get("replicas") != replicas:
            changes.append({"op": "add", "path": f"{path}/replicas", "value": replicas})
        if self.config.update_min_max:
            if spec.get("minReplicas") is not None and replicas < spec["minReplicas"]:
                changes.append({"op": "replace", "path": f"{path}/minReplicas", "value": replicas})
            if spec.get("maxReplicas") is not None and replicas > spec["maxReplicas"]:
                changes.append({"op": "replace", "path": f"{path}/maxReplicas", "value": replicas})
        if not changes:
            return []
        return [{"op": "test", "path": f"{path}/groupName", "value": spec["groupName"]}, *changes]

    def _apply_sync(self, replicas: dict[str, int]) -> None:
        for attempt in range(2):
            raycluster = self._call(self._objects.get_namespaced_custom_object, GROUP, VERSION,
                                    self.config.namespace, PLURAL, self.config.raycluster_name)
            ops = self.compute_patch(raycluster, replicas)
            if not ops:
                return
            try:
                self._call(self._objects.patch_namespaced_custom_object, GROUP, VERSION, self.config.namespace,
                           PLURAL, self.config.raycluster_name, ops, _content_type=JSON_PATCH)
                return
            except ActuationFailed as exc:
                cause = exc.__cause__
                if attempt == 0 and isinstance(cause, ApiException) and cause.status in RETRY_STATUSES:
                    continue
                raise

    def _observe_sync(self) -> dict[str, int]:
        counts = {}
        for tier in TIERS:
            labels = {"ray.io/cluster": self.config.raycluster_name, "ray.io/group": self._groups[tier]}
            selector = ",".join(f"{key}={value}" for key, value in labels.items())
            pods = self._call(self._core.list_namespaced_pod, self.config.namespace, label_selector=selector)
            counts[tier] = sum(1 for pod in pods.items if _has_labels(pod, labels) and _pod_ready(pod))
        return counts

    def _call(self, method: Any, *args: Any, **kwargs: Any) -> Any:
        """Call the API; convert its failures at this boundary (404 on the RayCluster is the config's fault)."""
        try:
            return method(*args, _request_timeout=REQUEST_TIMEOUT_S, **kwargs)
        except ApiException as exc:
            if exc.status == 404:
                raise ConfigError(f"RayCluster {self._where()} not found (or the ray.io/v1 CRD is not installed): "
                                  "set planner.kubernetes.namespace and raycluster_name") from exc
            raise ActuationFailed(f"Kubernetes API refused {method.__name__} on {self._where()}: "
                                  f"{exc.status} {exc.reason}") from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise ActuationFailed(f"Kubernetes API unreachable for {self._where()}: {exc}") from exc

    def _where(self) -> str:
        return f"{self.config.namespace}/{self.config.raycluster_name}"


def _has_labels(pod: k8s.V1Pod, labels: dict[str, str]) -> bool:
    """Checked again here: the selector is applied by the server, but a proxy or emulator may ignore it."""
    have = (pod.metadata.labels if pod.metadata is not None else None) or {}
    return all(have.get(key) == value for key, value in labels.items())


def _pod_ready(pod: k8s.V1Pod) -> bool:
    if pod.metadata is not None and pod.metadata.deletion_timestamp is not None:
        return False
    status = pod.status
    if status is None or status.phase != "Running":
        return False
    return any(c.type == "Ready" and c.status == "True" for c in status.conditions or [])


def _load_api_client(in_cluster: bool) -> k8s.ApiClient:
    try:
        if in_cluster:
            k8s_config.load_incluster_config()
        else:
            k8s_config.load_kube_config()
    except k8s_config.ConfigException as exc:
        where = "the pod's service account" if in_cluster else "the kubeconfig"
        raise ConfigError(f"cannot load Kubernetes credentials from {where}: {exc} "
                          "(set planner.kubernetes.in_cluster to match where pdserve runs)") from None
    return k8s.ApiClient()
