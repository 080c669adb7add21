"""The planner's decision: `decide(observations, profiles, slo, state, config) -> ScalingDecision`.

One decision, every `interval_s`:
1. Forecast: fold the observed arrival rate into the forecaster; plan for the larger of the rate now
   and the rate `forecast_horizon_s` ahead (a worker started now is ready about then).
2. Correct: the observed/predicted latency ratio of each tier (at the current size, only while the pool
   is at the size last asked for: warming replicas would bias it) is smoothed and clamped, and scales
   the profile's step times.
3. Size: prefill from the prompt-length distribution under the TTFT target, decode from Little's law
   under the ITL target and the KV capacity (`sizing`); queued requests are added as extra load to be
   worked off within `backlog_drain_s`; decode never goes below what its current KV usage needs.
4. Limit: min/max per tier, hysteresis and cooldowns (`hysteresis`), then the power budget.
Every tier's reasons say what was planned, why, and what limited it. Pure: no I/O, no clock, no
mutation; the next state comes back inside the decision (`decision.next_state`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from orchestrator.config.planner import PlannerConfig, SLOConfig
from orchestrator.planner.forecast import ForecastState, make_forecaster
from orchestrator.planner.hysteresis import (
    TierState,
    TierStep,
    apply_hysteresis,
    clamp_need,
    compute_power_w,
    fit_power_budget,
)
from orchestrator.planner.observations import Observations
from orchestrator.planner.sizing import (
    Sizing,
    compute_decode_estimate,
    compute_decode_replicas,
    compute_prefill_estimate,
    compute_prefill_replicas,
)
from orchestrator.profiles import EngineProfile

TIERS = ("prefill", "decode")


@dataclass(frozen=True)
class PlannerProfiles:
    """The engine profile of each tier (the same one when both tiers run the same engine and hardware)."""

    prefill: EngineProfile
    decode: EngineProfile

    @classmethod
    def same(cls, profile: EngineProfile) -> PlannerProfiles:
        return cls(profile, profile)


@dataclass(frozen=True)
class PlannerState:
    """Everything the planner remembers between decisions."""

    prefill: TierState
    decode: TierState
    forecast: ForecastState = field(default_factory=ForecastState)

    @classmethod
    def initial(cls, num_prefill: int, num_decode: int) -> PlannerState:
        """The state of a planner that has not decided yet, over pools of these sizes."""
        return cls(TierState(desired=num_prefill), TierState(desired=num_decode))

    def tier(self, name: str) -> TierState:
        return self.prefill if name == "prefill" else self.decode


@dataclass(frozen=True)
class ScalingDecision:
    """Replicas per tier, with what was done (`*_action`, one of hysteresis.ACTIONS) and why."""

    num_prefill: int
    num_decode: int
    prefill_action: str = "hold"
    decode_action: str = "hold"
    prefill_reasons: tuple[str, ...] = ()
    decode_reasons: tuple[str, ...] = ()
    prefill_needed: int | None = None  # what the load needs, before limits, hysteresis and power
    decode_needed: int | None = None
    prefill_predicted_ttft_ms: float | None = None  # at the needed size, at the SLO percentile
    decode_predicted_itl_ms: float | None = None
    planned_rate_per_s: float | None = None
    power_estimate_w: float = 0.0
    power_limited: bool = False
    now_s: float = 0.0
    next_state: PlannerState | None = field(default=None, compare=False, repr=False)

    def num_for(self, tier: str) -> int:
        """Replicas of `tier` (`prefill` or `decode`). Raises KeyError on another name."""
        if tier not in TIERS:
            raise KeyError(tier)
        return self.num_prefill if tier == "prefill" else self.num_decode

    def action_for(self, tier: str) -> str:
        return self.prefill_action if tier == "prefill" else self.decode_action

    @property
    def reasons(self) -> dict[str, tuple[str, ...]]:
        return {"prefill": self.prefill_reasons, "decode": self.decode_reasons}

    def describe(self) -> str:
        """Several lines a person reads: each tier's count, action and reasons."""
        lines = []
        for tier in TIERS:
            lines.append(f"{tier}: {self.num_for(tier)} ({self.action_for(tier)})")
            lines.extend(f"  - {reason}" for reason in self.reasons[tier])
        lines.append(f"power estimate {self.power_estimate_w:g} W")
        return "\n".join(lines)


