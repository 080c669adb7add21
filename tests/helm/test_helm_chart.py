"""The chart renders, lints, and every object it renders is valid for Kubernetes 1.31 and KubeRay.

Each test runs on the default values and on every profile in helm/pdserve/examples/.
"""

from __future__ import annotations

import json
import re
import shutil
import tomllib
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from helmchart import CHART, EXAMPLES, KUBERNETES_VERSION, NAMESPACE, RELEASE, ROOT, find_object, rendered, run_helm

pytestmark = pytest.mark.helm

PROFILES = {"default": (), **{path.stem: (str(path),) for path in EXAMPLES}}
# Custom resources: validated against their own schema (RayCluster) or left to their operator.
CUSTOM_KINDS = {"RayCluster", "ServiceMonitor"}


def profile_objects(render, profile: str) -> list[dict]:
    return rendered(render(*PROFILES[profile]))


def pod_templates(cluster: dict) -> dict[str, dict]:
    """Pod templates of the RayCluster by group: head, prefill, decode."""
    templates = {"head": cluster["spec"]["headGroupSpec"]["template"]}
    for group in cluster["spec"]["workerGroupSpecs"]:
        templates[group["groupName"]] = group["template"]
    return templates


def test_example_profiles_are_shipped():
    assert {path.stem for path in EXAMPLES} >= {"cpu-only", "single-gpu", "large"}


def test_chart_app_version_is_the_package_version():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert chart["appVersion"] == project["version"]


@pytest.mark.parametrize("profile", PROFILES)
def test_helm_lint_passes(helm, profile):
    args = ["lint", "--strict", str(CHART)]
    for path in PROFILES[profile]:
        args += ["-f", path]
    result = run_helm(helm, *args)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("profile", PROFILES)
def test_core_objects_validate_strictly_against_kubernetes(render, profile):
    objects = profile_objects(render, profile)
    kinds = {obj["kind"] for obj in objects}
    assert {"RayCluster", "ConfigMap", "Service", "ServiceAccount", "Role", "RoleBinding"} <= kinds
    for obj in objects:
        if obj["kind"] in CUSTOM_KINDS:
            continue
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as err:
            where = ".".join(str(part) for part in err.path)
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']}: {where}: {err.message}")


