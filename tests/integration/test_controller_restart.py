"""`kill -9` of the controller actor under load (fault 7): Ray restarts it, the restarted controller takes
over the workers it finds alive (the same ids, the same engine processes: none started), and serving never
notices: the streams in flight and the requests sent while it is down complete token-identical, 0 lost.
Afterwards the restarted controller scales as before, and the cluster is left as it was found (1P+1D).
"""

from __future__ import annotations

import time
import urllib.request

import pytest
import ray

from controllerfaults import PROCESS_TITLE, kill, restarts, wait_back
from faultstreams import FaultCounts, run_streams
from test_worker_faults import PROMPTS, RECOVERY_TIMEOUT_S, _engine_process, _health, _ready, _wait_recovered

pytestmark = [pytest.mark.ray, pytest.mark.vllm, pytest.mark.slow]

LATE_PROMPTS = PROMPTS[:2]  # sent while the controller is down


def _engines(serving) -> dict[str, int]:
    """Worker id -> the pid of its engine's VLLM::Worker (a new engine would have a new pid)."""
    return {w["worker_id"]: _engine_process(w).pid for w in serving.workers() if w["state"] == "ready"}


def _metric(serving, name: str) -> float:
    with urllib.request.urlopen(f"{serving.http_url}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " "))


def _wait_pools(serving, num_decode: int) -> None:
    deadline = time.monotonic() + RECOVERY_TIMEOUT_S
    while len(_ready(serving, "decode")) != num_decode or any(w["state"] != "ready" for w in serving.workers()
                                                              if w["state"] != "failed"):
        assert time.monotonic() < deadline, serving.workers()
        time.sleep(0.5)


def test_controller_killed_under_load_is_restarted_and_takes_over_its_workers(serving, summary_line):
    controller = serving.cluster.controller
    expected = [o.token_ids for o in run_streams(serving.grpc_target, PROMPTS)]
    engines_before = _engines(serving)
    restarts_before = restarts(controller)
    pid_before = ray.get(controller.pid.remote())
    killed: list[float] = []
    back: list[float] = []

    def kill_the_controller() -> None:
        killed.append(kill(controller, how="sigkill"))

    def sent_while_down() -> list[str]:
        while not killed:
            time.sleep(0.01)
        return LATE_PROMPTS

    outcomes = run_streams(serving.grpc_target, PROMPTS, fault=kill_the_controller, during=sent_while_down)
    back.append(wait_back(controller, restarts_before, killed[0]))
    counts = FaultCounts.of(f"controller killed (kill -9 of {PROCESS_TITLE}), back after {back[0]:.1f} s", outcomes,
                            expected + expected[:len(LATE_PROMPTS)], back[0])
    summary_line(counts.line())
    assert counts.clean, counts

    # The restarted controller is another process, with the same workers and engines.
    assert ray.get(controller.pid.remote()) != pid_before
    assert _engines(serving) == engines_before
    recovery = ray.get(controller.recovery_state.remote())
    assert recovery["controller_restarts"] == restarts_before + 1
    assert recovery["last_recovery"]["serve"] == len(engines_before) and recovery["last_recovery"]["fail"] == 0
    status, health = _health(serving)
    assert status == 200, health
    deadline = time.monotonic() + 10  # the gateway reads the restart count with its next snapshot
    while serving.cluster.gateway.controller_restarts != restarts_before + 1:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    document = serving.loop.run(serving.cluster.gateway.status())
    assert document["controller"] == {"reachable": True, "controller_restarts": restarts_before + 1}
    assert _metric(serving, "pdserve_controller_restarts_total") >= 1

    # It scales as before: a new decode worker, then back to the cluster as it was found.
    ray.get(controller.scale_to.remote("decode", 2))
    try:
        _wait_pools(serving, num_decode=2)
        assert len(_engines(serving)) == len(engines_before) + 1
    finally:
        ray.get(controller.scale_to.remote("decode", 1))
        _wait_recovered(serving, time.monotonic())
        _wait_pools(serving, num_decode=1)
    assert len(_engines(serving)) == len(engines_before)
