"""Killing a pdserve controller for real, and waiting until a restarted one took over (fault 7 of the chaos
suite): shared by tests/integration/test_controller_restart.py and the multi-host tests.

    controller = find_controller()                     # in a process joined to the Ray cluster
    back_s = kill_and_wait(controller, how="ray")      # any host: Ray kills the actor's process
    back_s = kill_and_wait(controller, how="sigkill")  # the host it runs on: `kill -9` of its pid

The controller's process is titled `ray::ControllerActor` (`ray::ControllerActor.<method>` while it runs a
call); `controller.pid.remote()` names it. From the head host without Ray: `pgrep -f '^ray::ControllerActor'`.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

CALL_TIMEOUT_S = 5.0
BACK_TIMEOUT_S = 120.0
PROCESS_TITLE = "ray::ControllerActor"


def find_controller(name: str | None = None) -> Any:
    """The handle of the controller named `name`, or of the only pdserve controller in the Ray cluster
    this process joined (`ray.init(address=...)` done by the caller)."""
    import ray

    from orchestrator.controller import CONTROLLER_NAME, NAMESPACE

    if name is None:
        names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                 if a["namespace"] == NAMESPACE and a["name"].startswith(CONTROLLER_NAME)]
        if len(names) != 1:
            raise AssertionError(f"expected one pdserve controller, found {names}")
        name = names[0]
    return ray.get_actor(name, namespace=NAMESPACE)


def restarts(controller: Any, timeout_s: float = CALL_TIMEOUT_S) -> int:
    import ray

    return ray.get(controller.recovery_state.remote(), timeout=timeout_s)["controller_restarts"]


def kill(controller: Any, how: str = "sigkill") -> float:
    """Kill the controller's process: `sigkill` (this host: `kill -9` of its pid) or `ray` (`ray.kill`
    with restarts allowed, from any host). Returns when it was killed (time.monotonic())."""
    import psutil
    import ray

    if how == "ray":
        ray.kill(controller, no_restart=False)
        return time.monotonic()
    pid = ray.get(controller.pid.remote(), timeout=CALL_TIMEOUT_S)
    title = " ".join(psutil.Process(pid).cmdline())
    assert title.startswith(PROCESS_TITLE), f"pid {pid} is {title!r}, not the controller"
    os.kill(pid, signal.SIGKILL)
    return time.monotonic()


def wait_back(controller: Any, restarts_before: int, killed_s: float, timeout_s: float = BACK_TIMEOUT_S) -> float:
    """Seconds from the kill until a restarted controller answers, having taken over (its restart count
    grew). Raises AssertionError after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if restarts(controller, timeout_s=2.0) > restarts_before:
                return time.monotonic() - killed_s
        except Exception:  # noqa: BLE001 - it is down or restarting: ask again
            pass
        time.sleep(0.05)
    raise AssertionError(f"the controller did not come back within {timeout_s:.0f} s")


def kill_and_wait(controller: Any, how: str = "sigkill", timeout_s: float = BACK_TIMEOUT_S) -> float:
    """Kill the controller (see `kill`) and wait until a restarted one took over; the seconds that took."""
    before = restarts(controller)
    return wait_back(controller, before, kill(controller, how), timeout_s)
