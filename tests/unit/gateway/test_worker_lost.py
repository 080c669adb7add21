"""Which failures of a worker call mean the worker is gone (the request moves elsewhere) and which are the
request's own (it ends with an error)."""

from __future__ import annotations

import pytest
import ray.exceptions

from orchestrator.gateway.run import worker_lost
from workers.actor import WorkerDraining
from workers.engine.base import EngineError


@pytest.mark.parametrize("exc", [
    ray.exceptions.ActorDiedError(), ray.exceptions.ActorUnavailableError("node unreachable", None),
    # Ray's memory monitor killed the worker's process: seen when the machine ran short of memory.
    ray.exceptions.OutOfMemoryError("2 worker(s) were killed due to the node running low on memory"),
    ray.exceptions.WorkerCrashedError(), ray.exceptions.NodeDiedError("node 10.88.0.3 died"),
    EngineError("the engine failed"), WorkerDraining("draining")])
def test_a_worker_that_died_crashed_or_drains_is_lost(exc):
    assert worker_lost(exc)


@pytest.mark.parametrize("exc", [ValueError("bad sampling params"), ray.exceptions.RayTaskError("prefill", "tb", ValueError("x")),
                                 RuntimeError("a bug")])
def test_the_requests_own_failures_are_not(exc):
    assert not worker_lost(exc)
