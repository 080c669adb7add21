"""How many workers each tier needs for a load, from the engine profiles and the latency targets.

Pure computations (no state, no I/O). Both tiers plan on distributions, not means.

Prefill (the router sends each prompt to the worker with the least queued prompt work, so the pool
behaves like one queue served by n workers: M/G/n):
- service time S(L) = k * (a + b*L + c*L^2) ms for a prompt of L tokens (k: correction factor);
- offered load A = lam * E[S] (lam = rate + backlog / drain_s), utilization rho = A / n;
- probability of waiting: Erlang C(n, A); squared coefficient of variation cs2 = E[S^2] / E[S]^2 - 1;
- wait tail (Allen-Cunneen: M/M/n scaled by (1 + cs2) / 2): P(W > t) = C * exp(-(n/E[S] - lam) * t * 2 / (1 + cs2)),
  so W_p = ln(C / (1 - p)) * (1 + cs2) / (2 * (n/E[S] - lam)) when C > 1 - p, else 0;
- TTFT_p = W_p + S(L_p), L_p the prompt length at the percentile. Because S grows faster than L and
  a skewed distribution has a large cs2, it needs more workers than its mean length says.

Decode (continuous batching, Little's law):
- a decoding request's context averages E[P] + E[O^2] / (2 E[O]) (long outputs hold their slot longer);
- per worker, tokens/s r = (rate + backlog / drain_s) * E[O] / n; step t(b) = k * (a + B*b*ctx + c*b) ms;
  Little: b = r * t(b) / 1000, so b = r*k*a / (1000 - r*k*(B*ctx + c)) (unstable when the denominator <= 0);
- the batch varies (Poisson): b_p = b + z_p * sqrt(b); ITL_p = t(b_p);
- KV: b_p * ctx tokens must fit in max_utilization of the engine's KV capacity.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from orchestrator.planner.observations import LengthDistribution
from orchestrator.profiles import EngineProfile

MAX_SEARCH_REPLICAS = 4096  # the sizing search stops here (far above any max_replicas)


@dataclass(frozen=True)
class PrefillEstimate:
    """The prefill tier at `num_replicas` workers under a load."""

    num_replicas: int
    utilization: float  # fraction of time each worker computes
    wait_ms: float  # queueing delay at the percentile
    service_ms: float  # compute time of the percentile prompt
    ttft_ms: float  # wait_ms + service_ms (inf when overloaded)


@dataclass(frozen=True)
class DecodeEstimate:
    """The decode tier at `num_replicas` workers under a load."""

    num_replicas: int
    batch: float  # mean requests per worker batch
    batch_tail: float  # batch at the percentile
    context_tokens: float  # mean context of a decoding request
    itl_ms: float  # step time at the tail batch (inf when overloaded)
    kv_fraction: float  # KV capacity the tail batch needs (0 when the profile gives no capacity)


@dataclass(frozen=True)
class Sizing:
    """The smallest replica count that meets the target, with the estimates behind it."""

    num_replicas: int
    estimate: PrefillEstimate | DecodeEstimate
    meets_slo: bool  # False: no count meets the SLO, sized for utilization only
    limit: str  # what set the count: "slo", "utilization", "kv", "idle"


def compute_prefill_estimate(
    num_replicas: int, rate_per_s: float, prompts: LengthDistribution, profile: EngineProfile,
    percentile: float, correction: float = 1.0,
) -> PrefillEstimate:
    """Predict utilization and TTFT at `percentile` (0..100) of `num_replicas` prefill workers.

    Returns an estimate whose ttft_ms is inf when the workers cannot keep up. Raises ValueError when
    num_replicas < 1.
    """
    if num_replicas < 1:
        raise ValueError("num_replicas must be >= 1")
    return _PrefillLoad.of(prompts, profile, percentile, correction).at(num_replicas, rate_per_s)


@dataclass(frozen=True)
class _PrefillLoad:
    """Service-time moments of a prompt distribution on one prefill engine (ms, ms^2)."""

    mean_ms: float
    second_ms2: float
    tail_ms: float  # service time of the percentile prompt
    p: float  # percentile as a probability

    @classmethod
    def of(cls, prompts: LengthDistribution, profile: EngineProfile, percentile: float,
           correction: float) -> _PrefillLoad:
        service = correction * np.array([profile.predict_prefill_ms([round(v)]) for v in prompts.values])
        probs = np.asarray(prompts.probabilities)
        p = percentile / 100.0
        tail = correction * profile.predict_prefill_ms([round(prompts.quantile(p))])
        return cls(float(service @ probs), float(service**2 @ probs), tail, p)

    def at(self, num_replicas: int, rate_per_s: float) -> PrefillEstimate:
        lam_per_ms = rate_per_s / 1000.0
        offered = lam_per_ms * self.mean_ms
        rho = offered / num_replicas
        if rho >= 1.0:
            return PrefillEstimate(num_replicas, rho, math.inf, self.tail_ms, math.inf)
        wait_probability = compute_erlang_c(num_replicas, offered)
        if wait_probability <= 1.0 - self.p:
            return PrefillEstimate(num_replicas, rho, 0.0, self.tail_ms, self.tail_ms)
        cs2 = max(self.second_ms2 / self.mean_ms**2 - 1.0, 0.0)
        drain_per_ms = num_replicas / self.mean_ms - lam_per_ms
        wait = math.log(wait_probability / (1.0 - self.p)) * (1.0 + cs2) / (2.0 * drain_per_ms)
        return PrefillEstimate(num_replicas, rho, wait, self.tail_ms, wait + self.tail_ms)


def compute_erlang_c(servers: int, offered_load: float) -> float:
    """Probability that an arrival waits in an M/M/`servers` queue with `offered_load` erlangs (< servers).

    Erlang B by its stable recursion, then C = B / (1 - rho * (1 - B)).
    """
    blocking = 1.0
    for k in range(1, servers + 1):
        blocking = offered_load * blocking / (k + offered_load * blocking)
    rho = offered_load / servers
    return blocking / (1.0 - rho * (1.0 - blocking))


def compute_prefill_replicas(
    rate_per_s: float, prompts: LengthDistribution, profile: EngineProfile, ttft_ms: float,
    percentile: float, max_utilization: float, correction: float = 1.0,
) -> Sizing:
    """The fewest prefill workers whose TTFT at `percentile` meets `ttft_ms` at utilization <= max_utilization.

    Returns the sizing; 0 workers when the rate is 0. When even an idle worker misses the target (the
    tail prompt alone is too slow), the count is sized for utilization and `meets_slo` is False.
    """
    if rate_per_s <= 0:
        return Sizing(0, PrefillEstimate(0, 0.0, 0.0, 0.0, 0.0), True, "idle")
    load = _PrefillLoad.of(prompts, profile, percentile, correction)
    busy = max(1, math.ceil(rate_per_s * load.mean_ms / 1000.0 / max_utilization))
    for n in range(busy, MAX_SEARCH_REPLICAS + 1):
        est = load.at(n, rate_per_s)
        if est.ttft_ms <= ttft_ms:
            return Sizing(n, est, True, "slo" if n > busy else "utilization")
        if est.wait_ms == 0.0:  # nothing queues any more: more workers cannot help
            return Sizing(busy, load.at(busy, rate_per_s), False, "utilization")
    return Sizing(busy, load.at(busy, rate_per_s), False, "utilization")


def compute_decode_context(prompts: LengthDistribution, outputs: LengthDistribution) -> float:
    """Mean context tokens of a request seen in a decode batch: E[P] + E[O^2] / (2 E[O])."""
    mean_out = max(outputs.mean, 1.0)
    return prompts.mean + outputs.second_moment / (2.0 * mean_out)


def compute_decode_estimate(
    num_replicas: int, rate_per_s: float, prompts: LengthDistribution, outputs: LengthDistribution,
    profile: EngineProfile, percentile: float, correction: float = 1.0,
) -> DecodeEstimate:
    """Predict batch, ITL at `percentile` (0..100) and KV need of `num_replicas` decode workers.

    Returns an estimate whose itl_ms is inf when the workers cannot keep up. Raises ValueError when
    num_replicas < 1.
    """
    if num_replicas < 1:
        raise ValueError("num_replicas must be >= 1")
    ctx = compute_decode_context(prompts, outputs)
    k = profile.decode_coefficients
    tokens_per_ms = rate_per_s * outputs.mean / num_replicas / 1000.0
    denominator = 1.0 - tokens_per_ms * correction * (k.b_ms_per_context_token * ctx + k.c_ms_per_request)
    if denominator <= 0:
        return DecodeEstimate(num_replicas, math.inf, math.inf, ctx, math.inf, math.inf)
    batch = tokens_per_ms * correction * k.a_ms / denominator
    z = NormalDist().inv_cdf(percentile / 100.0)
    batch_tail = batch + z * math.sqrt(batch) if batch > 0 else 0.0
    tail_requests = max(1, math.ceil(batch_tail))
    itl = correction * profile.predict_decode_step_ms(tail_requests, round(tail_requests * ctx))
    capacity = profile.kv_capacity_tokens
    kv_fraction = batch_tail * ctx / capacity if capacity else 0.0
    return DecodeEstimate(num_replicas, batch, batch_tail, ctx, itl, kv_fraction)


def compute_decode_replicas(
    rate_per_s: float, prompts: LengthDistribution, outputs: LengthDistribution, profile: EngineProfile,
    itl_ms: float, percentile: float, max_utilization: float, correction: float = 1.0,
) -> Sizing:
    """The fewest decode workers whose ITL at `percentile` meets `itl_ms` and whose tail batch fits in
    max_utilization of the KV cache.

    Returns the sizing; 0 workers when the rate is 0. When even one request per worker misses the
    target (a step itself is too slow), the count is the fewest that keep up and fit the KV cache, and
    `meets_slo` is False.
    """
    if rate_per_s <= 0:
        return Sizing(0, DecodeEstimate(0, 0.0, 0.0, 0.0, 0.0, 0.0), True, "idle")
    first_fit: Sizing | None = None
    limit = "utilization"
    for n in range(1, MAX_SEARCH_REPLICAS + 1):
        est = compute_decode_estimate(n, rate_per_s, prompts, outputs, profile, percentile, correction)
        if not math.isfinite(est.itl_ms) or est.kv_fraction > max_utilization:
            limit = "kv" if math.isfinite(est.itl_ms) else "utilization"
            continue
        if first_fit is None:
            first_fit = Sizing(n, est, False, limit)
        if est.itl_ms <= itl_ms:
            return Sizing(n, est, True, "slo" if n > first_fit.num_replicas else limit)
        if est.batch_tail <= 1.0:  # one request per worker already: more workers cannot help
            return first_fit
    est = compute_decode_estimate(MAX_SEARCH_REPLICAS, rate_per_s, prompts, outputs, profile, percentile, correction)
    return first_fit or Sizing(MAX_SEARCH_REPLICAS, est, False, limit)
