import numpy as np
import pytest

from pdserve.bench import arrivals


def test_poisson_arrivals_have_the_asked_rate_and_exponential_gaps():
    times = arrivals.poisson_arrivals_s(rate_per_s=5.0, num_requests=20000, seed=1)
    gaps = np.diff(np.concatenate([[0.0], times]))
    assert np.all(gaps > 0)
    assert gaps.mean() == pytest.approx(0.2, rel=0.03)
    # exponential: std equals mean, and P(gap > mean) = e^-1
    assert gaps.std() == pytest.approx(gaps.mean(), rel=0.05)
    assert np.mean(gaps > 0.2) == pytest.approx(np.exp(-1), abs=0.015)


def test_poisson_arrivals_are_seeded():
    a = arrivals.poisson_arrivals_s(2.0, 50, seed=7)
    assert np.array_equal(a, arrivals.poisson_arrivals_s(2.0, 50, seed=7))
    assert not np.array_equal(a, arrivals.poisson_arrivals_s(2.0, 50, seed=8))


def test_poisson_refuses_non_positive_rate():
    with pytest.raises(ValueError):
        arrivals.poisson_arrivals_s(0, 10, seed=0)


def test_piecewise_arrivals_follow_each_phase_rate():
    rates = (2.0, 20.0, 5.0)
    times, phases = arrivals.piecewise_poisson_arrivals_s(rates, phase_s=200.0, max_requests=10**6, seed=3)
    assert np.all(np.diff(times) > 0)
    for phase, rate in enumerate(rates):
        in_phase = times[phases == phase]
        assert np.all((in_phase >= phase * 200) & (in_phase < (phase + 1) * 200))
        assert len(in_phase) / 200.0 == pytest.approx(rate, rel=0.1)


def test_piecewise_arrivals_stop_at_max_requests():
    times, phases = arrivals.piecewise_poisson_arrivals_s((10.0, 10.0), 100.0, max_requests=30, seed=0)
    assert len(times) == len(phases) == 30


def test_trace_rescaling():
    raw = [100.0, 101.0, 103.0, 104.0]  # 3 gaps over 4 s: 0.75 req/s
    assert list(arrivals.rescale_trace_arrivals_s(raw)) == [0.0, 1.0, 3.0, 4.0]
    assert list(arrivals.rescale_trace_arrivals_s(raw, time_scale=0.5)) == [0.0, 0.5, 1.5, 2.0]
    faster = arrivals.rescale_trace_arrivals_s(raw, rate_per_s=3.0)
    assert arrivals.mean_rate_per_s(faster) == pytest.approx(3.0)
    assert list(faster) == pytest.approx([0.0, 0.25, 0.75, 1.0])
    with pytest.raises(ValueError):
        arrivals.rescale_trace_arrivals_s(raw, time_scale=1.0, rate_per_s=1.0)
