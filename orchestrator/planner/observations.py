"""What the planner sees: length distributions and one interval's observations of the cluster.

Lengths are distributions, not means: the planner reads quantiles (tail prompts set the TTFT) and
moments (a prompt's cost grows faster than its length; long outputs hold decode slots longer). A
`LengthDistribution` is a discrete distribution (values with probabilities) built from samples,
quantiles or a histogram. Pure data; no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

QUANTILE_POINTS = 64  # probability masses a distribution given as quantiles is discretized into


@dataclass(frozen=True)
class LengthDistribution:
    """Token lengths as a discrete distribution: `values[i]` occurs with probability `probabilities[i]`."""

    values: tuple[float, ...]
    probabilities: tuple[float, ...]

    def __post_init__(self) -> None:
        if not self.values or len(self.values) != len(self.probabilities):
            raise ValueError("a length distribution needs as many probabilities as values, and at least one")
        if min(self.values) < 0 or min(self.probabilities) < 0:
            raise ValueError("lengths and probabilities must be >= 0")
        if abs(sum(self.probabilities) - 1.0) > 1e-6:
            raise ValueError(f"probabilities must sum to 1, got {sum(self.probabilities):.6f}")

    @classmethod
    def constant(cls, tokens: float) -> LengthDistribution:
        """Every request has `tokens` tokens."""
        return cls((float(tokens),), (1.0,))

    @classmethod
    def from_samples(cls, samples: Sequence[float]) -> LengthDistribution:
        """The empirical distribution of observed lengths. Raises ValueError when `samples` is empty."""
        if len(samples) == 0:
            raise ValueError("no samples")
        values, counts = np.unique(np.asarray(samples, dtype=float), return_counts=True)
        return cls(tuple(values.tolist()), tuple((counts / counts.sum()).tolist()))

    @classmethod
    def from_histogram(cls, upper_bounds: Sequence[float], counts: Sequence[float]) -> LengthDistribution:
        """From a cumulative-free histogram: `counts[i]` lengths in (upper_bounds[i-1], upper_bounds[i]].

        Each bucket is represented by its midpoint (the first bucket starts at 0), the way a Prometheus
        histogram is read. Raises ValueError on mismatched or empty input.
        """
        if len(upper_bounds) != len(counts) or sum(counts) <= 0:
            raise ValueError("a histogram needs one count per bucket and a positive total")
        lows = [0.0, *upper_bounds[:-1]]
        mids = [(lo + hi) / 2.0 for lo, hi in zip(lows, upper_bounds, strict=True)]
        total = float(sum(counts))
        pairs = [(m, c / total) for m, c in zip(mids, counts, strict=True) if c > 0]
        return cls(tuple(m for m, _ in pairs), tuple(p for _, p in pairs))

    @classmethod
    def from_quantiles(cls, quantiles: Mapping[float, float]) -> LengthDistribution:
        """From quantiles {probability in [0, 1]: length}, e.g. {0.5: 300, 0.9: 1800, 0.99: 4000}.

        The quantile function is interpolated linearly between the given quantiles and held flat below
        the lowest and above the highest (conservative below, optimistic above: give a high quantile),
        then discretized into QUANTILE_POINTS equal masses. Raises ValueError when the quantiles decrease.
        """
        if not quantiles:
            raise ValueError("no quantiles")
        probs = sorted(quantiles)
        if probs[0] < 0 or probs[-1] > 1:
            raise ValueError("quantile probabilities must lie in [0, 1]")
        lengths = [quantiles[p] for p in probs]
        if any(b < a for a, b in zip(lengths, lengths[1:], strict=False)):
            raise ValueError("quantile lengths must not decrease with the probability")
        if probs[0] > 0:
            probs, lengths = [0.0, *probs], [lengths[0], *lengths]
        mids = (np.arange(QUANTILE_POINTS) + 0.5) / QUANTILE_POINTS
        values = np.interp(mids, probs, lengths)
        return cls(tuple(values.tolist()), tuple([1.0 / QUANTILE_POINTS] * QUANTILE_POINTS))

    @property
    def mean(self) -> float:
        return float(np.dot(self.values, self.probabilities))

    @property
    def second_moment(self) -> float:
        """E[length^2]."""
        return float(np.dot(np.square(self.values), self.probabilities))

    def quantile(self, q: float) -> float:
        """The smallest length L with P(length <= L) >= q, for q in (0, 1]."""
        order = np.argsort(self.values)
        cdf = np.cumsum(np.asarray(self.probabilities)[order])
        index = int(np.searchsorted(cdf, q - 1e-12))
        return float(np.asarray(self.values)[order][min(index, len(order) - 1)])

    def scaled(self, factor: float) -> LengthDistribution:
        """Every length times `factor` (for example the part of a prompt not found in a prefix cache)."""
        return LengthDistribution(tuple(v * factor for v in self.values), self.probabilities)


@dataclass(frozen=True)
class Observations:
    """One planning interval as the controller (or the simulator) measured it.

    Rates and lengths describe the requests that arrived during the interval; latencies are the
    observed percentile (`SLOConfig.percentile`) over requests finished during it, None when too few.
    """

    now_s: float
    arrival_rate_per_s: float
    prompt_tokens: LengthDistribution
    output_tokens: LengthDistribution
    num_prefill: int  # workers ready in the prefill pool (not draining)
    num_decode: int
    prefill_queue_depth: int = 0  # requests waiting for a prefill worker, whole pool
    decode_queue_depth: int = 0  # requests waiting for a decode slot, whole pool
    decode_kv_usage: float | None = None  # fraction of the decode pool's KV cache in use, 0..1
    prefill_ttft_ms: float | None = None
    decode_itl_ms: float | None = None
    prefill_cached_fraction: float = 0.0  # share of prompt tokens served from a prefix cache (not computed)

    def __post_init__(self) -> None:
        if self.arrival_rate_per_s < 0 or self.num_prefill < 0 or self.num_decode < 0:
            raise ValueError("rates and replica counts must be >= 0")
        if not 0.0 <= self.prefill_cached_fraction < 1.0:
            raise ValueError("prefill_cached_fraction must lie in [0, 1)")
        if self.decode_kv_usage is not None and not 0.0 <= self.decode_kv_usage <= 1.0:
            raise ValueError("decode_kv_usage must lie in [0, 1]")
