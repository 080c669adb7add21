"""Arrival-rate forecasters on synthetic series."""

import numpy as np
import pytest

from orchestrator.errors import ConfigError
from orchestrator.planner import ConstantForecaster, EwmaForecaster, ForecastState, HoltForecaster, make_forecaster
from planner_scenarios import make_config


def run(forecaster, series, interval_s=10.0):
    state = ForecastState()
    for i, value in enumerate(series):
        state = forecaster.observe(state, i * interval_s, value)
    return state


def test_ewma_smooths_noise_and_follows_a_step():
    rng = np.random.default_rng(0)
    noisy = 5.0 + rng.normal(0, 1.0, 200)
    ewma = EwmaForecaster(10.0, alpha=0.2)
    assert ewma.predict(run(ewma, noisy), 0) == pytest.approx(5.0, abs=0.6)
    step = [1.0] * 20 + [9.0] * 20
    after_one = ewma.predict(run(ewma, step[:21]), 0)
    assert after_one == pytest.approx(1.0 + 0.2 * 8.0)
    assert ewma.predict(run(ewma, step), 0) == pytest.approx(9.0, abs=0.1)
    assert ewma.predict(run(ewma, step), 300) == ewma.predict(run(ewma, step), 0)  # no trend


def test_holt_extrapolates_a_ramp_and_ewma_lags():
    ramp = [0.5 * i for i in range(30)]  # +0.05 req/s per second
    holt = HoltForecaster(10.0, alpha=0.5, beta=0.3)
    ewma = EwmaForecaster(10.0, alpha=0.5)
    truth_in_30s = 0.5 * (29 + 3)
    assert holt.predict(run(holt, ramp), 30.0) == pytest.approx(truth_in_30s, rel=0.02)
    assert ewma.predict(run(ewma, ramp), 30.0) < truth_in_30s - 1.5
    assert run(holt, ramp).trend_per_s == pytest.approx(0.05, rel=0.02)


def test_holt_never_forecasts_a_negative_rate():
    holt = HoltForecaster(10.0, alpha=0.8, beta=0.8)
    state = run(holt, [10.0, 6.0, 2.0, 0.0])
    assert state.trend_per_s < 0 and holt.predict(state, 600.0) == 0.0


def test_irregular_intervals_weigh_by_elapsed_time():
    ewma = EwmaForecaster(10.0, alpha=0.5)
    one_long = ewma.observe(ewma.observe(ForecastState(), 0.0, 0.0), 20.0, 8.0)
    two_short = ewma.observe(ewma.observe(ewma.observe(ForecastState(), 0.0, 0.0), 10.0, 8.0), 20.0, 8.0)
    assert one_long.level == pytest.approx(two_short.level)


def test_constant_and_factory():
    assert ConstantForecaster(10.0).predict(run(ConstantForecaster(10.0), [1, 2, 7]), 100) == 7
    assert isinstance(make_forecaster(make_config(forecaster="holt")), HoltForecaster)
    assert isinstance(make_forecaster(make_config(forecaster="ewma")), EwmaForecaster)
    with pytest.raises(ConfigError):
        EwmaForecaster(10.0, alpha=0.0)
