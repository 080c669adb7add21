"""Scenario helpers of the planner tests: configs, recorded loads, and a loop that feeds them through
`decide` and the virtual actuator. (A module of its own: `conftest` names collide across test folders.)"""

from collections.abc import Iterable
from dataclasses import dataclass

from orchestrator.actuators import VirtualActuator
from orchestrator.config.planner import PlannerConfig
from orchestrator.planner import LengthDistribution, Observations, ScalingDecision, decide
from orchestrator.profiles import EngineProfile

INTERVAL_S = 10.0


def make_config(**changes) -> PlannerConfig:
    """A config for SmolLM2 on CPU: TTFT 2 s, ITL 100 ms at p90, 1..16 workers per tier."""
    tier = {"min_replicas": 1, "max_replicas": 16, "scale_down_window_s": 30.0, "scale_down_cooldown_s": 30.0}
    values = {"slo": {"ttft_ms": 2000.0, "itl_ms": 100.0, "percentile": 90.0}, "interval_s": INTERVAL_S,
              "forecaster": "constant", "prefill": dict(tier), "decode": dict(tier)}
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(values.get(key), dict):
            values[key] = {**values[key], **value}
        else:
            values[key] = value
    return PlannerConfig.model_validate(values)


@dataclass(frozen=True)
class Load:
    rate_per_s: float
    prompt: LengthDistribution
    output: LengthDistribution
    prefill_ttft_ms: float | None = None
    decode_itl_ms: float | None = None


def load(rate: float, prompt: float | LengthDistribution, output: float | LengthDistribution, **kw) -> Load:
    as_dist = lambda v: v if isinstance(v, LengthDistribution) else LengthDistribution.constant(v)  # noqa: E731
    return Load(rate, as_dist(prompt), as_dist(output), **kw)


def drive(loads: Iterable[Load], profile: EngineProfile, config: PlannerConfig, start: tuple[int, int] = (1, 1),
          start_delay_s: float = 0.0) -> list[ScalingDecision]:
    """One decision per load, every INTERVAL_S, through a virtual actuator."""
    actuator = VirtualActuator(*start, start_delay_s=start_delay_s)
    state, decisions = None, []
    for i, step in enumerate(loads):
        now = i * INTERVAL_S
        ready = actuator.replicas_at(now)
        obs = Observations(now_s=now, arrival_rate_per_s=step.rate_per_s, prompt_tokens=step.prompt,
                           output_tokens=step.output, num_prefill=ready["prefill"], num_decode=ready["decode"],
                           prefill_ttft_ms=step.prefill_ttft_ms, decode_itl_ms=step.decode_itl_ms)
        decision = decide(obs, profile, config.slo, state, config)
        actuator.apply_at(decision, now)
        state = decision.next_state
        decisions.append(decision)
    return decisions


def counts(decisions: list[ScalingDecision], tier: str) -> list[int]:
    return [d.num_for(tier) for d in decisions]
