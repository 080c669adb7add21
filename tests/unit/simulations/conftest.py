"""Shared factories for the simulator tests: small configs and workloads that run in milliseconds."""

import pytest

from simulations.config import SimConfig
from simulations.request import SimRequest
from simulations.workloads import synthetic


@pytest.fixture
def small_config():
    def make(**changes):
        values = dict(model="llama-3.1-8b", accelerator="h100-sxm", num_prefill=1, num_decode=2,
                      ttft_slo_ms=2000, tpot_slo_ms=100)
        values.update(changes)
        return SimConfig(**values)
    return make


@pytest.fixture
def chat_workload():
    return synthetic({"chat": 1.0}, rate_rps=4.0, duration_s=30.0, spread=0.5, seed=1)


@pytest.fixture
def prefix_workload():
    """Requests sharing a long system prompt (the first 8 blocks of 512 tokens)."""
    shared = tuple(range(8))
    return [SimRequest(i, i * 0.2, 512 * 10, 32, shared + (100 + 2 * i, 101 + 2 * i), 512) for i in range(40)]
