"""The autoscaling planner: a pure policy that sizes the prefill and decode pools on latency targets.

`decide(observations, profiles, slo, state, config) -> ScalingDecision` (in `policy`) is the whole
interface: no I/O, no clock, no mutation, so the controller's loop and the simulator run the same code
and feed the decision to an actuator (`orchestrator.actuators`). Its parts:
- `observations`: length distributions and one interval's observations;
- `forecast`: arrival-rate forecasters (constant, EWMA, Holt) behind one interface;
- `sizing`: queueing and Little's-law models of each tier against an engine profile;
- `hysteresis`: cooldowns, stabilization window, min/max, power budget;
- `metrics` (imported separately: it needs prometheus_client): desired/actual replicas, decisions, power.
May import `orchestrator.config`, `orchestrator.profiles`, `orchestrator.errors` and numpy.
"""

from orchestrator.planner.forecast import (
    BaseForecaster,
    ConstantForecaster,
    EwmaForecaster,
    ForecastState,
    HoltForecaster,
    make_forecaster,
)
from orchestrator.planner.hysteresis import ACTIONS, TierState, compute_power_w, fit_power_budget
from orchestrator.planner.observations import LengthDistribution, Observations
from orchestrator.planner.policy import TIERS, PlannerProfiles, PlannerState, ScalingDecision, decide
from orchestrator.planner.sizing import (
    DecodeEstimate,
    PrefillEstimate,
    Sizing,
    compute_decode_estimate,
    compute_decode_replicas,
    compute_prefill_estimate,
    compute_prefill_replicas,
)

__all__ = [
    "ACTIONS",
    "TIERS",
    "BaseForecaster",
    "ConstantForecaster",
    "DecodeEstimate",
    "EwmaForecaster",
    "ForecastState",
    "HoltForecaster",
    "LengthDistribution",
    "Observations",
    "PlannerProfiles",
    "PlannerState",
    "PrefillEstimate",
    "ScalingDecision",
    "Sizing",
    "TierState",
    "compute_decode_estimate",
    "compute_decode_replicas",
    "compute_power_w",
    "compute_prefill_estimate",
    "compute_prefill_replicas",
    "decide",
    "fit_power_budget",
    "make_forecaster",
]
