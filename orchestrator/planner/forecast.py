"""Load forecasting: where the arrival rate will be when a worker started now is ready.

Every forecaster is pure: `observe(state, t_s, value) -> new state` and `predict(state, horizon_s)`.
The state is a small frozen dataclass the planner keeps in its own state. Smoothing constants are per
*planning interval*; observations at irregular times are handled by scaling them with the elapsed time
(alpha_eff = 1 - (1 - alpha)^(dt / interval)), so the simulator and the live loop agree.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, replace

from orchestrator.config.planner import PlannerConfig
from orchestrator.errors import ConfigError


@dataclass(frozen=True)
class ForecastState:
    """Smoothed level (same unit as the series), trend (unit per second), time of the last observation."""

    level: float = 0.0
    trend_per_s: float = 0.0
    last_s: float | None = None


class BaseForecaster(ABC):
    """A one-series forecaster. Pure: the state goes in and comes out."""

    def __init__(self, interval_s: float) -> None:
        if interval_s <= 0:
            raise ConfigError("forecaster interval_s must be > 0")
        self.interval_s = interval_s

    @abstractmethod
    def observe(self, state: ForecastState, t_s: float, value: float) -> ForecastState:
        """Fold the value observed at time `t_s` into the state. Returns the new state."""

    def predict(self, state: ForecastState, horizon_s: float) -> float:
        """The value expected `horizon_s` after the last observation (never negative)."""
        return max(0.0, state.level + state.trend_per_s * horizon_s)

    def _weight(self, alpha: float, dt_s: float) -> float:
        return 1.0 - (1.0 - alpha) ** max(dt_s / self.interval_s, 0.0)


class ConstantForecaster(BaseForecaster):
    """The last value, unchanged (no smoothing, no trend)."""

    def observe(self, state: ForecastState, t_s: float, value: float) -> ForecastState:
        return ForecastState(level=value, trend_per_s=0.0, last_s=t_s)


class EwmaForecaster(BaseForecaster):
    """Exponentially weighted moving average: level += alpha * (value - level); no trend."""

    def __init__(self, interval_s: float, alpha: float) -> None:
        super().__init__(interval_s)
        if not 0 < alpha <= 1:
            raise ConfigError(f"ewma alpha must lie in (0, 1], got {alpha}")
        self.alpha = alpha

    def observe(self, state: ForecastState, t_s: float, value: float) -> ForecastState:
        if state.last_s is None:
            return ForecastState(level=value, last_s=t_s)
        weight = self._weight(self.alpha, t_s - state.last_s)
        return ForecastState(level=state.level + weight * (value - state.level), last_s=t_s)


class HoltForecaster(BaseForecaster):
    """Holt's linear trend (double exponential smoothing) at irregular times.

    level_t = a * value + (1 - a) * (level + trend * dt);  trend_t = b * (level_t - level) / dt + (1 - b) * trend.
    """

    def __init__(self, interval_s: float, alpha: float, beta: float) -> None:
        super().__init__(interval_s)
        if not (0 < alpha <= 1 and 0 < beta <= 1):
            raise ConfigError(f"holt alpha and beta must lie in (0, 1], got {alpha}, {beta}")
        self.alpha = alpha
        self.beta = beta

    def observe(self, state: ForecastState, t_s: float, value: float) -> ForecastState:
        if state.last_s is None:
            return ForecastState(level=value, trend_per_s=0.0, last_s=t_s)
        dt_s = t_s - state.last_s
        if dt_s <= 0:  # same instant: refresh the level only
            return replace(state, level=state.level + self.alpha * (value - state.level))
        a = self._weight(self.alpha, dt_s)
        b = self._weight(self.beta, dt_s)
        level = a * value + (1 - a) * (state.level + state.trend_per_s * dt_s)
        trend = b * (level - state.level) / dt_s + (1 - b) * state.trend_per_s
        return ForecastState(level=level, trend_per_s=trend if math.isfinite(trend) else 0.0, last_s=t_s)


def make_forecaster(config: PlannerConfig) -> BaseForecaster:
    """The forecaster `config.forecaster` names, with the config's constants."""
    if config.forecaster == "constant":
        return ConstantForecaster(config.interval_s)
    if config.forecaster == "ewma":
        return EwmaForecaster(config.interval_s, config.ewma_alpha)
    return HoltForecaster(config.interval_s, config.holt_alpha, config.holt_beta)
