"""The worker: one engine in one Ray actor, in the prefill, decode or colocated pool.

The controller creates workers as Ray actors (`ray.remote(Worker)`, pinned by the `prefill` / `decode`
custom resources, on the CPU bound to their own cores); the gateway calls them. Life of a worker:
1. `__init__` (cheap): remember the config; bind the engine's threads to its cores (the env var is
   read when the engine starts its process).
2. `start()` loads the engine and returns its `EngineInfo` (KV endpoints among it).
3. Serving:
   - `prefill(request)` runs a prompt (`max_tokens=1`) whose KV is pushed to a decode worker while it
     is computed, and returns the first token. The worker then waits, off the request's path, for the
     receiver to acknowledge the transfer (its outcome appears in the receiver's stats service), so a
     draining prefill worker leaves only once its KV has been delivered.
   - `generate(request)` (a Ray streaming generator) yields lists of `EngineOutput`s: decode (after a
     transfer), colocated serving, recompute after a failed transfer, or a migrated request.
   - `abort(request_id)` stops a request and frees its blocks, whichever method runs it.
4. `drain()` refuses new work and returns once nothing is in flight (requests and KV handoffs), or at
   its timeout; the controller then calls `shutdown()` and kills the actor.
`stats()` is what the controller polls for health and load: a worker is healthy while its engine is
(`BaseEngine.health`: its processes live and its steps advance), not merely while the actor answers. Every method runs on the actor's event loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import asdict, dataclass, replace
from typing import Any

import grpc

from orchestrator import tracing
from orchestrator.api.pb import kv_pb2, kv_pb2_grpc
from orchestrator.config import PdserveConfig
from workers.engine.base import BaseEngine, EngineInfo, EngineOutput, EngineRequest, EngineStats
from workers.kv.faults import STALL_PAST_TIMEOUT_S, KVFaultPlan

log = logging.getLogger(__name__)

ACK_POLL_S = 0.02
ACK_GRACE_S = 5.0
ORPHAN_CHECK_S = 5.0
ORPHAN_GRACE_S = 15.0  # a controller's name unknown this long: it is dead for good (a restart keeps the name)
MAX_REMEMBERED_ABORTS = 4096  # beyond the KV timeout, how long a handoff is awaited before it is given up


class WorkerDraining(Exception):
    """The worker is draining or stopped: send the request elsewhere."""


@dataclass(frozen=True)
class PrefillResult:
    """What a prefill produced: its first token (None when aborted) and what it cost."""

    first_token: int | None
    finish_reason: str | None  # "stop": the first token ended the request; "abort": it was aborted
    num_cached_tokens: int
    engine_ms: float


@dataclass(frozen=True)
class WorkerStats:
    worker_id: str
    tier: str
    engine: EngineStats
    num_in_flight: int  # requests this worker runs now
    num_handoffs: int  # prefills whose KV the receiver has not acknowledged yet
    draining: bool
    kv_sent_bytes: int
    kv_received_bytes: int
    kv_transfers_completed: int
    kv_transfers_recomputed: int
    kv_transfer_seconds: float
    kv_auth_failures: int = 0  # KV frames and aborts its receivers refused for a missing or wrong MAC
    healthy: bool = True  # the engine's health, not the actor's: its processes live and its steps advance
    health_error: str = ""  # why not

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class _DecodeSpans:
    """The decode side's spans of one request: `kv_transfer` until its first output (when it receives
    KV), then `decode`. Kept open across the generator's yields, so not made current."""

    def __init__(self, request: EngineRequest, worker_id: str) -> None:
        parent = tracing.extract_context(request.trace)
        self._tracer = tracing.tracer()
        self._parent = parent
        self._worker_id = worker_id
        self._transfer = (self._tracer.start_span("kv_transfer", context=parent, attributes={"worker": worker_id})
                          if request.kv_receive is not None else None)
        self._decode = None if self._transfer is not None else self._start_decode()
        self._num_tokens = 0

    def _start_decode(self) -> Any:
        return self._tracer.start_span("decode", context=self._parent, attributes={"worker": self._worker_id})

    def observe(self, output: EngineOutput) -> None:
        if self._transfer is not None:
            if output.kv is not None:
                self._transfer.set_attributes({"complete": output.kv.complete, "bytes": output.kv.bytes,
                                               "failure": output.kv.failure})
            self._transfer.end()
            self._transfer = None
            self._decode = self._start_decode()
        self._num_tokens += len(output.token_ids)

    def end(self) -> None:
        if self._transfer is not None:
            self._transfer.end()
        if self._decode is not None:
            self._decode.set_attribute("tokens", self._num_tokens)
            self._decode.end()