def decide(
    observations: Observations,
    profiles: PlannerProfiles | EngineProfile,
    slo: SLOConfig,
    state: PlannerState | None,
    config: PlannerConfig,
) -> ScalingDecision:
    """Decide the replicas of both tiers for the next interval.

    `state` is None on the first call, then the previous decision's `next_state`. Returns the decision;
    raises ValueError only on inconsistent observations.
    """
    if isinstance(profiles, EngineProfile):
        profiles = PlannerProfiles.same(profiles)
    obs = observations
    state = state or PlannerState.initial(obs.num_prefill, obs.num_decode)
    forecaster = make_forecaster(config)
    forecast_state = forecaster.observe(state.forecast, obs.now_s, obs.arrival_rate_per_s)
    forecast = forecaster.predict(forecast_state, config.forecast_horizon_s)
    rate = max(obs.arrival_rate_per_s, forecast)
    rate_reason = (f"plan for {rate:.2f} req/s (observed {obs.arrival_rate_per_s:.2f}, {config.forecaster} forecast "
                   f"{forecast:.2f} in {config.forecast_horizon_s:.0f} s)")

    prefill_need, prefill_reasons, prefill_state = _plan_prefill(obs, profiles.prefill, slo, state.prefill, rate, config)
    decode_need, decode_reasons, decode_state = _plan_decode(obs, profiles.decode, slo, state.decode, rate, config)
    steps = {
        "prefill": _limit_tier(prefill_need, prefill_state, obs.now_s, config, "prefill"),
        "decode": _limit_tier(decode_need, decode_state, obs.now_s, config, "decode"),
    }
    num_prefill, num_decode, power_reason = fit_power_budget(steps["prefill"].num_replicas, steps["decode"].num_replicas, config)
    final = {"prefill": num_prefill, "decode": num_decode}
    states, actions, reasons = {}, {}, {"prefill": [rate_reason, *prefill_reasons], "decode": [rate_reason, *decode_reasons]}
    for tier, step in steps.items():
        states[tier], actions[tier] = _settle(step, final[tier], state.tier(tier), obs.now_s)
        reasons[tier].append(step.reason)
        if final[tier] < step.num_replicas:
            reasons[tier].append(str(power_reason))
    if config.power_budget_w is not None and power_reason is None:
        for tier in TIERS:
            reasons[tier].append(f"within power budget: {compute_power_w(num_prefill, num_decode, config):g} W "
                                 f"of {config.power_budget_w:g} W")
    return ScalingDecision(
        num_prefill=num_prefill, num_decode=num_decode,
        prefill_action=actions["prefill"], decode_action=actions["decode"],
        prefill_reasons=tuple(reasons["prefill"]), decode_reasons=tuple(reasons["decode"]),
        prefill_needed=prefill_need.sizing.num_replicas, decode_needed=decode_need.sizing.num_replicas,
        prefill_predicted_ttft_ms=getattr(prefill_need.sizing.estimate, "ttft_ms", None),
        decode_predicted_itl_ms=getattr(decode_need.sizing.estimate, "itl_ms", None),
        planned_rate_per_s=rate, power_estimate_w=compute_power_w(num_prefill, num_decode, config),
        power_limited=power_reason is not None, now_s=obs.now_s,
        next_state=PlannerState(states["prefill"], states["decode"], forecast_state),
    )


# --- 2 and 3: correction and sizing, per tier ------------------------------------------------------------


@dataclass(frozen=True)
class _Need:
    """A tier's sizing at the planned load, and its count at (1 + scale_down_margin) x that load."""

    sizing: Sizing
    num_down: int


