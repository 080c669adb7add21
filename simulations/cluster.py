"""The simulated cluster: engines in tiers, the live router, KV transfers, budgets, and (optionally) the planner.

Life of a request here: 1. it arrives (each arrival schedules the next) and reaches the gateway
`request_overhead_ms` later; 2. with budgets on, `orchestrator.budget` admits it (or refuses it, with
the reason) and meters it (`simulations.budgets`); 3. the live router (`orchestrator.router.pick`)
chooses the decode engine and a prefill engine (or none: colocated, or the decode engine already holds
the prompt) from a snapshot of every engine's load and the router's own `PrefixIndex`; 4. the prompt is
computed (the prefill engine's own prefix cache shortens it) and its first token charged; 5. its KV
crosses the link to the decode engine (bytes / bandwidth + `transfer_latency_ms`, one transfer at a time
per receiving engine), which loads it for `decode_kv_load_steps` steps; 6. it decodes in a continuous
batch until its last token, or until its deadline timer stops it. A request that no engine can take is
answered at once with finish reason `error` and counted, never dropped.

The planner (`simulations.autoscale`) hooks in through `on_tick` and resizes the pools with
`add_engine` / `drain_engine`; `window` (when set) collects what it observes.

With `shared_host` the engines share one host: each time an engine starts a step or goes idle, every
engine's speed is set from the profile's measured interference (`simulations.interference`): a decode
engine runs slower while a prefill engine computes, a prefill engine while a decode engine steps.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from orchestrator.errors import ConfigError, Unavailable
from orchestrator.router import (
    ClusterSnapshot,
    PrefixIndex,
    RouteRequest,
    WorkerLoad,
    pick,
)
from simulations.budgets import SimBudgets, budgets_active
from simulations.config import SimConfig
from simulations.engine import Engine
from simulations.events import Event, EventLoop
from simulations.hardware import get_accelerator
from simulations.interference import TierInterference
from simulations.models import get_model
from simulations.power import PowerModel
from simulations.profile import ProfileTiming, load_profile
from simulations.request import SimRequest
from simulations.timing import BaseTiming, CoefficientTiming, RooflineTiming

ENGINE_CACHE_BLOCKS = 1 << 16  # prompt blocks a prefill engine's own prefix cache remembers
PREFILL_COST_TOKENS = 256  # the prompt length whose ms per token stands for a prefill engine's measured cost


def build_timing(config: SimConfig, tier: str, power: PowerModel) -> BaseTiming:
    """The step-time predictor for one tier's engines, as the config selects."""
    tp = config.prefill_tp if tier == "prefill" else config.decode_tp
    if config.timing == "coefficients":
        a, b, c, da, db, dc = config.coefficients  # type: ignore[misc]
        return CoefficientTiming(a, b, c, da, db, dc, config.kv_tokens or 1_000_000)
    if config.timing == "profile":
        return ProfileTiming(load_profile(config.profile, config.kv_tokens), config.kv_tokens)  # type: ignore[arg-type]
    return RooflineTiming(get_model(config.model), get_accelerator(config.accelerator), tp, config.efficiency,
                          prefill_clock=power.clock_factor("prefill"), decode_clock=power.clock_factor("decode"))


def build_interference(config: SimConfig, timing: BaseTiming) -> TierInterference:
    """The tiers' interference on a shared host, from the profile's measured points. Raises ConfigError
    when the timing is not a profile or the profile has no interference points."""
    if not isinstance(timing, ProfileTiming) or not timing.profile.interference:
        raise ConfigError(f"shared_host needs a profile with measured interference points (measure one with "
                          f"`pdserve profile --target HOST:PORT` on a disaggregated cluster); "
                          f"{config.profile or 'the ' + config.timing + ' timing'} has none")
    return TierInterference(timing.profile)


