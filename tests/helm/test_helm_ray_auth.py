"""The chart keeps Ray's token authentication on: every Ray process of the release gets RAY_AUTH_MODE=token
and the token from one Secret (the chart's own, or the user's), on every profile.

Rendered by the real `helm template`; no API server runs here, so the `lookup` that keeps a generated
token across upgrades finds nothing and each render makes a fresh one (checked as such).
"""

from __future__ import annotations

import base64

import pytest

from helmchart import EXAMPLES, find_object, rendered, run_helm, template_args

pytestmark = pytest.mark.helm

PROFILES = {"default": (), **{path.stem: (str(path),) for path in EXAMPLES}}


def ray_containers(cluster: dict) -> dict[str, dict]:
    """Every container that runs Ray, by group: head, prefill, decode, and the autoscaler sidecar's
    settings when it runs (KubeRay builds that container from `autoscalerOptions`)."""
    spec = cluster["spec"]
    containers = {"head": spec["headGroupSpec"]["template"]["spec"]["containers"][0]}
    for group in spec["workerGroupSpecs"]:
        containers[group["groupName"]] = group["template"]["spec"]["containers"][0]
    if "autoscalerOptions" in spec:
        containers["autoscaler"] = spec["autoscalerOptions"]
    return containers


def env_of(container: dict) -> dict[str, dict]:
    return {item["name"]: item for item in container["env"]}


@pytest.mark.parametrize("profile", PROFILES)
def test_every_ray_process_gets_token_auth_from_the_charts_secret(render, profile):
    objects = rendered(render(*PROFILES[profile]))
    cluster = find_object(objects, "RayCluster")
    secret = find_object(objects, "Secret", "-ray-auth")
    assert secret["type"] == "Opaque" and secret["metadata"]["name"] == "pd-pdserve-ray-auth"
    token = base64.b64decode(secret["data"]["token"]).decode()
    assert len(token) == 48 and token.isalnum()
    containers = ray_containers(cluster)
    autoscaled = cluster["spec"]["enableInTreeAutoscaling"]
    assert set(containers) == {"head", "prefill", "decode"} | ({"autoscaler"} if autoscaled else set())
    for group, container in containers.items():
        env = env_of(container)
        assert env["RAY_AUTH_MODE"]["value"] == "token", group
        assert env["RAY_AUTH_TOKEN"]["valueFrom"] == {"secretKeyRef": {"name": "pd-pdserve-ray-auth", "key": "token"}}, group


def test_the_head_script_runs_pdserve_up_in_the_container_that_holds_the_token(render):
    cluster = find_object(rendered(render()), "RayCluster")
    head = ray_containers(cluster)["head"]
    assert "pdserve up --address auto" in head["args"][0] and "RAY_AUTH_TOKEN" in env_of(head)


def test_no_token_is_written_into_the_pod_specs_or_the_config(render):
    objects = rendered(render())
    token = base64.b64decode(find_object(objects, "Secret", "-ray-auth")["data"]["token"]).decode()
    others = [o for o in objects if o["kind"] != "Secret"]
    assert token not in repr(others)


def test_each_render_without_a_cluster_makes_a_fresh_token(helm):
    # `render` caches by arguments: call helm twice ourselves.
    tokens = {find_object(rendered(run_helm(helm, *template_args())), "Secret", "-ray-auth")["data"]["token"]
              for _ in range(2)}
    assert len(tokens) == 2  # random when `lookup` finds none; an upgrade on a cluster reuses the stored one


def test_an_existing_secret_is_used_and_none_is_created(render):
    objects = rendered(render(sets=("ray.auth.existingSecret=my-ray-token", "ray.auth.secretKey=ray-token")))
    assert not [o for o in objects if o["kind"] == "Secret"]
    for group, container in ray_containers(find_object(objects, "RayCluster")).items():
        assert env_of(container)["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"] == {
            "name": "my-ray-token", "key": "ray-token"}, group


def test_turning_auth_off_says_so_and_creates_no_secret(render):
    objects = rendered(render(sets=("ray.auth.enabled=false",)))
    assert not [o for o in objects if o["kind"] == "Secret"]
    for group, container in ray_containers(find_object(objects, "RayCluster")).items():
        env = env_of(container)
        assert env["RAY_AUTH_MODE"]["value"] == "disabled" and "RAY_AUTH_TOKEN" not in env, group


def test_without_the_autoscaler_the_ray_pods_still_get_the_token(render):
    cluster = find_object(rendered(render(sets=("ray.autoscaler.enabled=false",))), "RayCluster")
    containers = ray_containers(cluster)
    assert set(containers) == {"head", "prefill", "decode"}
    assert all(env_of(c)["RAY_AUTH_MODE"]["value"] == "token" and "RAY_AUTH_TOKEN" in env_of(c)
               for c in containers.values())


@pytest.mark.parametrize("sets, wanted", [
    (("ray.auth.existingSecret=Not_A_Name",), "existingSecret"),
    (("ray.auth.secretKey=a/b",), "secretKey"),
    (("ray.auth.enabled=maybe",), "enabled"),
    (("ray.auth.bogus=1",), "bogus"),
])
def test_bad_auth_values_are_refused_naming_the_key(render, sets, wanted):
    result = render(sets=sets)
    assert result.returncode != 0 and wanted in result.stderr
