"""The controller: a Ray actor that owns the worker pools, their health and their size.

Life of the controller (`pdserve up` creates one, named `pdserve-controller` in namespace `pdserve`):
1. `start()` creates the initial pools (prefill + decode, or colocated) in parallel and returns once
   every worker is ready; a worker that fails to start fails the start with its error.
2. A health loop polls every worker's `stats()` every `HEALTH_INTERVAL_S`. A worker is failed when its
   actor died, when its engine is dead or wedged (`WorkerStats.healthy`: the engine's processes and
   steps, see `BaseEngine.health`), or when it answered no check for `pools.health_timeout_s`. A failed
   worker is killed at once (its in-flight requests then fail over at the gateway: migrated, or
   recomputed), shown as failed with its reason for `FAILED_SHOWN_S`, and replaced while its pool is
   below the size asked for: detection within about a second, a replacement serving one engine start
   later.
3. `scale_to(tier, n)` (the planner's Ray actuator, or a person) grows a pool by starting workers, or
   shrinks it by draining: the chosen workers get no new requests (the gateway sees `draining` in the
   next snapshot; a request that races it is refused by the worker and sent elsewhere), finish what
   they hold (a prefill worker until its KV is acknowledged), and only then are stopped.
4. `snapshot()` is what the gateway routes on: every worker with its actor handle, state and load.
5. `shutdown()` drains nothing: it stops every worker (the API servers stopped first).

The workers are detached actors, so the controller's death kills none of them; Ray restarts the
controller (`ControllerActor`), which rebuilds its state from its checkpoint and the live workers
(`orchestrator.recovery`) before it serves a call, then resumes 2. and 3.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import ray

from orchestrator import recovery
from orchestrator.config import PdserveConfig
from orchestrator.errors import StartupError

log = logging.getLogger(__name__)

CONTROLLER_NAME = "pdserve-controller"  # + a suffix: several clusters may share one Ray cluster
NAMESPACE = "pdserve"
HEALTH_INTERVAL_S = 0.5
STATS_TIMEOUT_S = 10.0
RETRIES = 10  # read-only and idempotent calls in flight when the controller dies run again on its restart
HEALTH_CALL_TIMEOUT_S = 2.0  # one health check; a worker fails after pools.health_timeout_s of these unanswered
KILL_GRACE_S = 5.0  # a failed worker's shutdown (stops its engine processes) before its actor is killed
FAILED_SHOWN_S = 300.0
MAX_FAILED_SHOWN = 16
DRAIN_TIMEOUT_S = 600.0
MAX_RESTART_BACKOFF_S = 60.0
TIERS = ("prefill", "decode")


@dataclass
class WorkerRecord:
    worker_id: str
    tier: str  # "prefill" | "decode" | "colocated"
    handle: Any
    state: str = "starting"  # starting | ready | draining | stopping (drained, or shut down) | failed
    info: Any = None  # EngineInfo once started
    stats: Any = None  # latest WorkerStats
    error: str = ""
    started_s: float = field(default_factory=time.monotonic)
    cores: str | None = None
    last_seen_s: float = field(default_factory=time.monotonic)  # its last answered health check
    failed_s: float = 0.0

    def view(self) -> dict[str, Any]:
        """What the gateway and `pdserve status` see of this worker."""
        return {"worker_id": self.worker_id, "tier": self.tier, "handle": self.handle, "state": self.state,
                "info": self.info, "stats": self.stats, "error": self.error}


class ClusterController:
    """The body of the controller actor (see the module docstring)."""

    def __init__(self, config: dict[str, Any], model_dir: str, name: str = "", kv_secret: bytes | None = None) -> None:
        """`name`: the controller actor's name, the key of its checkpoint ("": none is kept, as in unit tests).
        `kv_secret`: the cluster's KV secret, handed to every worker (`workers.kv.auth`); None: one is made
        here (unit tests; the actor is always given the gateway's, and Ray gives a restart the same)."""
        from workers.kv.auth import make_secret

        self.config = PdserveConfig.model_validate(config)
        self._kv_secret = kv_secret or make_secret(self.config.kv.auth_key_file)
        self.model_dir = model_dir
        self.name = name
        self.restarts = 0
        self.last_recovery: dict[str, Any] = {}
        self._actors: dict[str, str] = {}  # worker actors created and not yet killed: id -> tier (checkpointed)
        self.workers: dict[str, WorkerRecord] = {}
        self.desired: dict[str, int] = {}
        self._next_core = 0
        self._tasks: set[asyncio.Task] = set()
        self._health_task: asyncio.Task | None = None
        self._stopping = False
        self._planner: Any = None
        self._start_failures: dict[str, tuple[int, float]] = {}  # tier -> (failures in a row, last failure)
        self._failed: deque[WorkerRecord] = deque(maxlen=MAX_FAILED_SHOWN)  # shown as failed, then forgotten

    # ---- life cycle ------------------------------------------------------------------------------

    async def start(self) -> dict[str, int]:
        """Start the initial pools; returns ready workers per tier. Raises StartupError on a failed worker."""
        pools = self.config.pools
        if pools.colocated:
            self.desired = {"prefill": 0, "decode": pools.num_decode}
        else:
            self.desired = {"prefill": pools.num_prefill, "decode": pools.num_decode}
        self._checkpoint()
        records = [self._create(tier) for tier in TIERS for _ in range(self.desired[tier])]
        await asyncio.gather(*(self._start_worker(r) for r in records))
        failed = [r for r in records if r.state == "failed"]
        if failed:
            raise StartupError("workers failed to start:\n" + "\n".join(f"  {r.worker_id}: {r.error}" for r in failed))
        self._resume()
        return self.replicas()

    def _resume(self) -> None:
        self._health_task = asyncio.create_task(self._health_loop(), name="pdserve-health")
        if self.config.planner.enabled:
            self._start_autoscaler()

    async def recover(self) -> bool:
        """Take over after a restart (see `orchestrator.recovery`); False when there is nothing to take
        over (no checkpoint: this is the first start)."""
        started = time.monotonic()
        checkpoint = recovery.load_checkpoint(self.name) if self.name else None
        if checkpoint is None:
            return False
        self.desired, self._actors = checkpoint.desired, dict(checkpoint.workers)
        self.restarts = checkpoint.restarts + 1
        self._checkpoint()
        steps = recovery.plan_recovery(await recovery.find_workers(checkpoint))
        for step in steps:
            self._apply_step(step)
        self._resume()
        actions = [s.action for s in steps]
        self.last_recovery = {"took_s": round(time.monotonic() - started, 3), "at": time.time(),
                              **{action: actions.count(action) for action in ("serve", "start", "retire", "fail")}}
        log.warning("controller %s restarted (restart %d): took over %s", self.name, self.restarts, self.last_recovery)
        return True

    def _apply_step(self, step: recovery.Step) -> None:
        found = step.found
        if found.handle is None:  # no actor left: nothing to stop
            self._actors.pop(found.worker_id, None)
            self._checkpoint()
            return
        described = found.described or {}
        record = WorkerRecord(found.worker_id, found.tier, found.handle, info=described.get("info"),
                              stats=described.get("stats"), cores=described.get("cpu_cores"))
        self.workers[record.worker_id] = record
        if step.action == "serve":
            record.state = "ready"
        elif step.action == "start":
            self._spawn(self._start_worker(record))
        elif step.action == "retire":
            self._spawn(self._retire(record))
        else:
            self._fail(record, step.reason)

    @ray.method(max_task_retries=RETRIES)
    def recovery_state(self) -> dict[str, Any]:
        """How often this controller was restarted, and what its last takeover found."""
        return {"controller_restarts": self.restarts, "last_recovery": self.last_recovery}

    def _checkpoint(self) -> None:
        if self.name:
            recovery.save_checkpoint(self.name, recovery.Checkpoint(self.desired, self._actors, self.restarts))

    def _start_autoscaler(self) -> None:
        from orchestrator.autoscaler import Autoscaler

        self._planner = Autoscaler(self.config, self._actuator(), self.replicas,
                                   lambda: [r.stats for r in self.workers.values()])
        self._planner.start()

    def _actuator(self) -> Any:
        local = PoolActuator(self)
        if self.config.planner.actuator == "kubernetes":
            from orchestrator.actuators.kuberay import KubernetesActuator

            return KubeRayPoolActuator(local, KubernetesActuator(self.config.planner.kubernetes), self)
        return local

    def report(self, report: Any) -> None:
        """A gateway's observations of the last second (for the autoscaler; dropped when it is off)."""
        if self._planner is not None:
            self._planner.record(report)

    async def shutdown(self) -> None:
        self._stopping = True
        if self._planner is not None:
            await self._planner.stop()
        if self._health_task is not None:
            self._health_task.cancel()
        await asyncio.gather(*(self._stop_worker(r) for r in list(self.workers.values())), return_exceptions=True)
        self.workers.clear()
        if self.name:
            await recovery.stop_leftovers(self.name)  # failed workers still being stopped, if any

    # ---- queries ---------------------------------------------------------------------------------

    @ray.method(max_task_retries=RETRIES)
    def snapshot(self, handles_known: tuple[str, ...] = ()) -> list[dict[str, Any]]:
        """Every worker (starting, ready, draining), then those that failed in the last FAILED_SHOWN_S.
        `handles_known`: workers whose actor handle the caller already holds: theirs is None here. The
        gateway asks five times a second, and every actor handle sent out costs its owner (this actor)
        bookkeeping that was measured to grow for as long as it kept being sent (~0.3 MiB a minute)."""
        now = time.monotonic()
        recent = [r for r in self._failed if now - r.failed_s < FAILED_SHOWN_S and r.worker_id not in self.workers]
        views = [r.view() for r in self.workers.values()] + [r.view() for r in recent]
        known = set(handles_known)
        for view in views:
            if view["worker_id"] in known:
                view["handle"] = None
        return views

    @ray.method(max_task_retries=RETRIES)
    def replicas(self) -> dict[str, int]:
        """Ready, non-draining workers per tier (colocated workers count as decode)."""
        counts = dict.fromkeys(TIERS, 0)
        for record in self.workers.values():
            if record.state == "ready":
                counts[_pool(record.tier)] += 1
        return counts

    @ray.method(max_task_retries=RETRIES)
    def desired_replicas(self) -> dict[str, int]:
        return dict(self.desired)

    @ray.method(max_task_retries=RETRIES)
    def planner_state(self) -> dict[str, Any]:
        """The planner's last decision (empty while autoscaling is off)."""
        return self._planner.state() if self._planner is not None else {}

    @ray.method(max_task_retries=RETRIES)
    def config_dict(self) -> dict[str, Any]:
        return self.config.model_dump(mode="json")

    # ---- scaling ---------------------------------------------------------------------------------

    @ray.method(max_task_retries=RETRIES)
    async def scale_to(self, tier: str, num_workers: int) -> None:
        """Grow or shrink pool `tier` to `num_workers` (see the module docstring); returns at once,
        the starts and drains go on in the background. Raises ValueError on a bad tier or count."""
        if tier not in TIERS or num_workers < 0:
            raise ValueError(f"scale_to needs a tier in {TIERS} and a count >= 0, got {tier!r}, {num_workers}")
        if tier == "prefill" and self.config.pools.colocated and num_workers:
            raise ValueError("a colocated cluster has no prefill pool")
        self.desired[tier] = num_workers
        self._checkpoint()
        self._reconcile(tier)

    def _reconcile(self, tier: str) -> None:
        if self._stopping:
            return
        live = [r for r in self.workers.values() if _pool(r.tier) == tier and r.state in ("starting", "ready")]
        missing = self.desired[tier] - len(live)
        failures, last_s = self._start_failures.get(tier, (0, 0.0))
        if missing > 0 and failures and time.monotonic() - last_s < min(2.0 ** failures, MAX_RESTART_BACKOFF_S):
            return  # workers of this tier keep failing to start: back off before the next try
        for _ in range(max(missing, 0)):
            self._spawn(self._start_worker(self._create(tier)))
        for record in self._removal_order(live)[:max(-missing, 0)]:
            self._spawn(self._retire(record))

    @staticmethod
    def _removal_order(records: list[WorkerRecord]) -> list[WorkerRecord]:
        """Workers still starting first (newest first), then the least busy."""
        def key(r: WorkerRecord) -> tuple:
            busy = r.stats.num_in_flight + r.stats.num_handoffs if r.stats else 0
            return (r.state != "starting", busy, -r.started_s)
        return sorted(records, key=key)

    async def drain_worker(self, worker_id: str) -> bool:
        """Drain and stop one worker now (and do not replace it). False if it is unknown."""
        record = self.workers.get(worker_id)
        if record is None:
            return False
        pool = _pool(record.tier)
        self.desired[pool] = max(self.desired[pool] - 1, 0)
        self._checkpoint()
        await self._retire(record)
        return True

    async def _retire(self, record: WorkerRecord) -> None:
        record.state = "draining"
        if record.info is not None:
            try:
                drained = await _call(record.handle.drain.remote(DRAIN_TIMEOUT_S), DRAIN_TIMEOUT_S + 5)
            except Exception as exc:  # it died while draining: the health loop reports it; stop what is left
                drained = f"failed ({_reason(exc)})"
            if drained is not True:
                log.warning("worker %s did not drain (%s); stopping it anyway", record.worker_id,
                            drained or f"not within {DRAIN_TIMEOUT_S:.0f} s")
        await self._stop_worker(record)

    # ---- workers ---------------------------------------------------------------------------------

    def _create(self, tier: str) -> WorkerRecord:
        from workers.actor import Worker

        actual = "colocated" if self.config.pools.colocated else tier
        worker_id = f"{actual}-{uuid.uuid4().hex[:6]}"
        pools = self.config.pools
        cores = self._cores()
        options: dict[str, Any] = {
            "name": worker_id, "namespace": NAMESPACE, "num_cpus": pools.cpus_per_worker,
            "num_gpus": pools.gpus_per_worker, "resources": {tier: 1}, "max_concurrency": 10_000,
            "max_restarts": 0, "lifetime": "detached",  # outlives the controller: see orchestrator.recovery
            # Ray's GCS keeps an event record of every task (up to 100,000 by default): with several calls per
            # request and the health polls, it grew ~3 MB a minute under the soak's load. Not for these calls.
            "enable_task_events": False,
        }
        self._actors[worker_id] = actual
        self._checkpoint()  # before the actor exists: a restarted controller never misses one
        handle = ray.remote(Worker).options(**options).remote(
            worker_id, actual, self.config.model_dump(mode="json"), self.model_dir, cores, controller=self.name,
            kv_secret=self._kv_secret)
        record = WorkerRecord(worker_id, actual, handle, cores=cores)
        self.workers[worker_id] = record
        return record

    def _cores(self) -> str | None:
        """The CPU cores of the next vLLM worker on a CPU-only local node (None: leave it to vLLM)."""
        pools, engine = self.config.pools, self.config.engine
        if engine.kind != "vllm" or not pools.bind_cores or pools.gpus_per_worker > 0 or self.config.ray_address:
            return None
        cores = sorted(os.sched_getaffinity(0))
        width = max(1, int(pools.cpus_per_worker))
        start = (self._next_core * width) % len(cores)
        self._next_core += 1
        chosen = [cores[(start + i) % len(cores)] for i in range(min(width, len(cores)))]
        return ",".join(str(c) for c in chosen)

    async def _start_worker(self, record: WorkerRecord) -> None:
        try:
            record.info = await _call(record.handle.start.remote(), self.config.pools.start_timeout_s)
            record.stats = await _call(record.handle.stats.remote(), STATS_TIMEOUT_S)
        except Exception as exc:  # a RayActorError, a timeout or the engine's own error: keep the reason
            record.state, record.error = "failed", _reason(exc)
            log.error("worker %s failed to start: %s", record.worker_id, record.error)
            pool = _pool(record.tier)
            self._start_failures[pool] = (self._start_failures.get(pool, (0, 0.0))[0] + 1, time.monotonic())
            await self._stop_worker(record, keep_record=True)
            return
        self._start_failures.pop(_pool(record.tier), None)
        if record.state == "starting":
            record.state = "ready"
            record.last_seen_s = time.monotonic()
            log.info("worker %s ready (%s)", record.worker_id, record.info)

    async def _stop_worker(self, record: WorkerRecord, keep_record: bool = False, grace_s: float = 30.0) -> None:
        """Ask the worker to stop its engine (a failed one: a short grace, then its engine processes are
        killed by force), then kill its actor."""
        if record.state != "failed":
            record.state = "stopping"  # no longer health-checked: a stopped engine is not a failure
        try:
            await _call(record.handle.shutdown.remote(), grace_s)
        except Exception as exc:  # already dead: nothing to stop
            log.debug("worker %s shutdown: %s", record.worker_id, _reason(exc))
        ray.kill(record.handle, no_restart=True)
        if self._actors.pop(record.worker_id, None) is not None:
            self._checkpoint()
        if not keep_record:
            self.workers.pop(record.worker_id, None)

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(HEALTH_INTERVAL_S)
            await self.check_health()
            for worker_id in [w for w, r in self.workers.items() if r.state == "failed"]:
                self._forget(self.workers[worker_id])  # failed starts: reported, then replaced
            for tier in TIERS:
                self._reconcile(tier)

    async def check_health(self) -> None:
        """One round of health checks (see the module docstring); failed workers are killed and dropped."""
        watched = [r for r in self.workers.values() if r.state in ("ready", "draining")]
        results = await asyncio.gather(*(_call(r.handle.stats.remote(), HEALTH_CALL_TIMEOUT_S) for r in watched),
                                       return_exceptions=True)
        now = time.monotonic()
        for record, result in zip(watched, results):
            if record.state not in ("ready", "draining"):
                continue  # it began to stop (or failed) while the checks were out
            problem = self._health_problem(record, result, now)
            if problem:
                self._fail(record, problem)

    def _health_problem(self, record: WorkerRecord, result: Any, now: float) -> str:
        """Why this check fails the worker ("" when it does not)."""
        if isinstance(result, ray.exceptions.RayActorError):
            return f"the worker actor died: {_reason(result).split('. ')[0]}"
        if isinstance(result, BaseException):  # no answer in time (a busy or stuck actor), or a transient error
            silent_s = now - record.last_seen_s
            timeout_s = self.config.pools.health_timeout_s
            return f"no answer to health checks for {silent_s:.0f} s ({_reason(result)})" if silent_s > timeout_s else ""
        record.last_seen_s = now
        record.stats = result
        return "" if result.healthy else result.health_error or "the engine is not healthy"

    def _fail(self, record: WorkerRecord, reason: str) -> None:
        log.error("worker %s failed: %s; replacing it", record.worker_id, reason)
        record.state, record.error = "failed", reason
        record.stats = None  # its last load figures are not its state any more
        self._forget(record)
        self._spawn(self._stop_worker(record, keep_record=True, grace_s=KILL_GRACE_S))

    def _forget(self, record: WorkerRecord) -> None:
        record.failed_s = time.monotonic()
        self.workers.pop(record.worker_id, None)
        self._failed.append(record)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


class ControllerActor(ClusterController):
    """The Ray actor (`max_restarts=-1`). Ray runs its constructor again, with the same arguments, after
    the controller process died: it then takes over from the checkpoint and the live workers before it
    serves any call (`recover`); on a first start it waits for `start()`."""

    async def __init__(self, config: dict[str, Any], model_dir: str, name: str, kv_secret: bytes | None = None) -> None:
        super().__init__(config, model_dir, name, kv_secret)
        await self.recover()

    def pid(self) -> int:
        """The controller's process (for chaos tests: `kill -9` of it)."""
        return os.getpid()


class PoolActuator:
    """The Ray actuator, inside the controller: a decision becomes `scale_to` on each pool (the shrinking
    pool first, so a power budget holds during the change). On KubeRay the Ray autoscaler then adds or
    removes the pods the workers need."""

    def __init__(self, controller: ClusterController) -> None:
        self.controller = controller

    async def apply(self, decision: Any) -> None:
        current = self.controller.replicas()
        for tier in sorted(TIERS, key=lambda t: decision.num_for(t) - current[t]):
            if tier == "prefill" and self.controller.config.pools.colocated:
                continue
            await self.controller.scale_to(tier, decision.num_for(tier))

    async def observe_replicas(self) -> dict[str, int]:
        return self.controller.replicas()


class KubeRayPoolActuator:
    """The Kubernetes actuator with the pools: patch the RayCluster's worker groups, and start or drain
    the workers. A group is never patched below the workers it still runs (draining ones included), so
    Kubernetes removes a pod only after its worker left."""

    def __init__(self, pools: PoolActuator, kubernetes: Any, controller: ClusterController) -> None:
        self.pools, self.kubernetes, self.controller = pools, kubernetes, controller

    async def apply(self, decision: Any) -> None:
        await self.pools.apply(decision)
        alive = dict.fromkeys(TIERS, 0)
        for record in self.controller.workers.values():
            if record.state != "failed":
                alive[_pool(record.tier)] += 1
        from dataclasses import replace

        await self.kubernetes.apply(replace(decision, num_prefill=max(decision.num_prefill, alive["prefill"]),
                                            num_decode=max(decision.num_decode, alive["decode"])))

    async def observe_replicas(self) -> dict[str, int]:
        return self.controller.replicas()


def _pool(tier: str) -> str:
    return "decode" if tier == "colocated" else tier


async def _call(ref: Any, timeout_s: float) -> Any:
    return await asyncio.wait_for(ref, timeout_s)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    text = str(exc).strip().splitlines()
    return text[-1] if text else type(exc).__name__
