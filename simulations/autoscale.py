"""Autoscaling in the simulator: the live planner (`orchestrator.planner.decide`) every planner tick,
observing the simulated cluster, applied through `orchestrator.actuators.VirtualActuator`.

Nothing here decides: the policy is the planner's, unchanged. Life of a tick (every
`config.planner.interval_s` of simulated time, the first one interval after the start):
1. observe: `ObservationWindow` collects what a gateway reports (`orchestrator.autoscaler.GatewayReport`:
   arrivals with their prompt and asked-for output, first tokens with their TTFT, every inter-token gap
   as decode steps end, finished requests with what they produced); each tick it goes to the live
   loop's own `orchestrator.autoscaler.Observer.record`, and `Observer.observe` turns it, with the
   simulated workers' stats (prefill engines' waiting prompts, decode engines' KV usage) and ready
   replicas, into `orchestrator.planner.Observations`, exactly as in a running cluster. The gateway's
   queue depth is the decode engines' waiting requests (the requests a real gateway would hold back
   while the workers' batches are full);
2. decide: `decide(observations, profiles, slo, state, planner_config)`: the profiles are what
   `pdserve profile` would measure on the simulated engines (`simulations.profile.profile_of`; a
   `--profile` run gives the planner that very file), the SLO is the simulation's, each worker's power
   the simulator's all-in power per GPU times its TP degree (`--max-gpus` becomes a power budget);
3. apply: `VirtualActuator.apply_at(decision, now)`; the cluster follows the actuator's desired counts:
   engines are added (ready `worker_start_s` later) or drained (starting ones first, then the least
   loaded, newest first); a drained engine finishes what it holds, then leaves.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from types import SimpleNamespace
from typing import Any

from orchestrator.actuators import VirtualActuator
from orchestrator.autoscaler import GatewayReport, Observer
from orchestrator.config import PlannerConfig
from orchestrator.config.planner import SLOConfig
from orchestrator.errors import ConfigError
from orchestrator.planner import (
    TIERS,
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
    """What a gateway would report since the last tick (the cluster and its engines call the `on_*`
    methods); `take()` hands it over as a `GatewayReport`."""

    def __init__(self) -> None:
        self.report = GatewayReport()
        self._asked: dict[int, int] = {}  # output tokens each request asked for, until it finishes

    def on_arrival(self, request: SimRequest) -> None:
        self._asked[request.request_id] = request.output_tokens
        self.report.arrivals.append((request.arrival_s, request.prompt_tokens, request.output_tokens))

    def on_first_token(self, request: SimRequest) -> None:
        self.report.first_tokens.append((request.first_token_s, request.ttft_s * 1e3))

    def on_token_gaps(self, now: float, count: int, gap_ms: float) -> None:
        """`count` tokens streamed, `gap_ms` apart (one decode span of an engine)."""
        self.report.token_gaps.extend(itertools.repeat((now, gap_ms), count))

    def on_finish(self, request: SimRequest) -> None:
        asked = self._asked.pop(request.request_id, request.output_tokens)
        self.report.finished.append((request.finish_s, request.output_tokens, asked))

    def take(self, queue_depth: int) -> GatewayReport:
        report, self.report = self.report, GatewayReport()
        report.queue_depth = queue_depth
        return report


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
        self._now = 0.0
        self.observer = Observer(self.config)
        self.decisions: list[ScalingDecision] = []
        cluster.observe_with(self.window)
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
        return []

    # 1. observe ---------------------------------------------------------------------------------
    def observe(self, now: float) -> Observations:
        """The interval since the last tick, observed by the live loop's own code."""
        self._now = now
        decode = [e for e in self.cluster.pool("decode") if not e.draining]
        self.observer.record(self.window.take(queue_depth=sum(len(e.waiting) for e in decode)))
        return self.observer.observe(now, self.actuator.replicas_at(now), self._worker_stats())

    def _worker_stats(self) -> list[SimpleNamespace]:
        """The simulated workers' stats, shaped as the controller's (`tier`, `engine.num_waiting`, `engine.kv_usage`)."""
        stats = []
        for engine in self.cluster.engines.values():
            if engine.draining or engine.ready_s > self._now:
                continue
            waiting = sum(1 for r in engine.prefill_queue if r.prefill_start_s < 0) + len(engine.waiting)
            usage = min(engine.kv_used / engine.kv_capacity, 1.0) if engine.kv_capacity else 0.0
            stats.append(SimpleNamespace(tier=engine.tier, engine=SimpleNamespace(num_waiting=waiting, kv_usage=usage)))
        return stats

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
