"""Fixtures of the Helm chart tests (helpers in helmchart.py)."""

from __future__ import annotations

import functools
from typing import Any

import pytest

from helmchart import HelmResult, find_helm, load_raycluster_schema, run_helm, template_args


@pytest.fixture(scope="session")
def helm() -> str:
    """Path of the helm binary; the test fails, saying how to install it, when there is none."""
    path = find_helm()
    if path is None:
        pytest.fail(
            "the helm binary is missing: run `bash scripts/install-helm.sh .venv/bin` "
            "(or `make setup`), or put helm on PATH",
            pytrace=False,
        )
    return path


@pytest.fixture(scope="session")
def render(helm):
    """render(*values_files, sets=(...), set_json=(...)) -> HelmResult of `helm template` (failures returned, not raised)."""

    @functools.cache
    def _render(*values_files: str, sets: tuple[str, ...] = (), set_json: tuple[str, ...] = ()) -> HelmResult:
        return run_helm(helm, *template_args(values_files, sets, set_json))

    return _render


@pytest.fixture(scope="session")
def raycluster_schema() -> dict[str, Any]:
    return load_raycluster_schema()
