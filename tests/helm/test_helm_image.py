"""The Dockerfile and the chart agree: pinned vLLM base, pdserve installed, same Ray, same non-root uid.

No Docker daemon runs here, so the image is not built; these checks keep the two files from drifting.
"""

from __future__ import annotations

import re

import pytest
import yaml

from helmchart import CHART, ROOT

pytestmark = pytest.mark.helm

DOCKERFILE = (ROOT / "Dockerfile").read_text()


def build_arg(name: str) -> str:
    match = re.search(rf"^ARG {name}=(\S+)$", DOCKERFILE, re.MULTILINE)
    assert match, f"Dockerfile has no default for ARG {name}"
    return match.group(1)


def test_base_image_is_vllm_with_a_pinned_version():
    assert re.fullmatch(r"vllm/vllm-openai:v\d+\.\d+\.\d+", build_arg("BASE_IMAGE"))


def test_pdserve_is_installed_with_its_server_extras():
    assert build_arg("PDSERVE_EXTRAS") == "server"
    assert re.search(r'pip install "/tmp/pdserve-src\[\$\{PDSERVE_EXTRAS\}\]"', DOCKERFILE)
    assert re.search(r'^ENTRYPOINT \["pdserve"\]$', DOCKERFILE, re.MULTILINE)


def test_ray_version_matches_the_chart():
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert build_arg("RAY_VERSION") == values["ray"]["version"]


def test_image_user_is_the_chart_non_root_user():
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    uid = int(build_arg("PDSERVE_UID"))
    assert uid != 0
    assert values["podSecurityContext"]["runAsUser"] == uid
    assert values["podSecurityContext"]["runAsNonRoot"] is True
    # The last USER is numeric: runAsNonRoot can only verify a numeric uid.
    users = re.findall(r"^USER (\S+)$", DOCKERFILE, re.MULTILINE)
    assert users[-1] == "${PDSERVE_UID}:${PDSERVE_UID}"
