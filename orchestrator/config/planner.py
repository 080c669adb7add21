"""Config section of the autoscaling planner and its actuators.

How the numbers are used (see docs/autoscaling.md and `orchestrator.planner`):
- `slo`: the prefill pool is sized so that TTFT at `slo.percentile` stays under `slo.ttft_ms`, the decode
  pool so that inter-token latency at that percentile stays under `slo.itl_ms`.
- Every `interval_s` the loop observes the cluster and calls `planner.decide`; the arrival rate is
  forecast `forecast_horizon_s` ahead (`forecaster`), and the larger of now and then is planned for.
- Per tier: replicas are kept in [`min_replicas`, `max_replicas`]; a scale-up happens at once (after
  `scale_up_cooldown_s`), a scale-down only after the need stayed lower for `scale_down_window_s`,
  `scale_down_cooldown_s` after the last change, by at most `scale_down_max_step` workers.
- `power_budget_w`: prefill workers x `prefill.power_per_worker_w` + decode workers x
  `decode.power_per_worker_w` never exceeds it.
"""

from typing import Literal

from pydantic import Field, model_validator

from orchestrator.config.base import ConfigModel


class SLOConfig(ConfigModel):
    """Latency targets the planner sizes the pools for."""

    ttft_ms: float = Field(2000.0, gt=0, description="Time to first token target, in milliseconds (prefill tier).")
    itl_ms: float = Field(200.0, gt=0, description="Inter-token latency (time per output token) target, in milliseconds (decode tier).")
    percentile: float = Field(90.0, gt=50, lt=100, description="Percentile the targets apply to (90: p90 TTFT <= ttft_ms).")


class TierPlannerConfig(ConfigModel):
    """Limits, cooldowns and power of one tier's pool."""

    min_replicas: int = Field(1, ge=0, le=1024, description="Fewest workers the planner keeps in this tier.")
    max_replicas: int = Field(8, ge=1, le=1024, description="Most workers the planner asks for in this tier.")
    power_per_worker_w: float = Field(
        700.0, ge=0, description="Power one busy worker of this tier draws, in watts (the simulator's power model gives it)."
    )
    scale_up_cooldown_s: float = Field(0.0, ge=0, description="Least time after a change of this tier before it grows again.")
    scale_down_cooldown_s: float = Field(120.0, ge=0, description="Least time after a change of this tier before it shrinks.")
    scale_down_window_s: float = Field(
        60.0, ge=0, description="The need must stay below the current size this long before the tier shrinks (stabilization window)."
    )
    scale_down_max_step: int = Field(1, ge=1, le=1024, description="Most workers removed by one decision.")

    @model_validator(mode="after")
    def _check_range(self) -> "TierPlannerConfig":
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) is above max_replicas ({self.max_replicas})")
        return self


class KubernetesActuatorConfig(ConfigModel):
    """Where the Kubernetes actuator patches replica counts: a KubeRay RayCluster's worker groups."""

    namespace: str = Field("default", min_length=1, description="Namespace of the RayCluster.")
    raycluster_name: str = Field("pdserve", min_length=1, description="Name of the RayCluster object (`ray.io/v1`).")
    prefill_group: str = Field("prefill", min_length=1, description="`groupName` of the prefill worker group.")
    decode_group: str = Field("decode", min_length=1, description="`groupName` of the decode worker group.")
    update_min_max: bool = Field(
        True, description="Also widen the group's minReplicas/maxReplicas when the new replicas fall outside them."
    )
    in_cluster: bool = Field(True, description="Use the pod's service account; false: the local kubeconfig.")


class PlannerConfig(ConfigModel):
    """Per-tier autoscaling: SLOs, forecasting, limits, cooldowns, power budget, actuator."""

    enabled: bool = Field(False, description="Run the autoscaling loop (`pdserve up --autoscale`).")
    slo: SLOConfig = Field(default_factory=SLOConfig, description="Latency targets per tier.")
    interval_s: float = Field(10.0, gt=0, le=3600, description="Time between two planner decisions.")
    forecaster: Literal["constant", "ewma", "holt"] = Field(
        "holt", description="Arrival-rate forecast: last value, exponentially weighted mean, or Holt's linear trend."
    )
    ewma_alpha: float = Field(0.5, gt=0, le=1, description="Weight of the newest rate in the EWMA forecaster (per interval).")
    holt_alpha: float = Field(0.5, gt=0, le=1, description="Level smoothing of Holt's forecaster (per interval).")
    holt_beta: float = Field(0.3, gt=0, le=1, description="Trend smoothing of Holt's forecaster (per interval).")
    forecast_horizon_s: float = Field(
        30.0, ge=0, description="How far ahead the rate is forecast (about the time a new worker takes to start)."
    )
    max_utilization: float = Field(
        0.9, gt=0, lt=1, description="Highest load per worker the planner accepts (fraction of busy time or of KV cache)."
    )
    backlog_drain_s: float = Field(
        30.0, gt=0, description="Queued requests are planned to be worked off within this time, on top of new arrivals."
    )
    scale_down_margin: float = Field(
        0.2, ge=0, le=2, description="A tier shrinks only to a size that would still carry (1 + margin) x the planned load "
        "(the deadband against flapping)."
    )
    correction_min: float = Field(0.5, gt=0, le=1, description="Lowest observed/predicted latency correction factor.")
    correction_max: float = Field(3.0, ge=1, description="Highest observed/predicted latency correction factor.")
    correction_alpha: float = Field(
        0.3, gt=0, le=1, description="Weight of the newest observed/predicted ratio in the smoothed correction factor."
    )
    prefill: TierPlannerConfig = Field(default_factory=TierPlannerConfig, description="Prefill pool limits.")
    decode: TierPlannerConfig = Field(default_factory=TierPlannerConfig, description="Decode pool limits.")
    power_budget_w: float | None = Field(None, gt=0, description="Most watts all workers together may draw; unset: no limit.")
    actuator: Literal["ray", "kubernetes"] = Field(
        "ray", description="`ray`: the controller starts and drains worker actors; `kubernetes`: patch the RayCluster's groups."
    )
    kubernetes: KubernetesActuatorConfig = Field(default_factory=KubernetesActuatorConfig, description="Kubernetes actuator target.")

    @model_validator(mode="after")
    def _check_power(self) -> "PlannerConfig":
        if self.power_budget_w is not None:
            floor_w = (self.prefill.min_replicas * self.prefill.power_per_worker_w
                       + self.decode.min_replicas * self.decode.power_per_worker_w)
            if floor_w > self.power_budget_w:
                raise ValueError(f"power_budget_w ({self.power_budget_w:g} W) is below the power of the minimum "
                                 f"replicas ({floor_w:g} W): lower min_replicas or raise the budget")
        return self

    def tier(self, name: str) -> TierPlannerConfig:
        """The limits of tier `name` (`prefill` or `decode`). Raises KeyError on another name."""
        if name == "prefill":
            return self.prefill
        if name == "decode":
            return self.decode
        raise KeyError(name)