def _plan_prefill(obs: Observations, profile: EngineProfile, slo: SLOConfig, tier: TierState, rate: float,
                  config: PlannerConfig) -> tuple[_Need, list[str], TierState]:
    """Size the prefill tier. Returns the need, its reasons and the tier state with the new correction."""
    prompts = obs.prompt_tokens.scaled(1.0 - obs.prefill_cached_fraction)
    predicted = None
    if obs.num_prefill > 0 and obs.arrival_rate_per_s > 0:
        predicted = compute_prefill_estimate(obs.num_prefill, obs.arrival_rate_per_s, prompts, profile, slo.percentile).ttft_ms
    correction, reasons = _correct(tier, obs.prefill_ttft_ms, predicted, obs.num_prefill == tier.desired, "TTFT", slo, config)
    load = rate + obs.prefill_queue_depth / config.backlog_drain_s
    def size(rate_per_s: float) -> Sizing:
        return compute_prefill_replicas(rate_per_s, prompts, profile, slo.ttft_ms, slo.percentile,
                                        config.max_utilization, correction)

    sizing = size(load)
    num_down = size(load * (1.0 + config.scale_down_margin)).num_replicas
    est, pct = sizing.estimate, f"p{slo.percentile:g}"
    if obs.prefill_queue_depth:
        reasons.append(f"{obs.prefill_queue_depth} prompts queued, to be worked off within {config.backlog_drain_s:g} s")
    if sizing.limit == "idle":
        reasons.append("no arrivals: no prefill work")
    elif sizing.meets_slo:
        reasons.append(f"{pct} prompt {prompts.quantile(slo.percentile / 100):.0f} tokens (mean {prompts.mean:.0f}): "
                       f"{sizing.num_replicas} workers give {pct} TTFT {est.ttft_ms:.0f} ms <= {slo.ttft_ms:g} ms "
                       f"at {est.utilization:.0%} busy")
    else:
        reasons.append(f"SLO out of reach: the {pct} prompt ({prompts.quantile(slo.percentile / 100):.0f} tokens) alone "
                       f"takes {est.service_ms:.0f} ms > {slo.ttft_ms:g} ms; {sizing.num_replicas} workers keep them "
                       f"{est.utilization:.0%} busy (max {config.max_utilization:.0%})")
    return _Need(sizing, num_down), reasons, replace(tier, correction=correction)


def _plan_decode(obs: Observations, profile: EngineProfile, slo: SLOConfig, tier: TierState, rate: float,
                 config: PlannerConfig) -> tuple[_Need, list[str], TierState]:
    """Size the decode tier. Returns the need (raised to the KV floor), its reasons and the tier state
    with the new correction."""
    predicted = None
    if obs.num_decode > 0 and obs.arrival_rate_per_s > 0:
        predicted = compute_decode_estimate(obs.num_decode, obs.arrival_rate_per_s, obs.prompt_tokens,
                                            obs.output_tokens, profile, slo.percentile).itl_ms
    correction, reasons = _correct(tier, obs.decode_itl_ms, predicted, obs.num_decode == tier.desired, "ITL", slo, config)
    load = rate + obs.decode_queue_depth / config.backlog_drain_s
    def size(rate_per_s: float) -> Sizing:
        return compute_decode_replicas(rate_per_s, obs.prompt_tokens, obs.output_tokens, profile, slo.itl_ms,
                                       slo.percentile, config.max_utilization, correction)

    sizing = size(load)
    num_down = size(load * (1.0 + config.scale_down_margin)).num_replicas
    est, pct = sizing.estimate, f"p{slo.percentile:g}"
    if obs.decode_queue_depth:
        reasons.append(f"{obs.decode_queue_depth} requests wait for a decode slot, to be worked off within "
                       f"{config.backlog_drain_s:g} s")
    if sizing.limit == "idle":
        reasons.append("no arrivals: no new decode work")
    else:
        verdict = "<=" if sizing.meets_slo else "> (SLO out of reach: one step is too slow)"
        reasons.append(f"outputs mean {obs.output_tokens.mean:.0f} tokens ({pct} "
                       f"{obs.output_tokens.quantile(slo.percentile / 100):.0f}), context {est.context_tokens:.0f} per "
                       f"decoding request: {sizing.num_replicas} workers batch {est.batch:.1f} ({pct} {est.batch_tail:.1f}), "
                       f"{pct} ITL {est.itl_ms:.0f} ms {verdict} {slo.itl_ms:g} ms, KV {est.kv_fraction:.0%}")
    if obs.decode_kv_usage is not None and obs.num_decode > 0:
        kv_floor = math.ceil(obs.num_decode * obs.decode_kv_usage / config.max_utilization - 1e-9)
        if kv_floor > sizing.num_replicas:
            reasons.append(f"KV cache {obs.decode_kv_usage:.0%} full on {obs.num_decode} workers: keep at least "
                           f"{kv_floor} (max {config.max_utilization:.0%} each)")
            sizing = replace(sizing, num_replicas=kv_floor, limit="kv")
        num_down = max(num_down, kv_floor)
    return _Need(sizing, num_down), reasons, replace(tier, correction=correction)