def kv_host(configured: str) -> str:
    """Where this worker's KV receivers listen and what they advertise: `kv.host`, or for `auto` the
    address Ray knows this worker's node by (every host advertises its own; loopback when embedded)."""
    if configured != "auto":
        return configured
    import ray

    return ray.util.get_node_ip_address() if ray.is_initialized() else "127.0.0.1"


def build_engine(config: PdserveConfig, model_dir: str, tier: str, worker_id: str,
                 kv_secret: bytes | None = None) -> BaseEngine:
    """The engine `config.engine.kind` names, set up for `tier`. `kv_secret`: the cluster's KV secret
    (`kv.auth` other than `none`; raises ValueError without it)."""
    kv = None
    if tier != "colocated":
        if config.kv.auth != "none" and not kv_secret:
            raise ValueError(f"kv.auth={config.kv.auth} needs the cluster's KV secret (the controller passes it)")
        from workers.kv.auth import resolve_mode

        host = kv_host(config.kv.host)
        kv = {"transport": config.kv.transport, "host": host, "timeout_s": config.kv.timeout_s,
              "max_stash_bytes": config.kv.max_stash_mib << 20, "zmq_receiver": config.kv.zmq_receiver,
              "auth": resolve_mode(config.kv.auth, host), "secret": kv_secret}
    if config.engine.kind == "timing":
        from workers.engine.timing import TimingEngine

        return TimingEngine(config.model, config.engine, worker_id=worker_id, kv=kv)
    from workers.engine.vllm_engine import VllmEngine

    return VllmEngine(model_dir, config.model, config.engine, worker_id=worker_id, kv=kv)


