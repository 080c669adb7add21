"""Arrival processes: when each request of an open-loop benchmark is sent.

Pure functions of their arguments and a seed. Times are seconds from the start of the run.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def poisson_arrivals_s(rate_per_s: float, num_requests: int, seed: int) -> np.ndarray:
    """`num_requests` arrival times of a Poisson process of `rate_per_s`; the first one after a gap too."""
    if rate_per_s <= 0:
        raise ValueError(f"rate must be > 0 requests/s, got {rate_per_s}")
    rng = np.random.default_rng([seed, 0xA11])
    return np.cumsum(rng.exponential(1.0 / rate_per_s, size=num_requests))


def piecewise_poisson_arrivals_s(rates_per_s: Sequence[float], phase_s: float, max_requests: int,
                                 seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Poisson arrivals whose rate is `rates_per_s[i]` during phase i (`phase_s` long each).

    The process is memoryless, so restarting the exponential gaps at each phase boundary is exact.
    Returns (arrival times, phase index of each), at most `max_requests` of them.
    """
    if phase_s <= 0:
        raise ValueError(f"phase length must be > 0 s, got {phase_s}")
    rng = np.random.default_rng([seed, 0xA12])
    times: list[float] = []
    phases: list[int] = []
    for phase, rate in enumerate(rates_per_s):
        if rate <= 0:
            raise ValueError(f"phase {phase} rate must be > 0 requests/s, got {rate}")
        start_s, end_s = phase * phase_s, (phase + 1) * phase_s
        t = start_s + rng.exponential(1.0 / rate)
        while t < end_s and len(times) < max_requests:
            times.append(t)
            phases.append(phase)
            t += rng.exponential(1.0 / rate)
    return np.asarray(times, dtype=float), np.asarray(phases, dtype=int)


def rescale_trace_arrivals_s(arrivals_s: Sequence[float], *, time_scale: float | None = None,
                             rate_per_s: float | None = None) -> np.ndarray:
    """A trace's timestamps shifted to start at 0, then stretched.

    time_scale: multiply every gap (0.5 replays twice as fast). rate_per_s: stretch so that the mean
    rate over these arrivals is this. At most one of the two; neither keeps the trace's own pace.
    """
    if time_scale is not None and rate_per_s is not None:
        raise ValueError("give a time scale or a rate for a trace, not both")
    times = np.asarray(arrivals_s, dtype=float)
    if times.size == 0:
        return times
    times = times - times.min()
    if time_scale is not None:
        if time_scale <= 0:
            raise ValueError(f"time scale must be > 0, got {time_scale}")
        return times * time_scale
    if rate_per_s is not None:
        if rate_per_s <= 0:
            raise ValueError(f"rate must be > 0 requests/s, got {rate_per_s}")
        own_rate = mean_rate_per_s(times)
        if own_rate == float("inf"):
            return times  # all at one instant: nothing to stretch
        return times * (own_rate / rate_per_s)
    return times


def mean_rate_per_s(arrivals_s: Sequence[float]) -> float:
    """Requests per second between the first and last arrival (inf when they all coincide)."""
    times = np.asarray(arrivals_s, dtype=float)
    if times.size < 2:
        return float("nan")
    span_s = float(times.max() - times.min())
    return float("inf") if span_s == 0 else (times.size - 1) / span_s