@dataclass
class SimResult:
    """What a run leaves behind: the requests with their times, the engines, the replica timeline."""

    config: SimConfig
    requests: list[SimRequest]
    engines: list[Engine]
    duration_s: float
    timeline: list[tuple[float, int, int]] = field(default_factory=list)  # (time, prefill engines, decode engines)
    num_events: int = 0
    planner_decisions: list[object] = field(default_factory=list)  # orchestrator.planner.ScalingDecision, in order
    budgets: SimBudgets | None = None


class Cluster:
    """Engines, router state and KV links of one simulated cluster."""

    def __init__(self, config: SimConfig, requests: Sequence[SimRequest]) -> None:
        self.config = config
        self.requests = list(requests)
        accelerator = get_accelerator(config.accelerator)
        self.power = PowerModel(accelerator, config.power)
        self.model = get_model(config.model)
        self.timing = {tier: build_timing(config, tier, self.power) for tier in ("prefill", "decode")}
        for tier, timing in self.timing.items():
            if timing.kv_capacity_tokens() <= 0 and (tier == "decode" or config.num_prefill):
                tp = config.prefill_tp if tier == "prefill" else config.decode_tp
                raise ConfigError(f"{config.model} ({self.model.weight_bytes / 1e9:.0f} GB of weights) leaves no room for "
                                  f"KV cache on {tp} x {config.accelerator}: raise the {tier} TP degree")
        timing = self.timing["decode"]
        self.kv_bytes_per_token = (timing.profile.kv_bytes_per_token if isinstance(timing, ProfileTiming)
                                   else self.model.kv_bytes_per_token)
        self.transfer_bytes_per_s = (config.transfer_gb_s * 1e9 if config.transfer_gb_s
                                     else accelerator.scale_out_bytes_per_s * min(config.prefill_tp, config.decode_tp))
        self.interference = build_interference(config, timing) if config.shared_host else None
        self.router_index = PrefixIndex(config.router.prefix_cache_blocks)
        self.engine_index = PrefixIndex(ENGINE_CACHE_BLOCKS)
        self.engines: dict[str, Engine] = {}
        self.retired: list[Engine] = []
        self.link_free_s: dict[str, float] = {}
        self.timeline: list[tuple[float, int, int]] = []
        self.loop = EventLoop()
        self.num_done = 0
        self.window: object | None = None  # simulations.autoscale.ObservationWindow, when a planner observes
        self._next_id = {"prefill": 0, "decode": 0}
        decode_tier = "colocated" if config.mode == "colocated" else "decode"
        for _ in range(config.num_prefill):
            self.add_engine("prefill", 0.0, ready_s=0.0)
        for _ in range(config.num_decode):
            self.add_engine(decode_tier, 0.0, ready_s=0.0)
        self.on_tick: Callable[[float], list[Event]] | None = None
        self.budgets: SimBudgets | None = None
        if budgets_active(config.budgets, config.budget, self.requests):
            prefill = self.timing["prefill" if config.num_prefill else "decode"]
            self.budgets = SimBudgets(config.budget, lambda tokens: prefill.prefill_ms([(tokens, 0)]))

    # Pools -------------------------------------------------------------------------------------
    def add_engine(self, tier: str, now: float, ready_s: float | None = None) -> Engine:
        """Start an engine; it takes requests from `ready_s` (default: now + worker_start_s)."""
        key = "prefill" if tier == "prefill" else "decode"
        worker_id = f"{key}-{self._next_id[key]}"
        self._next_id[key] += 1
        tp = self.config.prefill_tp if tier == "prefill" else self.config.decode_tp
        engine = Engine(worker_id, tier, self.timing[key], tp, self.config.max_num_seqs, self.config.max_batched_tokens,
                        self._prefilled, self._finished, started_s=now,
                        kv_load_steps=self.config.decode_kv_load_steps if tier == "decode" else 0,
                        on_idle=self._idle, on_step=self._interfere if self.interference is not None else None)
        engine.ready_s = now + self.config.worker_start_s if ready_s is None else ready_s
        if self.window is not None:
            engine.on_token_gaps = self.window.on_token_gaps  # type: ignore[attr-defined]
        self.engines[worker_id] = engine
        self._record_pools(now)
        return engine

    def observe_with(self, window: object) -> None:
        """Report arrivals, first tokens, token gaps and finishes to `window` from now on."""
        self.window = window
        for engine in self.engines.values():
            engine.on_token_gaps = window.on_token_gaps  # type: ignore[attr-defined]

    def drain_engine(self, worker_id: str, now: float) -> None:
        """Stop routing to an engine; it leaves once its work is done."""
        engine = self.engines[worker_id]
        engine.draining = True
        self._retire_if_done(engine, now)

    def _idle(self, now: float, engine: Engine) -> None:
        self._retire_if_done(engine, now)

    def _interfere(self, now: float, _: Engine) -> list[Event]:
        """An engine started a step or went idle (shared host): set every engine's speed from what the
        other tier now computes. A colocated engine has no other tier and keeps its speed."""
        live = list(self.engines.values())
        prefill_tokens = max((e.step_prompt_tokens for e in live if e.tier == "prefill"), default=0)
        decode_busy = any(e.busy for e in live if e.tier == "decode")
        events: list[Event] = []
        for engine in live:
            if engine.tier == "prefill":
                factor = self.interference.prefill_factor(engine.step_prompt_tokens, decode_busy)  # type: ignore[union-attr]
            elif engine.tier == "decode":
                factor = self.interference.decode_factor(prefill_tokens)  # type: ignore[union-attr]
            else:
                continue
            events += engine.slow_down(now, factor)
        return events

    def _retire_if_done(self, engine: Engine, now: float) -> None:
        if engine.draining and engine.idle and engine.worker_id in self.engines:
            engine.stopped_s = now
            del self.engines[engine.worker_id]
            self.retired.append(engine)
            self.router_index.forget(engine.worker_id)
            self._record_pools(now)

    def pool(self, tier: str) -> list[Engine]:
        """Engines of a tier ("prefill", or "decode" which includes colocated), draining ones included."""
        return [e for e in self.engines.values() if (e.tier == "prefill") == (tier == "prefill")]

    def _record_pools(self, now: float) -> None:
        live = [e for e in self.engines.values() if not e.draining]
        num_prefill = sum(1 for e in live if e.tier == "prefill")
        self.timeline.append((now, num_prefill, len(live) - num_prefill))

    # Routing -----------------------------------------------------------------------------------
    def snapshot(self, now: float) -> ClusterSnapshot:
        """Every engine's load as the router sees it."""
        costs = self.config.router.conditional_prefill  # only its decision reads them: not on every route otherwise

        def load(engine: Engine) -> WorkerLoad:
            block = 32
            # What the gateway measures live (conditional disaggregation's costs), from the engine's timing.
            per_token = engine.timing.prefill_ms([(PREFILL_COST_TOKENS, 0)]) / PREFILL_COST_TOKENS if costs else 0.0
            step = engine.timing.decode_ms(len(engine.running), engine.sum_context) if costs and engine.running else 0.0
            return WorkerLoad(engine.worker_id, engine.tier, ready=engine.ready_s <= now, draining=engine.draining,
                              num_running=len(engine.running), num_waiting=engine.num_waiting,
                              num_active_blocks=engine.kv_used // block, num_total_blocks=engine.kv_capacity // block,
                              pending_prefill_tokens=engine.pending_prefill_tokens, prefill_ms_per_token=per_token,
                              step_ms=step)
        loads = [load(e) for e in self.engines.values()]
        return ClusterSnapshot(prefill=tuple(w for w in loads if w.tier == "prefill"),
                               decode=tuple(w for w in loads if w.tier != "prefill"))

    def _arrive(self, now: float, index: int) -> list[Event]:
        events: list[Event] = []
        if index + 1 < len(self.requests):
            events.append((self.requests[index + 1].arrival_s, self._arrive, index + 1))
        request = self.requests[index]
        if self.window is not None:
            self.window.on_arrival(request)  # type: ignore[attr-defined]
        if self.config.request_overhead_ms:
            return events + [(now + self.config.request_overhead_ms / 1e3, self._route, request)]
        return events + self._route(now, request)

    def _route(self, now: float, request: SimRequest) -> list[Event]:
        """The gateway has the request: admission, then the router's pick, then the prefill."""
        if self.budgets is not None:
            refusal = self.budgets.admit(request, now)
            if refusal is not None:
                return self._refuse(now, request, refusal[1], refusal[0])
        snapshot = self.snapshot(now)
        route = RouteRequest(request.prompt_tokens, request.hash_ids, request.block_tokens)
        matches = self.router_index.matches([w.worker_id for w in snapshot.decode], request.hash_ids)
        try:
            decision = pick(route, snapshot, matches, self.config.router)
        except Unavailable:
            return self._refuse(now, request, "no decode engine ready")
        decode = self.engines[decision.decode_worker]
        prefill = self.engines[decision.prefill_worker] if decision.prefill_worker is not None else decode
        cached = (decision.matched_tokens if prefill is decode
                  else self.engine_index.match(prefill.worker_id, request.hash_ids) * request.block_tokens)
        cached = max(min(cached, request.prompt_tokens - 1), 0)
        events: list[Event] = []
        if self.budgets is not None:
            self.budgets.plan(request, cached)
            deadline_s = self.budgets.deadline_s(request)
            if deadline_s != float("inf"):
                events.append((deadline_s, self._deadline, request))
        if not decode.fits(request.prompt_tokens + request.output_tokens):
            return self._refuse(now, request, "longer than one engine's KV cache")
        request.decode_worker = decode.worker_id
        self.router_index.record(decode.worker_id, request.hash_ids)
        if prefill is decode:
            request.prefill_skipped = decision.skip_prefill
            return events + self._prefill_on(decode, now, request, cached)
        decode.num_incoming += 1
        request.transfer_skip_tokens = min(decision.matched_tokens, request.prompt_tokens - 1)
        self.engine_index.record(prefill.worker_id, request.hash_ids)
        return events + self._prefill_on(prefill, now, request, cached)

    def _prefill_on(self, engine: Engine, now: float, request: SimRequest, cached_tokens: int) -> list[Event]:
        """Queue the prompt on `engine`, less the leading tokens it already caches (at least one is computed)."""
        request.cached_tokens = cached_tokens
        request.prefill_worker = engine.worker_id
        request.prefill_left = request.prompt_tokens - request.cached_tokens
        request.stage = "prefill"
        return engine.enqueue_prefill(now, request)

    def _refuse(self, now: float, request: SimRequest, reason: str, kind: str = "capacity") -> list[Event]:
        request.finish_reason = "error"
        request.error = reason
        request.refusal = kind
        request.finish_s = now
        request.num_finishes += 1
        self.num_done += 1
        return []

    # Budgets -----------------------------------------------------------------------------------
    def _deadline(self, now: float, request: SimRequest) -> list[Event]:
        """The request's deadline timer: the meter stops it unless it already finished."""
        if request.finished or self.budgets is None:
            return []
        generated, generated_s = 0, now
        if request.first_token_s >= 0:
            engine = self._engine(request.decode_worker if request.stage == "decode" else request.prefill_worker)
            generated, generated_s = engine.generated(request, now)
        if not self.budgets.on_deadline(request, generated, generated_s, now):
            return []
        request.finish_s = now
        request.num_finishes += 1
        self.num_done += 1
        return self._drop(now, request)

    def _drop(self, now: float, request: SimRequest) -> list[Event]:
        """Take a stopped request out of whichever engine holds it."""
        request.cancelled = True
        if request.stage in ("prefill", "transfer") and request.prefill_worker != request.decode_worker:
            self._engine(request.decode_worker).num_incoming -= 1
        if request.stage == "prefill":
            return self._engine(request.prefill_worker).cancel(now, request)
        if request.stage == "decode":
            return self._engine(request.decode_worker).cancel(now, request)
        return []  # in transfer: the hand-off gives the prefill engine's KV back when it lands

    def _engine(self, worker_id: str) -> Engine:
        return self.engines.get(worker_id) or self._retired(worker_id)

    # Hand-off and completion -------------------------------------------------------------------
    def _prefilled(self, now: float, engine: Engine, request: SimRequest) -> list[Event]:
        if self.budgets is not None:
            self.budgets.on_first_token(request, now)
        if self.window is not None:
            self.window.on_first_token(request)  # type: ignore[attr-defined]
        if engine.tier != "prefill":
            request.stage = "decode"
            return []
        request.stage = "transfer"
        decode = self._engine(request.decode_worker)
        if request.remaining <= 0:  # one-token output: done at prefill
            decode.num_incoming -= 1
            self._finished(now, engine, request)
            kv, request.kv_reserved = request.kv_reserved, 0
            return engine.release_kv(now, kv)
        size = (request.prompt_tokens - request.transfer_skip_tokens) * self.kv_bytes_per_token
        start = max(now, self.link_free_s.get(decode.worker_id, 0.0))
        self.link_free_s[decode.worker_id] = start + size / self.transfer_bytes_per_s
        done = self.link_free_s[decode.worker_id] + self.config.transfer_latency_ms / 1e3
        return [(done, self._transferred, request)]

    def _transferred(self, now: float, request: SimRequest) -> list[Event]:
        prefill = self._engine(request.prefill_worker)
        events = prefill.release_kv(now, request.kv_reserved)
        request.kv_reserved = 0
        self._retire_if_done(prefill, now)
        decode = self._engine(request.decode_worker)
        if request.cancelled:  # stopped by its deadline on the way (num_incoming was given back then)
            self._retire_if_done(decode, now)
            return events
        request.transfer_done_s = now
        request.stage = "decode"
        decode.num_incoming -= 1
        return events + decode.enqueue_decode(now, request)

    def _retired(self, worker_id: str) -> Engine:
        return next(e for e in self.retired if e.worker_id == worker_id)

    def _finished(self, now: float, engine: Engine, request: SimRequest) -> list[Event]:
        if self.budgets is not None:
            self.budgets.on_finish(request, now)
        request.finish_s = now
        request.num_finishes += 1
        request.finish_reason = request.finish_reason or "length"
        request.stage = ""
        self.num_done += 1
        if self.window is not None:
            self.window.on_finish(request)  # type: ignore[attr-defined]
        self._retire_if_done(engine, now)
        return []

    # Running -----------------------------------------------------------------------------------
    def run(self, on_progress: Callable[[float], None] | None = None) -> SimResult:
        """Simulate every request to its end."""
        if self.requests:
            self.loop.schedule([(self.requests[0].arrival_s, self._arrive, 0)])
        if self.on_tick is not None:
            self.loop.schedule([(self.config.planner.interval_s, self._tick, None)])
        end = self.loop.run(on_progress=on_progress)
        if self.requests:  # the last request's end, not a timer that outlived it
            end = max([r.finish_s for r in self.requests] + [e.busy_until_s for e in self.engines.values()])
        for engine in self.engines.values():
            engine.stopped_s = end
        return SimResult(self.config, self.requests, list(self.engines.values()) + self.retired, end,
                         self.timeline, self.loop.num_events, budgets=self.budgets)

    def _tick(self, now: float, _: object) -> list[Event]:
        events = self.on_tick(now) if self.on_tick else []
        if self.num_done < len(self.requests):
            events = list(events) + [(now + self.config.planner.interval_s, self._tick, None)]
        return events