class Worker:
    """The body of a worker actor (usable without Ray in tests)."""

    def __init__(self, worker_id: str, tier: str, config: dict[str, Any], model_dir: str,
                 cpu_cores: str | None = None, controller: str = "", kv_secret: bytes | None = None) -> None:
        """`controller`: the name of the controller actor that owns this worker ("": none to watch).
        `kv_secret`: the cluster's KV secret (see `workers.kv.auth`), kept out of `config`."""
        if cpu_cores is not None:
            os.environ["VLLM_CPU_OMP_THREADS_BIND"] = cpu_cores
        self.worker_id = worker_id
        self.tier = tier
        self.config = PdserveConfig.model_validate(config)
        tracing.setup_from_config(f"pdserve-{tier}", self.config.tracing)
        self.engine = build_engine(self.config, model_dir, tier, worker_id, kv_secret)
        self.info: EngineInfo | None = None
        self.draining = False
        self._in_flight: set[str] = set()
        self._handoffs: set[str] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._channels: dict[str, Any] = {}
        self._tasks: set[asyncio.Task] = set()
        self._faults = KVFaultPlan(default_stall_s=self.config.kv.timeout_s + STALL_PAST_TIMEOUT_S)
        self._aborted: OrderedDict[str, None] = OrderedDict()  # aborts that may have come before their request
        self.cpu_cores = cpu_cores
        self.controller = controller
        self._starting: asyncio.Future | None = None
        self._watch: asyncio.Task | None = None

    # ---- life cycle ------------------------------------------------------------------------------

    async def start(self) -> EngineInfo:
        """Start the engine; idempotent: a second call (a restarted controller's) awaits the same start."""
        if self._starting is None:
            self._starting = asyncio.ensure_future(self._start_engine())
            if self.controller:
                self._watch = asyncio.create_task(self._watch_controller(), name="pdserve-watch-controller")
        return await asyncio.shield(self._starting)

    async def _start_engine(self) -> EngineInfo:
        started = time.monotonic()
        self.info = await self.engine.start()
        log.info("worker %s (%s) ready in %.1f s: %s", self.worker_id, self.tier, time.monotonic() - started, self.info)
        return self.info

    def describe(self) -> dict[str, Any]:
        """What a restarted controller rebuilds this worker's record from (`orchestrator.recovery`);
        `info` is None while the engine starts."""
        return {"worker_id": self.worker_id, "tier": self.tier, "info": self.info, "draining": self.draining,
                "cpu_cores": self.cpu_cores, "stats": self.stats()}

    async def _watch_controller(self) -> None:
        """A detached worker outlives its controller's restarts, not the controller: once the controller's
        name is released for `ORPHAN_GRACE_S` (it died for good with `pdserve up`, which owns it), stop."""
        import ray

        from orchestrator.controller import NAMESPACE

        gone_since = None
        while True:
            await asyncio.sleep(ORPHAN_CHECK_S)
            try:
                await asyncio.to_thread(ray.get_actor, self.controller, namespace=NAMESPACE)
                gone_since = None
                continue
            except ValueError:
                gone_since = gone_since or time.monotonic()
            if time.monotonic() - gone_since >= ORPHAN_GRACE_S:
                log.error("worker %s: its controller %s is gone; stopping", self.worker_id, self.controller)
                await self.shutdown()
                ray.kill(ray.get_runtime_context().current_actor, no_restart=True)
                return

    def ping(self) -> str:
        return self.worker_id

    async def drain(self, timeout_s: float) -> bool:
        """Refuse new requests; True once nothing is in flight, False if `timeout_s` passed first."""
        self.draining = True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
            return True
        except TimeoutError:
            return False

    async def shutdown(self) -> None:
        self.draining = True
        for task in list(self._tasks):
            task.cancel()
        for channel in self._channels.values():
            await channel.close()
        await self.engine.shutdown()

    # ---- serving ---------------------------------------------------------------------------------

    def inject_kv_fault(self, kind: str, count: int = 1, every: int = 1, stall_s: float | None = None) -> None:
        """Chaos testing (`workers.kv.faults`): the next `count` pushes of this worker, or with `every=N`
        every Nth push until `clear_kv_faults()`, `corrupt` one frame, `drop` the transfer, or `stall` it
        (frames held `stall_s` seconds on the sender thread; default kv.timeout_s + 5). Raises ValueError
        for a bad kind or numbers."""
        self._faults.inject(kind, count, every, stall_s)

    def clear_kv_faults(self) -> None:
        """Chaos testing: disarm every injected KV fault."""
        self._faults.clear()

    async def prefill(self, request: EngineRequest) -> PrefillResult:
        """Compute the prompt, push its KV, return the first token. Raises WorkerDraining when draining."""
        self._admit(request.request_id)
        fault = self._faults.next_push() if request.kv_push is not None else None
        if fault is not None:
            request = replace(request, kv_push=replace(request.kv_push, fault=fault.kind, stall_s=fault.stall_s))
        started = time.monotonic()
        first, reason, cached = None, None, 0
        try:
            with tracing.remote_span("prefill", request.trace, worker=self.worker_id,
                                     prompt_tokens=len(request.prompt_ids)) as span:
                async for output in self._unless_aborted(request):
                    if output.token_ids and first is None:
                        first = output.token_ids[0]
                    cached = max(cached, output.num_cached_tokens)
                    if output.finished:
                        reason = output.finish_reason
                span.set_attribute("cached_tokens", cached)
        finally:
            self._aborted.pop(request.request_id, None)
            if request.kv_push is not None and first is not None:
                self._handoffs.add(request.request_id)
                self._spawn(self._await_handoff(request))
            self._release(request.request_id)
        return PrefillResult(first, reason if first is not None else "abort", cached, (time.monotonic() - started) * 1000)

    async def generate(self, request: EngineRequest) -> AsyncIterator[list[EngineOutput]]:
        """Run a request to its end, yielding its outputs (a Ray streaming generator)."""
        self._admit(request.request_id)
        spans = _DecodeSpans(request, self.worker_id)
        try:
            if request.request_id in self._aborted:
                yield [EngineOutput([], True, "abort")]
                return
            async with aclosing(self.engine.generate(request)) as outputs:
                async for output in outputs:
                    if request.request_id in self._aborted:
                        break  # closing the engine's stream aborts the request there (it is registered now)
                    spans.observe(output)
                    yield [output]
        finally:
            spans.end()
            self._aborted.pop(request.request_id, None)
            self._release(request.request_id)

    async def abort(self, request_id: str) -> None:
        """Stop a request wherever it is. An abort may overtake its own request (both are calls to this
        actor and may start in either order): it is remembered, and the request stops at its start or
        at its next output."""
        self._aborted[request_id] = None
        while len(self._aborted) > MAX_REMEMBERED_ABORTS:
            self._aborted.popitem(last=False)
        await self.engine.abort(request_id)

    async def _unless_aborted(self, request: EngineRequest) -> AsyncIterator[EngineOutput]:
        if request.request_id in self._aborted:
            return
        async with aclosing(self.engine.generate(request)) as outputs:
            async for output in outputs:
                if request.request_id in self._aborted:
                    return
                yield output

    def stats(self) -> WorkerStats:
        counters = getattr(self.engine, "kv_counters", lambda: {})()
        health = self.engine.health(self.config.pools.engine_stall_timeout_s)
        return WorkerStats(
            worker_id=self.worker_id, tier=self.tier, engine=self.engine.stats(), num_in_flight=len(self._in_flight),
            num_handoffs=len(self._handoffs), draining=self.draining,
            kv_sent_bytes=int(counters.get("bytes_sent_total", 0)),
            kv_received_bytes=int(counters.get("bytes_total", 0)),
            kv_transfers_completed=int(counters.get("transfers_completed", 0)),
            kv_transfers_recomputed=int(counters.get("transfers_recomputed", 0)),
            kv_transfer_seconds=float(counters.get("seconds_total", 0.0)),
            kv_auth_failures=int(counters.get("auth_failures", 0)),
            healthy=health.alive, health_error=health.reason)

    # ---- internals -------------------------------------------------------------------------------

    def _admit(self, request_id: str) -> None:
        if self.draining:
            raise WorkerDraining(f"worker {self.worker_id} is draining: send the request to another worker")
        self._in_flight.add(request_id)
        self._idle.clear()

    def _release(self, request_id: str) -> None:
        self._in_flight.discard(request_id)
        self._check_idle()

    def _check_idle(self) -> None:
        if not self._in_flight and not self._handoffs:
            self._idle.set()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _await_handoff(self, request: EngineRequest) -> None:
        """Wait until the receiver reports the transfer's outcome (delivered or given up)."""
        push = request.kv_push
        deadline = time.monotonic() + self.config.kv.timeout_s + ACK_GRACE_S
        try:
            if push.control_endpoint:
                stub = self._control(push.control_endpoint)
                query = kv_pb2.GetTransferStatsRequest(transfer_ids=[push.transfer_id])
                while time.monotonic() < deadline:
                    try:
                        reply = await stub.GetTransferStats(query, timeout=2.0)
                        if reply.outcomes:
                            return
                    except grpc.aio.AioRpcError:
                        return  # the receiver is gone: nothing left to deliver to
                    await asyncio.sleep(ACK_POLL_S)
                log.warning("worker %s: transfer %s not acknowledged in time", self.worker_id, push.transfer_id)
        finally:
            self._handoffs.discard(request.request_id)
            self._check_idle()

    def _control(self, endpoint: str) -> kv_pb2_grpc.KVTransferStub:
        channel = self._channels.get(endpoint)
        if channel is None:
            channel = self._channels[endpoint] = grpc.aio.insecure_channel(endpoint.removeprefix("grpc://"))
        return kv_pb2_grpc.KVTransferStub(channel)
