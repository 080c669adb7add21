"""Prometheus metrics of the planner (prometheus_client default registry).

- `pdserve_planner_desired_replicas{tier}`: replicas the last decision asked for.
- `pdserve_planner_actual_replicas{tier}`: ready replicas the actuator last reported.
- `pdserve_planner_decisions_total{tier,reason}`: decisions by what they did to the tier (`reason` is one
  of `hysteresis.ACTIONS`: scale_up, scale_down, hold, cooldown, stabilizing, min_replicas,
  max_replicas, power_budget).
- `pdserve_power_estimate_watts`: power of the desired replicas at the configured watts per worker.
The controller's planner loop calls `observe_decision` after each `decide` and `observe_actual` after
each `actuator.observe_replicas()`. The simulator may call them too (it shares the registry).
"""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import Counter, Gauge

from orchestrator.planner.policy import TIERS, ScalingDecision

planner_desired_replicas = Gauge(
    "pdserve_planner_desired_replicas", "Replicas the planner's last decision asked for, per tier.", ["tier"]
)
planner_actual_replicas = Gauge(
    "pdserve_planner_actual_replicas", "Ready replicas per tier, as the actuator last reported them.", ["tier"]
)
planner_decisions_total = Counter(
    "pdserve_planner_decisions_total", "Planner decisions per tier, by what they did (reason).", ["tier", "reason"]
)
power_estimate_watts = Gauge(
    "pdserve_power_estimate_watts", "Power of the desired replicas at the configured watts per worker."
)


def observe_decision(decision: ScalingDecision) -> None:
    """Record one decision: desired replicas, its action per tier, its power estimate."""
    for tier in TIERS:
        planner_desired_replicas.labels(tier=tier).set(decision.num_for(tier))
        planner_decisions_total.labels(tier=tier, reason=decision.action_for(tier)).inc()
    power_estimate_watts.set(decision.power_estimate_w)


def observe_actual(replicas: Mapping[str, int]) -> None:
    """Record the ready replicas per tier (`{"prefill": n, "decode": m}`; other keys are ignored)."""
    for tier in TIERS:
        if tier in replicas:
            planner_actual_replicas.labels(tier=tier).set(replicas[tier])
