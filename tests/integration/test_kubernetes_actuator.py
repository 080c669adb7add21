"""KubernetesActuator against the kmock Kubernetes emulator: the right worker groups' replicas are
patched and nothing else changes. Fast (no cluster, one local HTTP server)."""

import copy

import pytest
import pytest_asyncio

kmock = pytest.importorskip("kmock")
k8s = pytest.importorskip("kubernetes.client")

from orchestrator.actuators.kuberay import KubernetesActuator  # noqa: E402
from orchestrator.config.planner import KubernetesActuatorConfig  # noqa: E402
from orchestrator.errors import ConfigError  # noqa: E402
from orchestrator.planner import ScalingDecision  # noqa: E402

RAYCLUSTERS = "ray.io/v1/rayclusters"


def worker_group(name, replicas, min_replicas=0, max_replicas=8):
    return {"groupName": name, "replicas": replicas, "minReplicas": min_replicas, "maxReplicas": max_replicas,
            "rayStartParams": {"resources": f'"{{\\"{name}\\": 1}}"'},
            "template": {"spec": {"containers": [{"name": "ray-worker", "image": "pdserve:test",
                                                   "resources": {"limits": {"cpu": "1"}}}]}}}


def raycluster():
    return {"apiVersion": "ray.io/v1", "kind": "RayCluster",
            "metadata": {"name": "pdserve", "namespace": "serving", "labels": {"app": "pdserve"}},
            "spec": {"rayVersion": "2.60.0",
                     "headGroupSpec": {"rayStartParams": {}, "template": {"spec": {"containers": [
                         {"name": "ray-head", "image": "pdserve:test"}]}}},
                     "workerGroupSpecs": [worker_group("cpu-misc", 1), worker_group("prefill", 1, 1, 4),
                                          worker_group("decode", 2, 1, 4)]}}


def pod(name, group, ready=True, deleting=False):
    meta = {"name": name, "namespace": "serving", "labels": {"ray.io/cluster": "pdserve", "ray.io/group": group}}
    if deleting:
        meta["deletionTimestamp"] = "2026-11-01T00:00:00Z"
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": {"containers": [{"name": "w", "image": "x"}]},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}


@pytest_asyncio.fixture(loop_scope="function")  # the emulator must serve on the test's own loop
async def emulator():
    async with kmock.KubernetesEmulator() as handler, kmock.Server(handler) as server:
        handler.resources.load_bundled()
        handler.resources[RAYCLUSTERS] = {"kind": "RayCluster", "namespaced": True, "singular": "raycluster",
                                          "verbs": ["get", "list", "patch", "create", "update", "delete", "watch"]}
        configuration = k8s.Configuration(host=str(server.url).rstrip("/"))
        api_client = k8s.ApiClient(configuration)
        objects = k8s.CustomObjectsApi(api_client)
        await _in_thread(objects.create_namespaced_custom_object, "ray.io", "v1", "serving", "rayclusters", raycluster())
        yield handler, api_client, objects
        api_client.close()


async def _in_thread(fn, *args, **kwargs):
    import asyncio
    return await asyncio.to_thread(fn, *args, **kwargs)


async def read(objects):
    return await _in_thread(objects.get_namespaced_custom_object, "ray.io", "v1", "serving", "rayclusters", "pdserve")


def patch_requests(handler):
    return [r for r in handler if r.method == kmock.method.PATCH]


def actuator(api_client, **changes):
    values = {"namespace": "serving", "raycluster_name": "pdserve", "in_cluster": False, **changes}
    config = KubernetesActuatorConfig(**values)
    return KubernetesActuator(config, api_client=api_client)


async def test_patches_only_the_prefill_and_decode_groups(emulator):
    handler, api_client, objects = emulator
    before = await read(objects)
    await actuator(api_client).apply(ScalingDecision(num_prefill=3, num_decode=1))
    after = await read(objects)

    groups = {g["groupName"]: g for g in after["spec"]["workerGroupSpecs"]}
    assert groups["prefill"]["replicas"] == 3 and groups["decode"]["replicas"] == 1
    # Everything else is exactly as before: the other group, head, metadata labels, templates, min/max.
    expected = copy.deepcopy(before)
    expected["spec"]["workerGroupSpecs"][1]["replicas"] = 3
    expected["spec"]["workerGroupSpecs"][2]["replicas"] = 1
    assert after["spec"] == expected["spec"]
    assert after["metadata"]["labels"] == before["metadata"]["labels"]

    patches = patch_requests(handler)
    assert len(patches) == 1
    assert patches[0].headers["Content-Type"].startswith("application/json-patch+json")
    ops = patches[0].data
    assert {"op": "test", "path": "/spec/workerGroupSpecs/1/groupName", "value": "prefill"} in ops
    assert all(op["path"].startswith(("/spec/workerGroupSpecs/1/", "/spec/workerGroupSpecs/2/")) for op in ops)


async def test_widens_min_and_max_when_needed_and_sends_nothing_when_unchanged(emulator):
    handler, api_client, objects = emulator
    act = actuator(api_client)
    await act.apply(ScalingDecision(num_prefill=6, num_decode=0))
    groups = {g["groupName"]: g for g in (await read(objects))["spec"]["workerGroupSpecs"]}
    assert (groups["prefill"]["replicas"], groups["prefill"]["maxReplicas"], groups["prefill"]["minReplicas"]) == (6, 6, 1)
    assert (groups["decode"]["replicas"], groups["decode"]["minReplicas"], groups["decode"]["maxReplicas"]) == (0, 0, 4)
    patches_before = len(patch_requests(handler))
    await act.apply(ScalingDecision(num_prefill=6, num_decode=0))
    assert len(patch_requests(handler)) == patches_before


async def test_missing_group_or_cluster_is_a_config_error(emulator):
    _, api_client, objects = emulator
    with pytest.raises(ConfigError, match="no worker group 'gpu-decode' .*groups: cpu-misc, prefill, decode"):
        await actuator(api_client, decode_group="gpu-decode").apply(ScalingDecision(num_prefill=1, num_decode=1))
    with pytest.raises(ConfigError, match="serving/other not found"):
        await actuator(api_client, raycluster_name="other").apply(ScalingDecision(num_prefill=1, num_decode=1))
    groups = {g["groupName"]: g for g in (await read(objects))["spec"]["workerGroupSpecs"]}
    assert groups["prefill"]["replicas"] == 1 and groups["decode"]["replicas"] == 2  # untouched


async def test_observe_counts_ready_pods_per_group(emulator):
    _, api_client, _ = emulator
    core = k8s.CoreV1Api(api_client)
    pods = [pod("p-1", "prefill"), pod("p-2", "prefill", ready=False), pod("d-1", "decode"), pod("d-2", "decode"),
            pod("d-3", "decode", deleting=True), pod("m-1", "cpu-misc")]
    for body in pods:
        await _in_thread(core.create_namespaced_pod, "serving", body)
    assert await actuator(api_client).observe_replicas() == {"prefill": 1, "decode": 2}
