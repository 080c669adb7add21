"""Reduce outcomes to the numbers a benchmark reports. Pure functions, no I/O.

Percentiles are numpy's default (linear interpolation between closest ranks). Throughput divides by
the run's wall time, from the first send to the last stream's end. Goodput counts successful requests
that met every SLO given (TTFT and/or TPOT), per second of the same wall time.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pdserve.bench.outcome import Outcome

PERCENTILES = (50, 90, 99)
USAGE_TIMES = ("queue_ms", "prefill_ms", "transfer_ms", "decode_ms")
USAGE_FLAGS = ("kv_recomputed", "prefill_skipped")
USAGE_SUMS = ("prompt_tokens", "cached_tokens", "thinking_tokens", "output_tokens", "energy_j", "cost_usd")


@dataclass(frozen=True)
class Slo:
    """Latency targets for goodput; None: not a condition."""

    ttft_ms: float | None = None
    tpot_ms: float | None = None

    @property
    def set(self) -> bool:
        return self.ttft_ms is not None or self.tpot_ms is not None

    def met(self, outcome: Outcome) -> bool:
        if not outcome.ok:
            return False
        if self.ttft_ms is not None and (outcome.ttft_ms is None or outcome.ttft_ms > self.ttft_ms):
            return False
        tpot_ms = outcome.tpot_ms
        return self.tpot_ms is None or tpot_ms is None or tpot_ms <= self.tpot_ms


def distribution(values: Iterable[float | None]) -> dict[str, float | int | None]:
    """count, mean, min, p50, p90, p99, max of the values that are not None (all None when empty)."""
    data = np.asarray([v for v in values if v is not None], dtype=float)
    keys = ["mean", "min", *(f"p{p}" for p in PERCENTILES), "max"]
    if data.size == 0:
        return {"count": 0, **dict.fromkeys(keys)}
    stats = [data.mean(), data.min(), *np.percentile(data, PERCENTILES), data.max()]
    return {"count": int(data.size), **{k: round(float(v), 3) for k, v in zip(keys, stats)}}


def compute_summary(outcomes: Sequence[Outcome], duration_s: float, slo: Slo = Slo(),
                    num_planned: int | None = None) -> dict[str, Any]:
    """The `summary` object of the JSON report (see docs/bench.md for every field)."""
    succeeded = [o for o in outcomes if o.ok]
    return {
        "num_planned": len(outcomes) if num_planned is None else num_planned,
        "num_sent": len(outcomes),
        "num_succeeded": len(succeeded),
        "num_failed": len(outcomes) - len(succeeded),
        "duration_s": round(duration_s, 3),
        "throughput": compute_throughput(succeeded, duration_s),
        "ttft_ms": distribution(o.ttft_ms for o in succeeded),
        "tpot_ms": distribution(o.tpot_ms for o in succeeded),
        "itl_ms": distribution(gap for o in succeeded for gap in o.itl_ms),
        "gap_ms": distribution(gap for o in succeeded for gap in o.gaps_ms),
        "longest_gap_ms": distribution(max(o.gaps_ms, default=None) for o in succeeded),
        "e2e_ms": distribution(o.e2e_ms for o in succeeded),
        "goodput": compute_goodput(outcomes, duration_s, slo),
        "failures": compute_failures(outcomes),
        "finish_reasons": dict(Counter(o.finish_reason or "none" for o in succeeded)),
        "dispatch_lag_ms": distribution(o.dispatch_lag_ms for o in outcomes),
        "output_length_mismatches": sum(o.output_tokens != o.expected_output_tokens for o in succeeded),
        "usage": compute_usage(succeeded),
    }


def compute_throughput(succeeded: Sequence[Outcome], duration_s: float) -> dict[str, float | None]:
    """Requests, output tokens, prompt tokens and all tokens per second of wall time."""
    if duration_s <= 0:
        return dict.fromkeys(("requests_per_s", "output_tokens_per_s", "prompt_tokens_per_s", "total_tokens_per_s"))
    output = sum(o.output_tokens for o in succeeded)
    prompt = sum(o.prompt_tokens for o in succeeded)
    return {
        "requests_per_s": round(len(succeeded) / duration_s, 4),
        "output_tokens_per_s": round(output / duration_s, 3),
        "prompt_tokens_per_s": round(prompt / duration_s, 3),
        "total_tokens_per_s": round((output + prompt) / duration_s, 3),
    }


def compute_goodput(outcomes: Sequence[Outcome], duration_s: float, slo: Slo) -> dict[str, Any]:
    """Requests meeting the SLOs: per second and as a fraction of those sent (None without an SLO)."""
    if not slo.set:
        return {"slo_ttft_ms": None, "slo_tpot_ms": None, "requests_per_s": None, "fraction": None}
    met = sum(slo.met(o) for o in outcomes)
    return {
        "slo_ttft_ms": slo.ttft_ms, "slo_tpot_ms": slo.tpot_ms,
        "requests_per_s": round(met / duration_s, 4) if duration_s > 0 else None,
        "fraction": round(met / len(outcomes), 4) if outcomes else None,
    }


def compute_failures(outcomes: Sequence[Outcome]) -> dict[str, dict[str, Any]]:
    """Failures by reason: how many, and the first message seen for each."""
    failures: dict[str, dict[str, Any]] = {}
    for outcome in outcomes:
        if outcome.ok:
            continue
        entry = failures.setdefault(outcome.error_reason, {"count": 0, "example": outcome.error_message})
        entry["count"] += 1
    return failures


def compute_usage(succeeded: Sequence[Outcome]) -> dict[str, Any]:
    """The servers' own usage accounting: per-phase time distributions, flag counts, sums."""
    usages = [o.usage for o in succeeded if o.usage]
    result: dict[str, Any] = {"num_reported": len(usages)}
    for key in USAGE_TIMES:
        result[key] = distribution(u.get(key) for u in usages)
    for key in USAGE_FLAGS:
        result[key] = sum(bool(u.get(key)) for u in usages)
    for key in USAGE_SUMS:
        result[f"{key}_total"] = round(sum(float(u.get(key) or 0) for u in usages), 6)
    return result
