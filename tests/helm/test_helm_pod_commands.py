"""The pod commands the chart writes behave as intended, run by bash against stand-ins for Ray and pdserve.

KubeRay puts its generated `ray start` command in $KUBERAY_GEN_RAY_START_CMD as shell text (rayStartParams
become `--key=value`); the chart's scripts must parse it as KubeRay's own `bash -lc` would, and the head
must run `pdserve up` next to Ray and end when either ends. (Run with `bash -c`: a login shell would read
this machine's /etc/profile, which is not the image's.)
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from helmchart import find_object, rendered

pytestmark = pytest.mark.helm

FAKE_RAY_START = """#!/bin/bash
# Stand-in for `ray start --block`: records its arguments, marks Ray up, blocks.
printf '%s\\n' "$@" > "$STATE/ray-start.args"
echo $$ > "$STATE/ray-start.pid"
[[ -n "${RAY_START_FAILS:-}" ]] && exit 1
touch "$STATE/ray-up"
exec sleep 60
"""
FAKE_RAY = """#!/bin/bash
# Stand-in for the `ray` CLI: health-check succeeds once fake-ray-start marked Ray up.
[[ "$1" == health-check && -e "$STATE/ray-up" ]]
"""
FAKE_PDSERVE = """#!/bin/bash
# Stand-in for `pdserve up`: records its arguments; exits with $PDSERVE_EXIT, or serves until SIGTERM.
# The arguments are written once the SIGTERM handler is in place (tests signal when they see them), and
# the serving child holds none of the test's pipes, so a signal at any moment ends the stand-in at once.
[[ -n "${PDSERVE_EXIT:-}" ]] && { printf '%s\\n' "$@" > "$STATE/pdserve.args"; exit "$PDSERVE_EXIT"; }
trap 'kill $serving 2>/dev/null; touch "$STATE/pdserve.terminated"; exit 0' TERM
sleep 60 </dev/null >/dev/null 2>&1 &
serving=$!
printf '%s\\n' "$@" > "$STATE/pdserve.args"
wait
"""


def kuberay_start_command(ray_start_params: dict[str, str]) -> str:
    """What KubeRay puts in $KUBERAY_GEN_RAY_START_CMD: `ray start` with `--key=value` per parameter."""
    flags = " ".join(f"--{key}={value}" for key, value in ray_start_params.items())
    return f"fake-ray-start {flags} --block"


def container_process(container: dict, tmp_path: Path, start_command: str, **env: str) -> subprocess.Popen:
    """Start the container's command with stand-ins for `ray` and `pdserve` first on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in {"fake-ray-start": FAKE_RAY_START, "ray": FAKE_RAY, "pdserve": FAKE_PDSERVE}.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    assert container["command"] == ["/bin/bash", "-lc", "--"]
    environment = {"PATH": f"{bin_dir}:/usr/bin:/bin", "STATE": str(tmp_path),
                   "KUBERAY_GEN_RAY_START_CMD": start_command, **env}
    return subprocess.Popen(["/bin/bash", "-c", "--", *container["args"]], env=environment,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run_container(container: dict, tmp_path: Path, start_command: str, **env: str) -> subprocess.CompletedProcess:
    process = container_process(container, tmp_path, start_command, **env)
    stdout, stderr = process.communicate(timeout=60)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def group_specs(render) -> tuple[dict, dict]:
    cluster = find_object(rendered(render()), "RayCluster")
    head = cluster["spec"]["headGroupSpec"]
    workers = {g["groupName"]: g for g in cluster["spec"]["workerGroupSpecs"]}
    return head, workers


@pytest.mark.parametrize("tier", ["prefill", "decode"])
def test_worker_passes_its_tier_resource_to_ray_start_as_json(render, tmp_path, tier):
    _, workers = group_specs(render)
    group = workers[tier]
    (container,) = group["template"]["spec"]["containers"]
    result = run_container(container, tmp_path, kuberay_start_command(group["rayStartParams"]),
                           RAY_START_FAILS="1")
    assert result.returncode == 1  # exec'd: the container's status is ray start's
    args = (tmp_path / "ray-start.args").read_text().splitlines()
    assert f'--resources={{"{tier}": 1}}' in args
    assert "--block" in args


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_head_starts_pdserve_once_ray_is_up_and_stops_with_it(render, tmp_path):
    head, _ = group_specs(render)
    (container,) = head["template"]["spec"]["containers"]
    result = run_container(container, tmp_path, kuberay_start_command(head["rayStartParams"]), PDSERVE_EXIT="3")
    assert result.returncode == 3, result.stderr  # pdserve's status ends the container
    assert (tmp_path / "pdserve.args").read_text().split() == [
        "up", "--address", "auto", "--config", "/etc/pdserve/config.yaml"]
    ray_pid = int((tmp_path / "ray-start.pid").read_text())
    deadline = time.monotonic() + 5
    while _alive(ray_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(ray_pid), "ray start was left running after pdserve ended"


def test_head_fails_clearly_when_ray_does_not_start(render, tmp_path):
    head, _ = group_specs(render)
    (container,) = head["template"]["spec"]["containers"]
    result = run_container(container, tmp_path, kuberay_start_command(head["rayStartParams"]), RAY_START_FAILS="1")
    assert result.returncode == 1
    assert "ray start exited before the head came up" in result.stderr
    assert not (tmp_path / "pdserve.args").exists()


def test_head_passes_sigterm_to_ray_and_pdserve(render, tmp_path):
    """Kubernetes stops a pod with SIGTERM to its command: pdserve must get it (to drain) and Ray too."""
    head, _ = group_specs(render)
    (container,) = head["template"]["spec"]["containers"]
    process = container_process(container, tmp_path, kuberay_start_command(head["rayStartParams"]))
    deadline = time.monotonic() + 20
    while not (tmp_path / "pdserve.args").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (tmp_path / "pdserve.args").exists(), "pdserve was not started"
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=20)
    assert (tmp_path / "pdserve.terminated").exists()
    assert not _alive(int((tmp_path / "ray-start.pid").read_text()))