def _correct(tier: TierState, observed_ms: float | None, predicted_ms: float | None, stable: bool, metric: str,
             slo: SLOConfig, config: PlannerConfig) -> tuple[float, list[str]]:
    """Fold observed/predicted latency into the tier's smoothed correction factor, clamped to
    [correction_min, correction_max]. Returns the factor and a reason (none when nothing was learned)."""
    if observed_ms is None or predicted_ms is None or not math.isfinite(predicted_ms) or predicted_ms <= 0:
        return tier.correction, ([f"correction x{tier.correction:.2f} (kept)"] if tier.correction != 1.0 else [])
    if not stable:
        return tier.correction, [f"correction x{tier.correction:.2f} (kept: the pool is still resizing)"]
    ratio = observed_ms / predicted_ms
    clamped = min(max(ratio, config.correction_min), config.correction_max)
    smoothed = (1 - config.correction_alpha) * tier.correction + config.correction_alpha * clamped
    factor = min(max(smoothed, config.correction_min), config.correction_max)
    return factor, [f"correction x{factor:.2f} (observed p{slo.percentile:g} {metric} {observed_ms:.0f} ms / "
                    f"predicted {predicted_ms:.0f} ms = {ratio:.2f}, clamped to [{config.correction_min:g}, "
                    f"{config.correction_max:g}])"]


# --- 4: limits -------------------------------------------------------------------------------------------


def _limit_tier(need: _Need, tier: TierState, now_s: float, config: PlannerConfig, name: str) -> TierStep:
    """Clamp the need to the tier's limits and apply hysteresis. The result stays in the limits even when
    the previous size was outside them (a config change)."""
    limits = config.tier(name)
    clamped, clamp_action, clamp_reason = clamp_need(need.sizing.num_replicas, limits)
    clamped_down, _, _ = clamp_need(need.num_down, limits)
    step = apply_hysteresis(clamped, max(clamped, clamped_down), tier, now_s, limits)
    bounded = min(max(step.num_replicas, limits.min_replicas), limits.max_replicas)
    if bounded != step.num_replicas:
        action = "min_replicas" if bounded == limits.min_replicas else "max_replicas"
        return TierStep(bounded, action, f"{step.reason}; held to [{limits.min_replicas}, {limits.max_replicas}]",
                        replace(step.state, desired=bounded, last_change_s=now_s))
    if clamp_action is not None and step.num_replicas == clamped:
        return replace(step, action=clamp_action, reason=f"{clamp_reason}; {step.reason}")
    return step


def _settle(step: TierStep, final: int, before: TierState, now_s: float) -> tuple[TierState, str]:
    """The tier's next state and action once the power budget has had its say."""
    if final == step.num_replicas:
        return step.state, step.action
    changed = final != before.desired
    state = replace(step.state, desired=final, last_change_s=now_s if changed else before.last_change_s)
    return state, "power_budget"
