"""The gateway: the real `BaseGateway`, between the API servers and the Ray cluster.

It runs on the API servers' event loop (in the `pdserve up` process) and holds:
- the tokenizer (`text.PromptTokenizer`): prompts become ids once, here;
- a snapshot of the workers, refreshed from the controller every `refresh_s`, plus its own count of
  what it dispatched to each worker since (fresher than the workers' stats). While the controller is
  down (it is restarted, `orchestrator.recovery`), requests are routed on the last snapshot: no request
  calls the controller, and each refresh waits at most `CONTROLLER_CALL_TIMEOUT_S`;
- the prefix index (which decode worker probably holds which prompt blocks), for `router.pick`;
- tenant quotas and the dispatch queue (fair order when every decode slot is taken);
- the requests running now, for `cancel`.
Each request runs as a `run.RequestRun`: admission happens in `generate` before the first chunk (so
its refusals become API statuses), the rest in the run.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from orchestrator import metrics
from orchestrator.autoscaler import GatewayReport
from orchestrator.budget import AdmissionRequest, BudgetMeter, TenantQuotas, admit
from orchestrator.budget import metrics as budget_metrics
from orchestrator.config import PdserveConfig
from orchestrator.errors import BudgetRefused, InvalidRequest, PermissionDenied, QuotaExceeded, Unavailable
from orchestrator.gateway.base import BaseGateway, Health, ModelInfo
from orchestrator.gateway.queue import DispatchQueue
from orchestrator.gateway.run import RequestRun
from orchestrator.gateway.text import PromptTokenizer
from orchestrator.hashing import block_hashes
from orchestrator.request import Budget, GenerationChunk, Request
from orchestrator.router import ClusterSnapshot, PrefixIndex, RouteDecision, RouteRequest, WorkerLoad, pick
from workers.engine.base import ThinkingLimits

log = logging.getLogger(__name__)

PROMPT_CACHE_SIZE = 4096
REPORT_INTERVAL_S = 1.0
CONTROLLER_CALL_TIMEOUT_S = 10.0
TRANSFER_RATE_WINDOW_S = 30.0
PREFILL_COST_WEIGHT = 0.2  # of the newest prefill in a worker's measured ms per prompt token
PREFILL_COST_MIN_TOKENS = 16  # shorter prompts are mostly fixed cost: not a per-token measure


@dataclass
class WorkerView:
    """One worker as the gateway sees it (from the controller's snapshot)."""

    worker_id: str
    tier: str  # prefill | decode | colocated
    handle: Any
    state: str
    info: Any  # EngineInfo
    stats: Any  # WorkerStats
    error: str = ""  # why it failed (state "failed")

    @property
    def pool(self) -> str:
        return "decode" if self.tier == "colocated" else self.tier


@dataclass
class LocalLoad:
    """What this gateway dispatched to a worker and is still running there, and what a prefill cost there."""

    running: int = 0
    pending_prefill_tokens: int = 0
    prefill_ms_per_token: float = 0.0  # moving average over prefills that found the worker free (0: none yet)

    def observe_prefill(self, engine_ms: float, new_tokens: int) -> None:
        """One prefill of `new_tokens` uncached tokens took `engine_ms` on a worker that had nothing queued."""
        if new_tokens < PREFILL_COST_MIN_TOKENS or engine_ms <= 0:
            return
        sample = engine_ms / new_tokens
        self.prefill_ms_per_token = sample if not self.prefill_ms_per_token else (
            (1 - PREFILL_COST_WEIGHT) * self.prefill_ms_per_token + PREFILL_COST_WEIGHT * sample)


@dataclass
class Running:
    tenant: str
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)


