import os

import pytest
from ray._private import ray_constants, services

from orchestrator.cluster import LOOPBACK, _ray_single_node


def test_ray_keeps_a_loopback_node_ip_while_the_embedded_one_starts():
    with _ray_single_node():
        assert services.resolve_ip_for_localhost(LOOPBACK) == LOOPBACK
        assert os.environ[ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR] == "0"  # for the processes Ray starts


def test_ray_single_node_mode_is_restored_afterwards_even_on_failure(monkeypatch):
    monkeypatch.setenv(ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR, "1")
    with pytest.raises(RuntimeError), _ray_single_node():
        raise RuntimeError("ray.init failed")
    assert os.environ[ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR] == "1"
    assert ray_constants.ENABLE_RAY_CLUSTER
    monkeypatch.delenv(ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR)
    with _ray_single_node():
        pass
    assert ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR not in os.environ
