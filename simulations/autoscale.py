"""Autoscaling in the simulator: the live planner (`orchestrator.planner.decide`) every planner tick,
observing the simulated cluster, applied through `orchestrator.actuators.VirtualActuator`.

Nothing here decides: the policy is the planner's, unchanged. Life of a tick (every
`config.planner.interval_s` of simulated time, the first one interval after the start):
1. observe: `ObservationWindow` collects arrivals (prompt lengths), first tokens (cached prompt share)
   and finishes (output lengths, TTFT, TPOT); with the pools' queues and KV use they become
   `orchestrator.planner.Observations` the way the live loop (`orchestrator.autoscaler`) builds them:
   the rate and latencies of the last interval (latencies at the SLO percentile, from requests that
   finished in it, none below `MIN_LATENCY_SAMPLES`), length distributions of the last
   `LENGTH_WINDOW_INTERVALS` intervals, the prefill engines' waiting prompts, the decode engines'
   waiting requests and mean KV usage;
2. decide: `decide(observations, profiles, slo, state, planner_config)`: the profiles are what
   `pdserve profile` would measure on the simulated engines (`simulations.profile.profile_of`; a
   `--profile` run gives the planner that very file), the SLO is the simulation's, each worker's power
   the simulator's all-in power per GPU times its TP degree (`--max-gpus` becomes a power budget);
3. apply: `VirtualActuator.apply_at(decision, now)`; the cluster follows the actuator's desired counts:
   engines are added (ready `worker_start_s` later) or drained (starting ones first, then the least
   loaded, newest first); a drained engine finishes what it holds, then leaves.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from typing import Any

from orchestrator.actuators import VirtualActuator
from orchestrator.autoscaler import LENGTH_WINDOW_INTERVALS
from orchestrator.autoscaler import (
    _percentile as observed_percentile,  # the live loop's own, so both read alike
)
from orchestrator.config import PlannerConfig
from orchestrator.config.planner import SLOConfig
from orchestrator.errors import ConfigError
from orchestrator.planner import (
    TIERS,
    LengthDistribution,
    Observations,
    PlannerProfiles,
    ScalingDecision,
    decide,
)
from simulations.cluster import Cluster
from simulations.config import SimConfig
from simulations.engine import Engine
from simulations.power import PowerModel
from simulations.profile import profile_of
from simulations.request import SimRequest


class ObservationWindow:
    """Arrivals and finishes the planner may still look at (the cluster calls the `on_*` methods)."""

    def __init__(self) -> None:
        self.arrivals: deque[tuple[float, int, int]] = deque()  # (time, prompt tokens, declared output tokens)
        self.finished: deque[tuple[float, int, float, float | None]] = deque()  # (time, output, TTFT ms, TPOT ms)
        self.prefilled_tokens = 0  # since the last tick
        self.cached_tokens = 0

    def on_arrival(self, request: SimRequest) -> None:
        self.arrivals.append((request.arrival_s, request.prompt_tokens, request.output_tokens))

    def on_first_token(self, request: SimRequest) -> None:
        self.prefilled_tokens += request.prompt_tokens
        self.cached_tokens += request.cached_tokens

    def on_finish(self, request: SimRequest) -> None:
        tpot = request.tpot_s * 1e3 if request.output_tokens > 1 else None
        self.finished.append((request.finish_s, request.output_tokens, request.ttft_s * 1e3, tpot))

    def forget_before(self, cutoff_s: float) -> None:
        for records in (self.arrivals, self.finished):
            while records and records[0][0] < cutoff_s:
                records.popleft()


def planner_config(config: SimConfig, power: PowerModel) -> PlannerConfig:
    """The planner's settings for this simulation: the user's `config.planner` with the simulation's SLO,
    per-worker power from the power model, and `max_gpus` as a power budget. Raises ConfigError when the
    result is inconsistent (the minimum replicas alone exceed the GPU budget)."""
    watts_per_gpu = power.all_in_kw_per_gpu * 1e3
    values = config.planner.model_dump()
    values["slo"] = SLOConfig(ttft_ms=config.ttft_slo_ms, itl_ms=config.tpot_slo_ms,
                              percentile=config.slo_percentile).model_dump()
    values["prefill"]["power_per_worker_w"] = config.prefill_tp * watts_per_gpu
    values["decode"]["power_per_worker_w"] = config.decode_tp * watts_per_gpu
    if config.max_gpus is not None:
        budget_w = config.max_gpus * watts_per_gpu
        values["power_budget_w"] = min(values["power_budget_w"] or math.inf, budget_w)
    try:
        return PlannerConfig.model_validate(values)
    except ValueError as exc:
        raise ConfigError(f"planner settings for this simulation are inconsistent: {exc}") from None


class SimPlanner:
    """The planner loop of one simulated cluster: hooks itself into `cluster` (its tick and window)."""

    def __init__(self, cluster: Cluster) -> None:
        config = cluster.config
        self.cluster = cluster
        self.config = planner_config(config, cluster.power)
        self.profiles = PlannerProfiles(*(self._profile(tier) for tier in TIERS))
        self.actuator = VirtualActuator(config.num_prefill, config.num_decode, start_delay_s=config.worker_start_s)
        self.state = None
        self.window = ObservationWindow()
        self.last_s = 0.0
        self._last_prompts = self._last_outputs = LengthDistribution.constant(1.0)
        self.decisions: list[ScalingDecision] = []
        cluster.window = self.window
        cluster.on_tick = self.tick

    def _profile(self, tier: str):
        cluster = self.cluster
        return profile_of(cluster.timing[tier], cluster.config.model, cluster.kv_bytes_per_token,
                          cluster.config.max_num_seqs, cluster.config.max_batched_tokens, cluster.config.accelerator)

    def tick(self, now: float) -> list:
        """One planner decision at simulated time `now`, applied at once."""
        decision = decide(self.observe(now), self.profiles, self.config.slo, self.state, self.config)
        self.state = decision.next_state
        self.actuator.apply_at(decision, now)
        self._follow(now)
        self.decisions.append(decision)
        self.window.prefilled_tokens = self.window.cached_tokens = 0
        self.last_s = now
        return []

    # 1. observe ---------------------------------------------------------------------------------
    def observe(self, now: float) -> Observations:
        """The interval since the last tick, as the live loop observes one."""
        window, ready, interval = self.window, self.actuator.replicas_at(now), max(now - self.last_s, 1e-9)
        window.forget_before(now - self.config.interval_s * LENGTH_WINDOW_INTERVALS)
        prefill = [e for e in self.cluster.pool("prefill") if not e.draining]
        decode = [e for e in self.cluster.pool("decode") if not e.draining]
        if window.arrivals:
            self._last_prompts = LengthDistribution.from_samples([p for _, p, _ in window.arrivals])
        # Before any request finished, the lengths the arrivals asked for (the gateway sees max_tokens).
        outputs = [o for _, o, _, _ in window.finished] or [max(o, 1) for _, _, o in window.arrivals]
        if outputs:
            self._last_outputs = LengthDistribution.from_samples(outputs)
        finished = [f for f in window.finished if f[0] > self.last_s]
        percentile = self.config.slo.percentile
        return Observations(
            now_s=now,
            arrival_rate_per_s=sum(1 for a in window.arrivals if a[0] > self.last_s) / interval,
            prompt_tokens=self._last_prompts,
            output_tokens=self._last_outputs,
            num_prefill=ready["prefill"],
            num_decode=ready["decode"],
            prefill_queue_depth=sum(1 for e in prefill for r in e.prefill_queue if r.prefill_start_s < 0),
            decode_queue_depth=sum(len(e.waiting) for e in decode),
            decode_kv_usage=(min(sum(e.kv_used / e.kv_capacity for e in decode) / len(decode), 1.0)
                             if decode and all(e.kv_capacity for e in decode) else None),
            prefill_ttft_ms=observed_percentile([t for _, _, t, _ in finished], percentile),
            decode_itl_ms=observed_percentile([i for _, _, _, i in finished if i is not None], percentile),
            prefill_cached_fraction=min(window.cached_tokens / window.prefilled_tokens, 0.99)
            if window.prefilled_tokens else 0.0,
        )

    # 3. apply -----------------------------------------------------------------------------------
    def _follow(self, now: float) -> None:
        """Add or drain engines until each pool has the actuator's desired count."""
        for tier in TIERS:
            want = self.actuator.desired(tier)
            live = [e for e in self.cluster.pool(tier) if not e.draining]
            for _ in range(want - len(live)):
                self.cluster.add_engine(tier, now)
            for engine in sorted(live, key=lambda e: _drain_order(e, now))[:max(len(live) - want, 0)]:
                self.cluster.drain_engine(engine.worker_id, now)


def _drain_order(engine: Engine, now: float) -> tuple[bool, int, float]:
    """Starting engines first, then the least loaded; newest first on ties."""
    return engine.ready_s <= now, len(engine.running) + engine.num_waiting, -engine.started_s


def planner_summary(decisions: list[ScalingDecision], interval_s: float) -> dict[str, Any]:
    """The summary.json `planner` section: counts of actions per tier and every decision."""
    return {
        "interval_s": interval_s,
        "num_decisions": len(decisions),
        "actions": {tier: dict(Counter(d.action_for(tier) for d in decisions)) for tier in TIERS},
        "max_prefill": max((d.num_prefill for d in decisions), default=0),
        "max_decode": max((d.num_decode for d in decisions), default=0),
        "decisions": [{"time_s": d.now_s, "prefill": d.num_prefill, "decode": d.num_decode,
                       "prefill_action": d.prefill_action, "decode_action": d.decode_action,
                       "prefill_needed": d.prefill_needed, "decode_needed": d.decode_needed,
                       "planned_rate_per_s": d.planned_rate_per_s} for d in decisions],
    }