class Gateway(BaseGateway):
    def __init__(self, controller: Any, config: PdserveConfig, tokenizer: PromptTokenizer, model_id: str, *,
                 profile: Any = None, clock: Callable[[], float] = time.monotonic, refresh_s: float = 0.2) -> None:
        """`controller`: the controller actor's handle. `profile`: an EngineProfile for admission's
        predicted prefill time (None: deadlines are not checked against it)."""
        self.controller = controller
        self.config = config
        self.tokenizer = tokenizer
        self.model_id = model_id
        self.profile = profile
        self.clock = clock
        self.refresh_s = refresh_s
        self.quotas = TenantQuotas(config.budget)
        self.queue = DispatchQueue(self._capacity, config.budget)
        self.num_requests = 0
        self._views: dict[str, WorkerView] = {}
        self._local: dict[str, LocalLoad] = {}
        self._prefix = PrefixIndex(config.router.prefix_cache_blocks)
        self._running: dict[str, Running] = {}
        self._prompts: OrderedDict[tuple[Any, ...], list[int]] = OrderedDict()  # count_prompt_tokens -> generate
        self._tasks: set[asyncio.Task] = set()
        self._refresher: asyncio.Task | None = None
        self._controller_error = ""
        self._transfer_samples: list[tuple[float, int, float]] = []  # (time, bytes, transfer s), all workers
        self._thinking: dict[tuple[Any, ...], ThinkingLimits] = {}
        self._report = GatewayReport()
        self._reporter: asyncio.Task | None = None
        self._failures_seen: set[str] = set()
        self._auth_failures_seen: dict[str, int] = {}  # worker -> its kv_auth_failures already counted
        self.controller_restarts = 0  # as the controller last said
        self._handles: dict[str, Any] = {}  # worker id -> its actor handle, sent by the controller once

    # ---- life cycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        await self.refresh()
        self._refresher = asyncio.create_task(self._refresh_loop(), name="pdserve-gateway-refresh")
        if self.config.planner.enabled:
            self._reporter = asyncio.create_task(self._report_loop(), name="pdserve-gateway-report")

    async def stop(self) -> None:
        for task in (self._refresher, self._reporter):
            if task is not None:
                task.cancel()
        for task in list(self._tasks):
            await asyncio.gather(task, return_exceptions=True)

    async def refresh(self) -> None:
        """Read the controller's snapshot of the workers."""
        try:
            records, recovery = await asyncio.wait_for(asyncio.gather(
                self.controller.snapshot.remote(tuple(self._handles)), self.controller.recovery_state.remote()),
                CONTROLLER_CALL_TIMEOUT_S)
            self._controller_error = ""
        except Exception as exc:  # the controller is restarting or stuck: keep serving on the last view
            self._controller_error = f"controller unreachable ({type(exc).__name__}): serving on the last snapshot"
            log.warning("gateway: %s: %s", self._controller_error, exc)
            return
        self._observe_controller(recovery["controller_restarts"])
        self._handles = {r["worker_id"]: r["handle"] or self._handles.get(r["worker_id"]) for r in records}  # asked once each
        self._views = {r["worker_id"]: WorkerView(r["worker_id"], r["tier"], self._handles[r["worker_id"]], r["state"],
                                                  r["info"], r["stats"], r.get("error", ""))
                       for r in records}
        self._observe_workers()
        for worker_id in set(self._local) - set(self._views):
            self._local.pop(worker_id, None)
            self._prefix.forget(worker_id)
        self._sample_transfers()
        self.queue.poke()

    def _observe_controller(self, restarts: int) -> None:
        if restarts > self.controller_restarts:
            metrics.controller_restarts_total.inc(restarts - self.controller_restarts)
            self.controller_restarts = restarts

    def _observe_workers(self) -> None:
        """Set the worker gauges, and count each failed worker once."""
        counts = {(pool, state): 0 for pool in ("prefill", "decode") for state in metrics.WORKER_STATES}
        for view in self._views.values():
            counts[(view.pool, view.state)] = counts.get((view.pool, view.state), 0) + 1
            if view.state == "failed" and view.worker_id not in self._failures_seen:
                self._failures_seen.add(view.worker_id)
                metrics.worker_failures_total.labels(tier=view.pool).inc()
        for (pool, state), count in counts.items():
            metrics.workers.labels(tier=pool, state=state).set(count)

    def _sample_transfers(self) -> None:
        now = self.clock()
        stats = [v.stats for v in self._views.values() if v.stats is not None]
        for s in stats:
            seen = self._auth_failures_seen.get(s.worker_id, 0)
            if s.kv_auth_failures > seen:
                metrics.kv_auth_failures_total.inc(s.kv_auth_failures - seen)
            self._auth_failures_seen[s.worker_id] = s.kv_auth_failures
        self._transfer_samples.append((now, sum(s.kv_received_bytes for s in stats),
                                       sum(s.kv_transfer_seconds for s in stats)))
        while len(self._transfer_samples) > 2 and now - self._transfer_samples[0][0] > TRANSFER_RATE_WINDOW_S:
            self._transfer_samples.pop(0)

    def recent_transfer_rate(self) -> float:
        """KV bytes received per second over the last TRANSFER_RATE_WINDOW_S (all decode workers)."""
        if len(self._transfer_samples) < 2:
            return 0.0
        (t0, b0, _), (t1, b1, _) = self._transfer_samples[0], self._transfer_samples[-1]
        return max(b1 - b0, 0) / (t1 - t0) if t1 > t0 else 0.0

    async def _report_loop(self) -> None:
        """Send the autoscaler what this gateway saw, once a second."""
        while True:
            await asyncio.sleep(REPORT_INTERVAL_S)
            report, self._report = self._report, GatewayReport()
            report.queue_depth = self.queue.depth
            try:
                await asyncio.wait_for(self.controller.report.remote(report), 10.0)
            except Exception as exc:  # the autoscaler misses one second; serving goes on
                log.warning("gateway: report to the controller failed: %s", exc)

    # What the autoscaler sees (only while it runs): RequestRun calls these as the request goes.

    def observe_arrival(self, num_prompt_tokens: int, num_output_asked: int) -> None:
        if self._reporter is not None:
            self._report.arrivals.append((time.time(), num_prompt_tokens, num_output_asked))

    def observe_first_token(self, ttft_ms: float) -> None:
        if self._reporter is not None:
            self._report.first_tokens.append((time.time(), ttft_ms))

    def observe_token_gap(self, gap_ms: float, num_tokens: int) -> None:
        if self._reporter is not None:
            now = time.time()
            self._report.token_gaps.extend([(now, gap_ms)] * num_tokens)

    def observe_finish(self, num_output_tokens: int, num_output_asked: int) -> None:
        if self._reporter is not None:
            self._report.finished.append((time.time(), num_output_tokens, num_output_asked))

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_s)
            await self.refresh()

    # ---- BaseGateway -----------------------------------------------------------------------------

    def generate(self, request: Request) -> AsyncIterator[GenerationChunk]:
        return self._generate(request)

    async def _generate(self, request: Request) -> AsyncIterator[GenerationChunk]:
        now = self.clock()
        if request.request_id in self._running:
            raise InvalidRequest(f"a request with id {request.request_id!r} is already running: use a new id")
        prompt_ids = self._take_prompt_ids(request)
        meter = self._admit(request, prompt_ids, now)
        self.observe_arrival(len(prompt_ids), meter.admission.max_output_tokens or request.sampling.max_tokens)
        running = self._running[request.request_id] = Running(request.tenant)
        self.num_requests += 1
        metrics.in_flight_requests.inc()
        try:
            async for chunk in RequestRun(self, request, prompt_ids, meter, running).chunks():
                yield chunk
        finally:
            self._running.pop(request.request_id, None)
            metrics.in_flight_requests.dec()

    def _admit(self, request: Request, prompt_ids: list[int], now: float) -> BudgetMeter:
        budget_config = self.config.budget
        try:
            admission = admit(AdmissionRequest(request.tenant, len(prompt_ids), max_tokens=request.sampling.max_tokens),
                              request.budget, budget_config.tenant(request.tenant), budget_config.pricing, now_s=now,
                              predicted_prefill_ms=self._predicted_prefill_ms(len(prompt_ids)))
        except BudgetRefused:
            budget_metrics.observe_exhausted("refused")
            raise
        try:
            self.quotas.admit(request.tenant, num_prompt_tokens=len(prompt_ids),
                              prefill_cost_usd=admission.prefill_cost_usd, now_s=now)
        except QuotaExceeded:
            budget_metrics.observe_exhausted("quota")
            raise
        return BudgetMeter(admission, self.tokenizer.think_start_ids, self.tokenizer.think_end_ids,
                           prompt_ids=prompt_ids, now_s=now)

    def _predicted_prefill_ms(self, num_prompt_tokens: int) -> float | None:
        if self.profile is None:
            return None
        return self.profile.predict_prefill_ms([num_prompt_tokens])

    async def cancel(self, request_id: str, tenant: str) -> bool:
        running = self._running.get(request_id)
        if running is None:
            return False
        if running.tenant != tenant:
            raise PermissionDenied(f"request {request_id} belongs to another tenant: a tenant cancels only its own")
        running.cancelled.set()
        return True

    def models(self) -> list[ModelInfo]:
        lengths = [v.info.max_model_len for v in self._views.values() if v.info is not None]
        return [ModelInfo(self.model_id, min(lengths) if lengths else self.config.model.max_model_len)]

    def health(self) -> Health:
        """Ready when every pool has a ready worker, as of the last snapshot (at most `refresh_s` old, or
        the last one before the controller went down: requests are served on it meanwhile). The detail
        says what is not: failed workers with their reasons, pools being refilled, whether requests are
        still served meanwhile (a prefill worker standing in for the decode pool), the controller's outage."""
        ready = self._ready_counts()
        needed = ("decode",) if self.config.pools.colocated else ("prefill", "decode")
        ok = all(ready[pool] > 0 for pool in needed)
        detail: dict[str, Any] = {"pools": ready}
        failed = {v.worker_id: v.error for v in self._views.values() if v.state == "failed"}
        if failed:
            detail["failed_workers"] = failed
        starting = [v.worker_id for v in self._views.values() if v.state == "starting"]
        if starting:
            detail["starting_workers"] = starting
        if not ok:
            detail["serving"] = any(ready.values())
            if ready["decode"] == 0 and ready["prefill"] > 0:
                detail["degraded"] = "no decode worker is ready: prefill workers serve whole requests meanwhile"
        if self._controller_error:
            detail["controller"] = self._controller_error
        return Health(ok, detail)

    def count_prompt_tokens(self, request: Request) -> int:
        ids = self.tokenizer.encode(request.prompt, start_thinking=request.budget.start_thinking)
        self._prompts[self._prompt_key(request)] = ids
        while len(self._prompts) > PROMPT_CACHE_SIZE:
            self._prompts.popitem(last=False)
        return len(ids)

    @staticmethod
    def _prompt_key(request: Request) -> tuple[Any, ...]:
        # Ids are the client's choice: the key holds what the ids were computed from, not just the id.
        return (request.tenant, request.request_id, request.prompt, request.budget.start_thinking)

    def _take_prompt_ids(self, request: Request) -> list[int]:
        ids = self._prompts.pop(self._prompt_key(request), None)
        if ids is None:
            ids = self.tokenizer.encode(request.prompt, start_thinking=request.budget.start_thinking)
        if not ids:
            raise InvalidRequest("the prompt encodes to no tokens: send some text")
        return ids

    async def status(self) -> dict[str, Any]:
        from orchestrator.gateway.status import status_document

        desired = {}
        try:
            desired = await asyncio.wait_for(self.controller.desired_replicas.remote(), 5.0)
        except Exception as exc:  # status must answer even when the controller does not
            log.warning("gateway: desired replicas unavailable: %s", exc)
        planner = {}
        try:
            planner = await asyncio.wait_for(self.controller.planner_state.remote(), 5.0)
        except Exception as exc:
            log.debug("gateway: planner state unavailable: %s", exc)
        return status_document(self, desired, planner)

    # ---- for RequestRun --------------------------------------------------------------------------

    @property
    def block_size(self) -> int:
        for view in self._views.values():
            if view.info is not None:
                return view.info.block_size
        return self.config.engine.block_size

    def route(self, prompt_ids: list[int], *, exclude: set[str] | frozenset[str] = frozenset(),
              record: bool = False) -> RouteDecision:
        """The (prefill, decode) pair for these ids; `record`: remember the decode worker now holds them.
        Raises Unavailable when no decode worker can take it."""
        block_size = self.block_size
        hashes = block_hashes(prompt_ids, block_size)
        snapshot = self._snapshot(exclude)
        matches = self._prefix.matches([w.worker_id for w in snapshot.decode], hashes)
        decision = pick(RouteRequest(len(prompt_ids), hashes, block_size), snapshot, matches, self.config.router)
        if record:
            self._prefix.record(decision.decode_worker, hashes)
        return decision

    def worker(self, worker_id: str) -> WorkerView:
        view = self._views.get(worker_id)
        if view is None:
            raise Unavailable(f"worker {worker_id} left the cluster; retry")
        return view

    def local_load(self, worker_id: str) -> LocalLoad:
        return self._local.setdefault(worker_id, LocalLoad())

    def forget(self, worker_id: str) -> None:
        """A worker failed: route nothing more to it until the controller's snapshot says otherwise."""
        view = self._views.get(worker_id)
        if view is not None:
            view.state = "failed"
        self._prefix.forget(worker_id)

    def abort_later(self, handle: Any, engine_request_id: str) -> None:
        """Abort an engine request on its worker without waiting (it frees the request's blocks)."""
        async def abort() -> None:
            try:
                await asyncio.wait_for(handle.abort.remote(engine_request_id), 10.0)
            except Exception as exc:  # the worker is gone: its blocks went with it
                log.debug("abort of %s: %s", engine_request_id, exc)

        task = asyncio.ensure_future(abort())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def thinking_limits(self, budget: Budget) -> ThinkingLimits:
        key = (budget.max_thinking_tokens, budget.min_thinking_tokens, budget.start_thinking)
        limits = self._thinking.get(key)
        if limits is None:
            config = self.config.budget
            limits = self._thinking[key] = ThinkingLimits(
                start_ids=self.tokenizer.think_start_ids, end_ids=self.tokenizer.think_end_ids,
                max_thinking_tokens=budget.max_thinking_tokens, min_thinking_tokens=budget.min_thinking_tokens,
                wait_ids=self.tokenizer.delimiter_ids(config.wait_text),
                close_prefix_ids=self.tokenizer.delimiter_ids(config.close_prefix_text) if config.close_prefix_text else (),
                start_thinking=budget.start_thinking)
        return limits

    # ---- load ------------------------------------------------------------------------------------

    @property
    def num_in_flight(self) -> int:
        return len(self._running)

    def views(self) -> list[WorkerView]:
        return list(self._views.values())

    def _ready_counts(self) -> dict[str, int]:
        counts = {"prefill": 0, "decode": 0}
        for view in self._views.values():
            if view.state == "ready":
                counts[view.pool] += 1
        return counts

    def _capacity(self) -> int:
        """Slots of the ready decode workers; while there are none, of the ready prefill workers, which
        then serve whole requests (the router's fallback)."""
        ready = self._ready_counts()
        return self.config.engine.max_num_seqs * (ready["decode"] or ready["prefill"])

    def _snapshot(self, exclude: set[str] | frozenset[str]) -> ClusterSnapshot:
        prefill, decode = [], []
        for view in self._views.values():
            if view.worker_id in exclude:
                continue
            (prefill if view.pool == "prefill" else decode).append(self._load(view))
        return ClusterSnapshot(tuple(prefill), tuple(decode))

    def _load(self, view: WorkerView) -> WorkerLoad:
        local = self._local.get(view.worker_id, LocalLoad())
        engine = view.stats.engine if view.stats is not None else None
        used = engine.num_total_blocks - engine.num_free_blocks if engine else 0
        return WorkerLoad(
            worker_id=view.worker_id, tier=view.tier, ready=view.state == "ready", draining=view.state == "draining",
            num_running=local.running, num_waiting=engine.num_waiting if engine else 0, num_active_blocks=used,
            num_total_blocks=engine.num_total_blocks if engine else 0,
            pending_prefill_tokens=local.pending_prefill_tokens, prefill_ms_per_token=local.prefill_ms_per_token,
            step_ms=engine.itl_ms if engine else 0.0)
