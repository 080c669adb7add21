"""The controller's recovery: what survives its death, and how a restarted controller takes over.

The workers are detached Ray actors: they outlive the controller (whose death would otherwise kill every
engine), and the controller is restartable (`max_restarts=-1`). What a restarted controller needs and
cannot ask the workers, it reads from a checkpoint in Ray's GCS key-value store (as Ray Serve's
controller does), written on every change:
- `desired`: the pool sizes asked for (a pool being refilled when the controller died stays asked for);
- `workers`: every worker actor created and not yet killed, id -> tier (written before the actor is
  created, removed after it is killed: a worker is never unknown to the checkpoint);
- `restarts`: how many times a controller took over.

Life of a restart (Ray runs the actor's constructor again, with the same arguments: the config and the
model dir travel with it): 1. `load_checkpoint` finds the checkpoint (none: a first start); 2. every
listed worker is asked `describe()` (bounded by `DESCRIBE_TIMEOUT_S`); 3. `plan_recovery` (pure) says
what each becomes: `serve` (ready), `start` (mid-start or unreachable: its idempotent `start()` is
awaited again, bounded by `pools.start_timeout_s`, as a new worker's), `retire` (it was draining: the
drain is resumed) or `fail` (its actor died, or is gone); 4. the controller resumes its health loop and
autoscaler. Calls made meanwhile wait in Ray's queue (the constructor is still running).

Who removes the workers: the controller's `shutdown()` on a normal stop (`pdserve up` stopped by Ctrl-C
or SIGTERM); `stop_leftovers` after it, should the controller have been down at that moment; and each
worker itself once its controller is gone for good (`Worker` watches the controller's name: a controller
is owned by the `pdserve up` process and dies with it, e.g. on SIGKILL, and a dead controller's name is
released; a restarting one keeps it).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

DESCRIBE_TIMEOUT_S = 2.0


@dataclass
class Checkpoint:
    desired: dict[str, int] = field(default_factory=dict)
    workers: dict[str, str] = field(default_factory=dict)  # worker id -> tier
    restarts: int = 0

    def to_json(self) -> str:
        return json.dumps({"desired": self.desired, "workers": self.workers, "restarts": self.restarts})

    @classmethod
    def from_json(cls, text: str | bytes) -> Checkpoint:
        state = json.loads(text)
        return cls(dict(state["desired"]), dict(state["workers"]), int(state["restarts"]))


@dataclass(frozen=True)
class Found:
    """What one checkpointed worker answered: `describe()`'s dict, or why there is none."""

    worker_id: str
    tier: str
    handle: Any  # None: no actor of that name (it is gone)
    described: dict[str, Any] | None = None
    problem: str = ""  # "dead: ..." (its actor died), "gone", or "unreachable: ..." (no answer in time)


@dataclass(frozen=True)
class Step:
    found: Found
    action: str  # serve | start | retire | fail
    reason: str = ""


def plan_recovery(found: list[Found]) -> list[Step]:
    """What each checkpointed worker becomes in the restarted controller (see the module docstring)."""
    steps = []
    for worker in found:
        described = worker.described
        if worker.problem.startswith(("dead", "gone")):
            steps.append(Step(worker, "fail", f"the worker was lost while the controller was down ({worker.problem})"))
        elif described is None or described["info"] is None:
            steps.append(Step(worker, "start"))  # unreachable (its start decides) or still starting
        elif described["draining"]:
            steps.append(Step(worker, "retire"))
        elif described["stats"] is not None and not described["stats"].healthy:
            steps.append(Step(worker, "fail", described["stats"].health_error or "the engine is not healthy"))
        else:
            steps.append(Step(worker, "serve"))
    return steps


# ---- the checkpoint in Ray's GCS ---------------------------------------------------------------------

def load_checkpoint(name: str) -> Checkpoint | None:
    from ray.experimental.internal_kv import _internal_kv_get

    from orchestrator.controller import NAMESPACE

    text = _internal_kv_get(name, namespace=NAMESPACE)
    return Checkpoint.from_json(text) if text else None


def save_checkpoint(name: str, checkpoint: Checkpoint) -> None:
    from ray.experimental.internal_kv import _internal_kv_put

    from orchestrator.controller import NAMESPACE

    _internal_kv_put(name, checkpoint.to_json(), overwrite=True, namespace=NAMESPACE)


def delete_checkpoint(name: str) -> None:
    from ray.experimental.internal_kv import _internal_kv_del

    from orchestrator.controller import NAMESPACE

    _internal_kv_del(name, namespace=NAMESPACE)


async def find_workers(checkpoint: Checkpoint, timeout_s: float = DESCRIBE_TIMEOUT_S) -> list[Found]:
    """Ask every checkpointed worker `describe()`, all at once, each bounded by `timeout_s`."""
    import asyncio

    return list(await asyncio.gather(*(_find(worker_id, tier, timeout_s) for worker_id, tier in checkpoint.workers.items())))


async def _find(worker_id: str, tier: str, timeout_s: float) -> Found:
    import asyncio

    import ray

    from orchestrator.controller import NAMESPACE

    try:
        handle = ray.get_actor(worker_id, namespace=NAMESPACE)
    except ValueError:
        return Found(worker_id, tier, None, problem="gone")
    try:
        return Found(worker_id, tier, handle, await asyncio.wait_for(handle.describe.remote(), timeout_s))
    except ray.exceptions.RayActorError as exc:
        return Found(worker_id, tier, handle, problem=f"dead: {str(exc).strip().splitlines()[-1] if str(exc).strip() else 'actor died'}")
    except TimeoutError:
        return Found(worker_id, tier, handle, problem=f"unreachable: no answer in {timeout_s:.0f} s")


async def stop_leftovers(name: str, grace_s: float = 10.0) -> list[str]:
    """Stop the workers a controller's checkpoint still lists (its `shutdown()` did not run to the end:
    it was down, or stuck), then drop the checkpoint. Returns the ids stopped. Called by the process that
    created the controller, after the controller's shutdown."""
    import asyncio

    import ray

    checkpoint = load_checkpoint(name)
    if checkpoint is None:
        return []
    found = [f for f in await find_workers(checkpoint) if f.handle is not None]

    async def stop(worker: Found) -> None:
        try:
            await asyncio.wait_for(worker.handle.shutdown.remote(), grace_s)
        except Exception as exc:  # dead or stuck: the kill below takes what is left
            log.debug("leftover worker %s shutdown: %s", worker.worker_id, exc)
        ray.kill(worker.handle, no_restart=True)

    await asyncio.gather(*(stop(f) for f in found))
    delete_checkpoint(name)
    if found:
        log.warning("stopped %d workers the controller left: %s", len(found), ", ".join(f.worker_id for f in found))
    return [f.worker_id for f in found]
