"""A Ray driver on the head host that the chaos tests talk to: the controller's and the workers' calls that
no public API exposes (scaling by hand, KV fault injection), made the way the gateway makes them.

    agent = RayAgent.start(cluster)          # `python agent.py ADDRESS` in the head host's namespace
    agent.call("scale", tier="decode", num_workers=2)
    agent.call("kv_fault", worker_id="prefill-1a2b3c", kind="stall", every=1)
    agent.close()

One JSON object a line on stdin ({"op": ..., args}), one answer a line on stdout ({"ok": true, "result": ...}
or {"ok": false, "error": "..."}). It joins the cluster with the cluster's Ray token (the head host's
environment), so it is what an operator's `ray` session on the head would be, nothing more.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

CALL_TIMEOUT_S = 180.0
NAMESPACE = "pdserve"  # orchestrator.controller.NAMESPACE (this file runs without the project on its path)
CONTROLLER_PREFIX = "pdserve-controller"


class AgentError(RuntimeError):
    """The agent could not run the call; the message is the remote error."""


class RayAgent:
    def __init__(self, process: subprocess.Popen) -> None:
        self._process = process
        self._lock = threading.Lock()

    @classmethod
    def start(cls, cluster: Any) -> RayAgent:
        head = cluster.plan.host("head")
        env = cluster.plan.host_env(head, cluster.plan.work_dir / "ray_auth_token", 1)
        process = subprocess.Popen(
            ["ip", "netns", "exec", head.namespace, sys.executable, str(Path(__file__).resolve()), cluster.plan.ray_address],
            env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=(cluster.plan.work_dir / "agent.log").open("w"),
            text=True, start_new_session=True)
        agent = cls(process)
        agent.call("ping")
        return agent

    def call(self, op: str, **args: Any) -> Any:
        with self._lock:
            if self._process.poll() is not None:
                raise AgentError(f"the agent exited with {self._process.returncode}")
            self._process.stdin.write(json.dumps({"op": op, **args}) + "\n")
            self._process.stdin.flush()
            line = self._process.stdout.readline()
        if not line:
            raise AgentError(f"the agent exited during {op}")
        answer = json.loads(line)
        if not answer["ok"]:
            raise AgentError(f"{op}: {answer['error']}")
        return answer["result"]

    def close(self) -> None:
        if self._process.poll() is None:
            self._process.stdin.close()
            try:
                self._process.wait(30)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()


# ---- the agent process ---------------------------------------------------------------------------------


def _controller():
    import ray

    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
             if a["namespace"] == NAMESPACE and a["name"].startswith(CONTROLLER_PREFIX)]
    if len(names) != 1:
        raise RuntimeError(f"expected one pdserve controller, found {names}")
    return ray.get_actor(names[0], namespace=NAMESPACE)


def _run(op: str, args: dict[str, Any]) -> Any:
    import ray

    if op == "ping":
        return "pong"
    if op == "scale":
        return ray.get(_controller().scale_to.remote(args["tier"], args["num_workers"]), timeout=CALL_TIMEOUT_S)
    if op == "kv_fault":
        worker = ray.get_actor(args.pop("worker_id"), namespace=NAMESPACE)
        return ray.get(worker.inject_kv_fault.remote(**args), timeout=CALL_TIMEOUT_S)
    if op == "clear_kv_faults":
        return ray.get(ray.get_actor(args["worker_id"], namespace=NAMESPACE).clear_kv_faults.remote(), timeout=CALL_TIMEOUT_S)
    if op == "controller_pid":
        return ray.get(_controller().pid.remote(), timeout=CALL_TIMEOUT_S)
    raise ValueError(f"unknown op {op!r}")


def main(address: str) -> int:
    # Answers go to the original stdout, and only answers: whatever else writes to fd 1 (Ray's driver
    # prints, e.g. a node marked dead) goes to stderr (agent.log), or the caller would read it as an answer.
    answers = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    import ray

    ray.init(address=address, namespace=NAMESPACE, logging_level="ERROR", log_to_driver=False)
    for line in sys.stdin:
        request = json.loads(line)
        try:
            answer = {"ok": True, "result": _run(request.pop("op"), request)}
        except Exception as exc:  # noqa: BLE001 - every failure goes back to the caller as its answer
            answer = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(answer, default=str), file=answers, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1]))
