"""Hysteresis, cooldowns, replica limits and the power budget: from what a tier needs to what it gets.

Scale up fast, down slowly: a tier grows to its need at once (unless it changed less than
`scale_up_cooldown_s` ago); it shrinks only when its need *with the scale-down margin* (the need at
(1 + scale_down_margin) x the load: a deadband) is below its size, after that stayed so for a whole
`scale_down_window_s` (to the highest need seen in that window, like Kubernetes' HPA stabilization
window), at least `scale_down_cooldown_s` after its last change, and by at most `scale_down_max_step`.
Pure functions over a small frozen state per tier.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from orchestrator.config.planner import PlannerConfig, TierPlannerConfig

# What a decision did to a tier (the `reason` label of pdserve_planner_decisions_total).
ACTIONS = ("scale_up", "scale_down", "hold", "cooldown", "stabilizing", "min_replicas", "max_replicas", "power_budget")


@dataclass(frozen=True)
class TierState:
    """What the planner remembers about one tier between decisions."""

    desired: int  # replicas the last decision asked for
    last_change_s: float | None = None  # when `desired` last changed
    below_since_s: float | None = None  # since when the need has stayed below `desired`
    below_peak: int = 0  # the highest need seen since below_since_s
    correction: float = 1.0  # smoothed observed/predicted latency ratio


@dataclass(frozen=True)
class TierStep:
    """One tier's outcome before the power budget: replicas, action, reason, next state."""

    num_replicas: int
    action: str
    reason: str
    state: TierState


def clamp_need(need: int, limits: TierPlannerConfig) -> tuple[int, str | None, str | None]:
    """The need within [min_replicas, max_replicas]. Returns (count, action or None, reason or None)."""
    if need < limits.min_replicas:
        return limits.min_replicas, "min_replicas", f"need {need} raised to min_replicas {limits.min_replicas}"
    if need > limits.max_replicas:
        return limits.max_replicas, "max_replicas", f"need {need} capped at max_replicas {limits.max_replicas}"
    return need, None, None


def apply_hysteresis(need: int, need_down: int, state: TierState, now_s: float, limits: TierPlannerConfig) -> TierStep:
    """Decide one tier's replicas from its (clamped) need, and the need with the scale-down margin
    (`need_down` >= `need`: what the tier may shrink to). Returns the count, what was done and why, and
    the tier's next state (the correction factor is carried over unchanged)."""
    current = state.desired
    since_change = None if state.last_change_s is None else now_s - state.last_change_s
    if need > current:
        if since_change is not None and since_change < limits.scale_up_cooldown_s:
            wait = limits.scale_up_cooldown_s - since_change
            return TierStep(current, "cooldown", f"need {need} > {current}, scale-up cooldown {wait:.0f} s left",
                            replace(state, below_since_s=None, below_peak=0))
        return TierStep(need, "scale_up", f"scale up {current} -> {need}",
                        replace(state, desired=need, last_change_s=now_s, below_since_s=None, below_peak=0))
    if need_down >= current:
        why = f"hold at {current}" + (f" (need {need}, {need_down} with the scale-down margin)" if need < current else "")
        return TierStep(current, "hold", why, replace(state, below_since_s=None, below_peak=0))
    return _maybe_scale_down(need_down, state, now_s, limits, since_change)


def _maybe_scale_down(need: int, state: TierState, now_s: float, limits: TierPlannerConfig,
                      since_change: float | None) -> TierStep:
    current = state.desired
    below_since = now_s if state.below_since_s is None else state.below_since_s
    peak = need if state.below_since_s is None else max(state.below_peak, need)
    waiting = replace(state, below_since_s=below_since, below_peak=peak)
    below_for = now_s - below_since
    if below_for < limits.scale_down_window_s:
        return TierStep(current, "stabilizing", f"need {need} < {current} for {below_for:.0f} s of the "
                        f"{limits.scale_down_window_s:.0f} s window (peak need {peak})", waiting)
    if since_change is not None and since_change < limits.scale_down_cooldown_s:
        wait = limits.scale_down_cooldown_s - since_change
        return TierStep(current, "cooldown", f"need {need} < {current}, scale-down cooldown {wait:.0f} s left", waiting)
    target = max(peak, current - limits.scale_down_max_step)
    if target >= current:
        return TierStep(current, "stabilizing", f"need {need} < {current} but peak need in the window is {peak}", waiting)
    return TierStep(target, "scale_down", f"scale down {current} -> {target} (need {need}, window peak {peak}, "
                    f"at most {limits.scale_down_max_step} per step)",
                    replace(state, desired=target, last_change_s=now_s, below_since_s=None, below_peak=0))


def compute_power_w(num_prefill: int, num_decode: int, config: PlannerConfig) -> float:
    """Watts of this many workers at the configured power per worker."""
    return num_prefill * config.prefill.power_per_worker_w + num_decode * config.decode.power_per_worker_w


def fit_power_budget(num_prefill: int, num_decode: int, config: PlannerConfig) -> tuple[int, int, str | None]:
    """The largest counts at most (num_prefill, num_decode) that fit `config.power_budget_w`.

    Tiers are grown together from their minimums, one worker at a time to the tier furthest below its
    want (as a fraction), while the budget allows. Returns (prefill, decode, reason or None when no cut
    was needed). The config guarantees the minimums fit.
    """
    budget = config.power_budget_w
    want_w = compute_power_w(num_prefill, num_decode, config)
    if budget is None or want_w <= budget + 1e-9:
        return num_prefill, num_decode, None
    want = {"prefill": num_prefill, "decode": num_decode}
    have = {tier: min(want[tier], config.tier(tier).min_replicas) for tier in want}
    watts = {tier: config.tier(tier).power_per_worker_w for tier in want}
    for tier in want:
        if watts[tier] == 0:
            have[tier] = want[tier]
    used = have["prefill"] * watts["prefill"] + have["decode"] * watts["decode"]
    while True:
        growable = [t for t in want if have[t] < want[t] and used + watts[t] <= budget + 1e-9]
        if not growable:
            break
        tier = min(growable, key=lambda t: (have[t] / want[t], t))
        have[tier] += 1
        used += watts[tier]
    reason = (f"power budget {budget:g} W: wanted {num_prefill} prefill + {num_decode} decode = {want_w:g} W, "
              f"cut to {have['prefill']} + {have['decode']} = {used:g} W")
    return have["prefill"], have["decode"], reason
