"""Helpers of the Helm chart tests: the helm binary, rendering, and the schemas objects must meet.

No Kubernetes API server runs here, so the chart is proven offline: `helm lint` / `helm template`,
strict validation of every core object against the Kubernetes 1.31 schemas (kubernetes-validate),
the RayCluster against KubeRay's CRD schema (data/, a copy: the tests need nothing outside the repo).
"""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "pdserve"
EXAMPLES = sorted((CHART / "examples").glob("*.yaml"))
CRD_PATH = Path(__file__).with_name("data") / "ray.io_rayclusters.yaml"
KUBERNETES_VERSION = "1.31.0"
RELEASE = "pd"
NAMESPACE = "serving"

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass(frozen=True)
class HelmResult:
    returncode: int
    stdout: str
    stderr: str

    @property
    def objects(self) -> list[dict[str, Any]]:
        """The rendered manifests, empty documents left out."""
        return [doc for doc in yaml.load_all(self.stdout, Loader=_Loader) if doc]


def find_helm() -> str | None:
    """$PDSERVE_HELM (to try another Helm), else `.venv/bin/helm` of this checkout, else `helm` on PATH."""
    if chosen := os.environ.get("PDSERVE_HELM"):
        return chosen
    local = ROOT / ".venv" / "bin" / "helm"
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    return shutil.which("helm")


def run_helm(helm: str, *args: str) -> HelmResult:
    proc = subprocess.run([helm, *args], capture_output=True, text=True, timeout=120, check=False)
    return HelmResult(proc.returncode, proc.stdout, proc.stderr)


def template_args(values_files: tuple[str, ...] = (), sets: tuple[str, ...] = (),
                  set_json: tuple[str, ...] = ()) -> list[str]:
    """`helm template` of the chart. `--set` types only integers and booleans (0.25 stays a string):
    decimal numbers go through `--set-json`."""
    args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE]
    for path in values_files:
        args += ["-f", path]
    for item in sets:
        args += ["--set", item]
    for item in set_json:
        args += ["--set-json", item]
    return args


def rendered(result: HelmResult) -> list[dict[str, Any]]:
    """Objects of a render that must have succeeded."""
    assert result.returncode == 0, f"helm template failed:\n{result.stderr}"
    return result.objects


def find_object(objects: list[dict[str, Any]], kind: str, name_suffix: str = "") -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"].endswith(name_suffix)]
    assert len(found) == 1, f"expected one {kind} named *{name_suffix}, found {[o['metadata']['name'] for o in found]}"
    return found[0]


def strict_crd_schema(node: Any) -> Any:
    """Refuse unknown fields where the API server would prune them (a typo in a template is an error).

    Objects with `properties` and neither `additionalProperties` nor
    `x-kubernetes-preserve-unknown-fields` get `additionalProperties: false`.
    """
    if isinstance(node, list):
        return [strict_crd_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: strict_crd_schema(value) for key, value in node.items()}
    if ("properties" in out and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


def load_raycluster_schema() -> dict[str, Any]:
    """The strict JSON schema of a `ray.io/v1` RayCluster, from KubeRay's CRD."""
    crd = yaml.load(CRD_PATH.read_text(), Loader=_Loader)
    assert crd["spec"]["names"]["kind"] == "RayCluster"
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return strict_crd_schema(copy.deepcopy(version["schema"]["openAPIV3Schema"]))
