"""What one simulation run simulates: the cluster, its step-time and power models, its SLOs.

`SimConfig` is a frozen pydantic model (unknown keys refused) so a configuration can be written to and
read from `summary.json`, and the capacity search can produce variations of it with `model_copy`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from orchestrator.config import BudgetConfig, ConfigModel, PlannerConfig, RouterConfig
from simulations.power import PowerConfig
from simulations.timing import Efficiency


class SimConfig(ConfigModel):
    """One simulated cluster serving one model."""

    model: str = Field("llama-3.1-8b", description="Model shape name (see `simulations.models.CATALOGUE`).")
    accelerator: str = Field("h100-sxm", description="Accelerator name from hardware.yaml.")
    mode: Literal["disaggregated", "colocated"] = Field("disaggregated", description="Split prefill/decode pools, or one colocated pool.")
    num_prefill: int = Field(1, ge=0, le=4096, description="Prefill engines (0 when colocated).")
    num_decode: int = Field(1, ge=1, le=4096, description="Decode engines (colocated engines when colocated).")
    prefill_tp: int = Field(1, ge=1, le=64, description="Tensor-parallel degree of each prefill engine.")
    decode_tp: int = Field(1, ge=1, le=64, description="Tensor-parallel degree of each decode (or colocated) engine.")
    max_num_seqs: int = Field(256, ge=1, le=65536, description="Most requests one engine step batches.")
    max_batched_tokens: int = Field(8192, ge=16, le=1 << 22, description="Most tokens one engine step computes.")
    timing: Literal["roofline", "profile", "coefficients"] = Field("roofline", description="Step-time model.")
    profile: str | None = Field(None, description="Measured profile file (timing=profile).")
    coefficients: tuple[float, float, float, float, float, float] | None = Field(
        None, description="prefill a, b, c and decode a, b, c in ms (timing=coefficients).")
    kv_tokens: int | None = Field(None, ge=1, description="KV capacity per engine in tokens (coefficients/profile timing).")
    compute_efficiency: float = Field(Efficiency.compute, gt=0, le=1, description="Share of peak FLOPs kernels reach.")
    bandwidth_efficiency: float = Field(Efficiency.bandwidth, gt=0, le=1, description="Share of HBM bandwidth reached.")
    step_overhead_ms: float = Field(Efficiency.step_overhead_ms, ge=0, description="Fixed cost per engine step.")
    allreduce_latency_us: float = Field(Efficiency.allreduce_latency_us, ge=0, description="Latency of one TP all-reduce.")
    memory_utilization: float = Field(Efficiency.memory_utilization, gt=0, le=1, description="Share of HBM the engine uses.")
    transfer_gb_s: float | None = Field(None, gt=0, description="KV link bandwidth per transfer (GB/s); default: the GPUs' scale-out NICs.")
    transfer_latency_ms: float = Field(0.5, ge=0, description="Fixed latency of one KV hand-off (the decode request's "
                                       "RPC and the last frame), on top of bytes / bandwidth.")
    request_overhead_ms: float = Field(0.0, ge=0, description="Time from a client's send until the gateway queues it on "
                                       "a worker, plus the first token's way back (API, tokenization, admission, RPC).")
    decode_kv_load_steps: int = Field(1, ge=0, le=8, description="Engine steps a decode engine takes to load a received "
                                      "request's KV before scheduling it (vLLM's asynchronous KV load: one step).")
    shared_host: bool = Field(False, description="The prefill and decode engines share one host (e.g. the cores of one "
                              "CPU machine): a step runs slower while the other tier computes, by the profile's measured "
                              "interference points (timing=profile). Off: every engine has its hardware to itself.")
    power_cap_fraction: float = Field(1.0, gt=0, le=1, description="GPU power cap as a share of board power.")
    pue: float = Field(1.2, ge=1, le=3, description="Facility power usage effectiveness.")
    usd_per_kwh: float = Field(0.08, ge=0, description="Electricity price.")
    usd_per_gpu_hour: float | None = Field(None, ge=0, description="GPU rental price; default by accelerator.")
    ttft_slo_ms: float = Field(2000.0, gt=0, description="A request meets its SLO if its TTFT is at most this ...")
    tpot_slo_ms: float = Field(100.0, gt=0, description="... and its time per output token at most this.")
    slo_percentile: float = Field(90.0, gt=0, le=100, description="Percentile at which the search checks the SLOs.")
    router: RouterConfig = Field(default_factory=RouterConfig, description="The live router's settings.")
    autoscale: bool = Field(False, description="Run the live planner every planner.interval_s through the virtual actuator.")
    planner: PlannerConfig = Field(default_factory=PlannerConfig, description="The live planner's settings (its SLO and "
                                   "per-worker power come from this config's SLOs and power model).")
    worker_start_s: float = Field(60.0, ge=0, description="Time a new engine takes to become ready.")
    max_gpus: int | None = Field(None, ge=1, description="GPU budget the planner may not exceed.")
    budgets: Literal["auto", "on", "off"] = Field("auto", description="Admission and per-token charging through "
                                                  "orchestrator.budget; auto: on when a request carries a budget or "
                                                  "`budget` differs from the defaults.")
    budget: BudgetConfig = Field(default_factory=BudgetConfig, description="Tenants' budget defaults, maximums, quotas and prices.")

    @model_validator(mode="after")
    def _check(self) -> SimConfig:
        if self.mode == "colocated" and self.num_prefill:
            raise ValueError("a colocated cluster has no prefill pool: set num_prefill=0")
        if self.mode == "disaggregated" and self.num_prefill < 1:
            raise ValueError("a disaggregated cluster needs num_prefill >= 1 (or mode=colocated)")
        if self.timing == "profile" and not self.profile:
            raise ValueError("timing=profile needs a profile file")
        if self.shared_host and self.timing != "profile":
            raise ValueError("shared_host slows the tiers by a profile's measured interference: it needs timing=profile")
        if self.timing == "coefficients" and self.coefficients is None:
            raise ValueError("timing=coefficients needs six coefficients")
        if self.autoscale and self.mode == "colocated":
            raise ValueError("autoscaling sizes a prefill and a decode pool: it needs mode=disaggregated")
        if self.autoscale and not 50 < self.slo_percentile < 100:
            raise ValueError(f"the planner sizes pools at a percentile in (50, 100), got slo_percentile={self.slo_percentile:g}")
        return self

    @property
    def num_gpus(self) -> int:
        return self.num_prefill * self.prefill_tp + self.num_decode * self.decode_tp

    @property
    def efficiency(self) -> Efficiency:
        return Efficiency(self.compute_efficiency, self.bandwidth_efficiency, self.step_overhead_ms,
                          self.allreduce_latency_us, self.memory_utilization)

    @property
    def power(self) -> PowerConfig:
        return PowerConfig(power_cap_fraction=self.power_cap_fraction, pue=self.pue, usd_per_kwh=self.usd_per_kwh,
                           usd_per_gpu_hour=self.usd_per_gpu_hour)

    def label(self) -> str:
        """Short human name: `h100-sxm 2P(tp1)+6D(tp2)` or `h100-sxm 8C(tp2)`."""
        if self.mode == "colocated":
            return f"{self.accelerator} {self.num_decode}C(tp{self.decode_tp}) seqs{self.max_num_seqs}"
        return (f"{self.accelerator} {self.num_prefill}P(tp{self.prefill_tp})+{self.num_decode}D(tp{self.decode_tp})"
                f" seqs{self.max_num_seqs}")