def test_a_wrong_core_field_is_caught_by_kubernetes_validate(render):
    """Strict validation is not vacuous: an unknown field in a Service is refused."""
    service = find_object(profile_objects(render, "default"), "Service", "-grpc")
    service["spec"]["ports"][0]["targetPorts"] = "grpc"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(service, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("profile", PROFILES)
def test_raycluster_pod_templates_validate_strictly_against_kubernetes(render, profile):
    cluster = find_object(profile_objects(render, profile), "RayCluster")
    for group, template in pod_templates(cluster).items():
        wrapper = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": group}, "template": template}
        try:
            kubernetes_validate.validate(wrapper, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as err:
            where = ".".join(str(part) for part in err.path)
            pytest.fail(f"pod template of {group}: {where}: {err.message}")


@pytest.mark.parametrize("profile", PROFILES)
def test_raycluster_validates_against_the_kuberay_crd(render, profile, raycluster_schema):
    cluster = find_object(profile_objects(render, profile), "RayCluster")
    assert cluster["apiVersion"] == "ray.io/v1"
    errors = sorted(jsonschema.Draft7Validator(raycluster_schema).iter_errors(cluster), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{'.'.join(map(str, e.path))}: {e.message}" for e in errors)


def test_a_wrong_raycluster_field_is_caught_by_the_crd_check(render, raycluster_schema):
    """The strict CRD schema is not vacuous: a misspelt field and a wrong type are refused."""
    cluster = find_object(profile_objects(render, "default"), "RayCluster")
    cluster["spec"]["workerGroupSpecs"][0]["maxReplica"] = 3
    cluster["spec"]["workerGroupSpecs"][1]["replicas"] = "two"
    messages = [e.message for e in jsonschema.Draft7Validator(raycluster_schema).iter_errors(cluster)]
    assert any("maxReplica" in m for m in messages), messages
    assert any("'two' is not of type 'integer'" in m for m in messages), messages


@pytest.mark.parametrize("profile", PROFILES)
def test_worker_groups_carry_their_tier_resource_gpus_and_limits(render, profile):
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for path in PROFILES[profile]:
        for tier, group in yaml.safe_load(Path(path).read_text()).items():
            if tier in ("prefill", "decode"):
                values[tier].update(group)
    cluster = find_object(profile_objects(render, profile), "RayCluster")
    groups = {group["groupName"]: group for group in cluster["spec"]["workerGroupSpecs"]}
    assert set(groups) == {"prefill", "decode"}
    for tier, group in groups.items():
        want = values[tier]
        assert group["rayStartParams"]["resources"] == f'"{{\\"{tier}\\": 1}}"'
        assert (group["replicas"], group["minReplicas"], group["maxReplicas"]) == (
            want["replicas"], want["minReplicas"], want["maxReplicas"])
        (container,) = group["template"]["spec"]["containers"]
        for side in ("requests", "limits"):
            amounts = container["resources"][side]
            if want["gpus"]:
                assert amounts["nvidia.com/gpu"] == str(want["gpus"])  # a quoted quantity, not an int
            else:
                assert "nvidia.com/gpu" not in amounts
            assert all(isinstance(value, str) for value in amounts.values())


def test_autoscaling_is_in_tree_by_default(render):
    cluster = find_object(profile_objects(render, "default"), "RayCluster")
    assert cluster["spec"]["enableInTreeAutoscaling"] is True
    assert cluster["metadata"]["annotations"]["ray.io/overwrite-container-cmd"] == "true"


def test_head_starts_ray_then_pdserve_with_the_mounted_config(render):
    objects = profile_objects(render, "default")
    cluster = find_object(objects, "RayCluster")
    head = cluster["spec"]["headGroupSpec"]["template"]["spec"]
    (container,) = head["containers"]
    script = container["args"][0]
    assert "$KUBERAY_GEN_RAY_START_CMD" in script
    assert "pdserve up --address auto --config /etc/pdserve/config.yaml" in script
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == "/etc/pdserve")
    volume = next(v for v in head["volumes"] if v["name"] == mount["name"])
    config_map = find_object(objects, "ConfigMap", "-config")
    assert volume["configMap"]["name"] == config_map["metadata"]["name"]
    assert "config.yaml" in config_map["data"]


@pytest.mark.parametrize("profile", PROFILES)
def test_pods_run_unprivileged_with_a_read_only_root(render, profile):
    cluster = find_object(profile_objects(render, profile), "RayCluster")
    for group, template in pod_templates(cluster).items():
        spec = template["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True, group
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, group
        volumes = {v["name"]: v for v in spec["volumes"]}
        for container in spec["containers"]:
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, group
            assert context["capabilities"]["drop"] == ["ALL"], group
            assert context["readOnlyRootFilesystem"] is True, group
            writable = {m["mountPath"]: volumes[m["name"]] for m in container["volumeMounts"]}
            assert "emptyDir" in writable["/tmp"], group
            assert "emptyDir" in writable["/home/pdserve"], group


def test_image_defaults_to_the_chart_app_version(render):
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    cluster = find_object(profile_objects(render, "default"), "RayCluster")
    images = {c["image"] for t in pod_templates(cluster).values() for c in t["spec"]["containers"]}
    assert images == {f"pdserve:{chart['appVersion']}"}
    override = find_object(rendered(render(sets=("image.tag=dev",))), "RayCluster")
    assert {c["image"] for t in pod_templates(override).values() for c in t["spec"]["containers"]} == {"pdserve:dev"}


@pytest.mark.parametrize("profile", PROFILES)
def test_rbac_is_namespaced_and_limited_to_the_own_raycluster(render, profile):
    objects = profile_objects(render, profile)
    assert not {"ClusterRole", "ClusterRoleBinding"} & {obj["kind"] for obj in objects}
    cluster = find_object(objects, "RayCluster")
    name = cluster["metadata"]["name"]
    role = find_object(objects, "Role")
    # orchestrator/actuators/kuberay.py: get + JSON-patch the RayCluster, list pods to count ready ones.
    assert role["rules"] == [
        {"apiGroups": ["ray.io"], "resources": ["rayclusters"], "resourceNames": [name], "verbs": ["get", "patch"]},
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]},
    ]
    # KubeRay names the Ray autoscaler's Role after the cluster: ours must not collide with it.
    assert role["metadata"]["name"] != name
    binding = find_object(objects, "RoleBinding")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role["metadata"]["name"]}
    templates = pod_templates(cluster)
    head_account = templates["head"]["spec"]["serviceAccountName"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": head_account, "namespace": NAMESPACE}]
    assert find_object(objects, "ServiceAccount")["metadata"]["name"] == head_account
    assert templates["head"]["spec"]["automountServiceAccountToken"] is True
    for tier in ("prefill", "decode"):
        assert templates[tier]["spec"]["automountServiceAccountToken"] is False


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


@pytest.mark.parametrize("profile", PROFILES)
def test_services_reach_the_head_api_ports(render, profile):
    objects = profile_objects(render, profile)
    cluster = find_object(objects, "RayCluster")
    templates = pod_templates(cluster)
    head_ports = {p["name"]: p["containerPort"] for p in templates["head"]["spec"]["containers"][0]["ports"]}
    services = {obj["metadata"]["name"].removeprefix(f"{RELEASE}-pdserve-"): obj
                for obj in objects if obj["kind"] == "Service"}
    assert set(services) == {"grpc", "http", "metrics"}
    for service in services.values():
        selector = service["spec"]["selector"]
        matching = [group for group, t in templates.items() if _selects(selector, t["metadata"]["labels"])]
        assert matching == ["head"], service["metadata"]["name"]
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in head_ports
    assert head_ports["grpc"] == 50051 and head_ports["http"] == 8000


@pytest.mark.parametrize("profile", PROFILES)
def test_disruption_budgets_each_cover_one_group(render, profile):
    objects = profile_objects(render, profile)
    budgets = [obj for obj in objects if obj["kind"] == "PodDisruptionBudget"]
    if profile == "cpu-only":
        assert not budgets  # turned off in that profile
        return
    templates = pod_templates(find_object(objects, "RayCluster"))
    covered = []
    for budget in budgets:
        selector = budget["spec"]["selector"]["matchLabels"]
        covered += [group for group, t in templates.items() if _selects(selector, t["metadata"]["labels"])]
    assert sorted(covered) == ["decode", "head", "prefill"]


def test_service_monitor_and_dashboard_when_enabled(render):
    objects = rendered(render(sets=("metrics.serviceMonitor.enabled=true", "metrics.grafanaDashboard.enabled=true")))
    monitor = find_object(objects, "ServiceMonitor")
    service = find_object(objects, "Service", "-metrics")
    assert _selects(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= {p["name"] for p in service["spec"]["ports"]}
    dashboard_map = find_object(objects, "ConfigMap", "-dashboard")
    dashboard = json.loads(dashboard_map["data"]["pdserve.json"])
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    metrics = {name for expr in exprs for name in re.findall(r"\b(pdserve_[a-z_]+)", expr)}
    assert metrics >= {
        "pdserve_requests_total", "pdserve_ttft_seconds_bucket", "pdserve_itl_seconds_bucket",
        "pdserve_kv_transfer_bytes_total", "pdserve_kv_transfer_seconds_bucket", "pdserve_kv_recompute_total",
        "pdserve_planner_actual_replicas", "pdserve_planner_desired_replicas",
    }


def test_monitoring_objects_are_off_by_default(render):
    kinds = [obj["kind"] for obj in profile_objects(render, "default")]
    names = [obj["metadata"]["name"] for obj in profile_objects(render, "default")]
    assert "ServiceMonitor" not in kinds
    assert not any(name.endswith("-dashboard") for name in names)


def test_notes_tell_how_to_reach_the_apis(helm, tmp_path):
    """helm template does not render NOTES.txt: render a copy of it inside a ConfigMap template."""
    chart = tmp_path / "pdserve"
    shutil.copytree(CHART, chart)
    notes = (chart / "templates" / "NOTES.txt").read_text()
    wrapped = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\ndata:\n  notes: |\n"
    wrapped += "".join(f"    {line}\n" for line in notes.splitlines())
    (chart / "templates" / "notes-rendered.yaml").write_text(wrapped)
    result = run_helm(helm, "template", RELEASE, str(chart), "--namespace", NAMESPACE,
                      "--show-only", "templates/notes-rendered.yaml")
    assert result.returncode == 0, result.stderr
    text = result.objects[0]["data"]["notes"]
    assert f"port-forward svc/{RELEASE}-pdserve-http 8000:8000" in text
    assert f"port-forward svc/{RELEASE}-pdserve-grpc 50051:50051" in text
    assert "/v1/chat/completions" in text


def test_head_mounts_extra_volumes_for_tls_and_api_keys(render, raycluster_schema):
    result = render(sets=(
        "head.extraVolumes[0].name=tls", "head.extraVolumes[0].secret.secretName=pdserve-tls",
        "head.extraVolumeMounts[0].name=tls", "head.extraVolumeMounts[0].mountPath=/etc/pdserve-tls",
        "head.extraVolumeMounts[0].readOnly=true",
    ))
    cluster = find_object(rendered(result), "RayCluster")
    head = cluster["spec"]["headGroupSpec"]["template"]["spec"]
    assert {"name": "tls", "secret": {"secretName": "pdserve-tls"}} in head["volumes"]
    assert {"name": "tls", "mountPath": "/etc/pdserve-tls", "readOnly": True} in head["containers"][0]["volumeMounts"]
    assert not list(jsonschema.Draft7Validator(raycluster_schema).iter_errors(cluster))
