"""Power, energy and cost: what a cluster draws per phase and what its tokens cost.

Per GPU, the draw depends on what the engine is doing: prefill steps (compute-bound) run near board
power, decode steps (bandwidth-bound) lower, an idle engine at a floor. Around the GPUs: host, network
and facility overhead, either as the published all-in kW per GPU (InferenceMAX's definition, used for
tokens per MW) or as host watts per GPU times a PUE (used for energy and electricity cost).

A power cap below a phase's draw slows that phase's clocks: with dynamic power ~ f^alpha, the clock
falls to ((cap - idle) / (draw - idle))^(1/alpha). alpha = 2 sits between frequency-only scaling (1)
and voltage-and-frequency scaling (3).
"""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.errors import ConfigError
from simulations.hardware import Accelerator


@dataclass(frozen=True)
class PowerConfig:
    """Per-phase GPU draw as fractions of board power, overheads and prices."""

    prefill_fraction: float = 0.95
    decode_fraction: float = 0.65
    idle_fraction: float = 0.15
    power_cap_fraction: float = 1.0  # of board power
    dvfs_exponent: float = 2.0
    pue: float = 1.2
    host_w_per_gpu: float | None = None  # None: derived from all_in_kw_per_gpu, else 300 W
    usd_per_kwh: float = 0.08
    usd_per_gpu_hour: float | None = None  # None: by accelerator (DEFAULT_GPU_HOUR_USD)

    def __post_init__(self) -> None:
        for name in ("prefill_fraction", "decode_fraction", "idle_fraction", "power_cap_fraction"):
            value = getattr(self, name)
            if not 0 < value <= 1.5:
                raise ConfigError(f"power.{name} must be in (0, 1.5], got {value}")
        if not self.idle_fraction <= self.decode_fraction <= self.prefill_fraction:
            raise ConfigError("power fractions must satisfy idle <= decode <= prefill")
        if self.pue < 1:
            raise ConfigError(f"PUE must be >= 1, got {self.pue}")


# Indicative on-demand cloud prices (USD per GPU hour, late 2025 list prices rounded); override with --gpu-hour-usd.
DEFAULT_GPU_HOUR_USD = {"h100-sxm": 3.0, "h200": 3.8, "b200": 5.5, "gb200": 6.5, "mi300x": 2.6, "a100-sxm": 1.8}


@dataclass(frozen=True)
class PowerModel:
    """Power of one accelerator kind under one `PowerConfig`."""

    accelerator: Accelerator
    config: PowerConfig = PowerConfig()

    @property
    def cap_w(self) -> float:
        return self.accelerator.tdp_w * self.config.power_cap_fraction

    def phase_w(self, phase: str) -> float:
        """GPU draw in watts in `phase` ("prefill", "decode", "idle"), at most the cap."""
        fraction = {"prefill": self.config.prefill_fraction, "decode": self.config.decode_fraction,
                    "idle": self.config.idle_fraction}[phase]
        return min(self.accelerator.tdp_w * fraction, self.cap_w)

    def clock_factor(self, phase: str) -> float:
        """Compute speed of `phase` under the cap relative to uncapped (1.0 when the cap does not bind)."""
        fraction = self.config.prefill_fraction if phase == "prefill" else self.config.decode_fraction
        draw = self.accelerator.tdp_w * fraction
        idle = self.accelerator.tdp_w * self.config.idle_fraction
        if draw <= self.cap_w:
            return 1.0
        return ((self.cap_w - idle) / (draw - idle)) ** (1.0 / self.config.dvfs_exponent)

    @property
    def host_w(self) -> float:
        """Host and network watts per GPU (before PUE)."""
        if self.config.host_w_per_gpu is not None:
            return self.config.host_w_per_gpu
        if self.accelerator.all_in_kw_per_gpu:
            return max(self.accelerator.all_in_kw_per_gpu * 1e3 / self.config.pue - self.accelerator.tdp_w, 0.0)
        return 300.0

    @property
    def all_in_kw_per_gpu(self) -> float:
        """Provisioned facility power per GPU (kW): the published figure, lowered by a power cap."""
        uncapped = self.accelerator.all_in_kw_per_gpu or (self.accelerator.tdp_w + self.host_w) * self.config.pue / 1e3
        return uncapped - (self.accelerator.tdp_w - self.cap_w) * self.config.pue / 1e3

    def facility_j(self, gpu_j: float, gpu_seconds: float) -> float:
        """Facility energy for `gpu_j` joules of GPU draw over `gpu_seconds` GPU-seconds (host added, then PUE)."""
        return (gpu_j + self.host_w * gpu_seconds) * self.config.pue

    @property
    def gpu_hour_usd(self) -> float:
        if self.config.usd_per_gpu_hour is not None:
            return self.config.usd_per_gpu_hour
        return DEFAULT_GPU_HOUR_USD.get(self.accelerator.name, 3.0)

    def cost_usd(self, facility_j: float, gpu_seconds: float) -> float:
        """GPU rental plus electricity."""
        return gpu_seconds / 3600.0 * self.gpu_hour_usd + facility_j / 3.6e6 * self.config.usd_per_kwh
