"""From a finished run to the numbers an operator compares: latency percentiles, goodput, tokens/MW, $/Mtok.

Definitions (also in docs/simulator.md):
- TTFT: first token time minus arrival (the first token comes out of the prefill).
- TPOT: (finish - first token) / (output tokens - 1), per request with more than one output token.
- goodput_rps: requests meeting both SLOs (TTFT <= ttft_slo_ms and TPOT <= tpot_slo_ms) per second.
- tokens_per_s_per_mw: tokens per second / provisioned facility MW (GPU-seconds / duration x all-in kW per GPU),
  the InferenceMAX definition; input, output and total separately.
- j_per_token: facility joules (per-phase GPU draw + host, times PUE) per total token.
- usd_per_million_tokens: (GPU-hours x price + facility kWh x price) per million total tokens.
- served: finished with at least one token, not refused; refusals are counted by who refused
  (`capacity`: no engine can hold it; `budget`, `quota`: `orchestrator.budget` admission).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from simulations.cluster import SimResult
from simulations.engine import Engine
from simulations.power import PowerModel

PERCENTILES = (50, 90, 99)


def _percentiles(values: list[float], prefix: str) -> dict[str, float]:
    if not values:
        return {f"{prefix}_p{p}": float("nan") for p in PERCENTILES}
    points = np.percentile(np.asarray(values), PERCENTILES)
    return {f"{prefix}_p{p}": float(v) for p, v in zip(PERCENTILES, points)}


def engine_energy_j(engine: Engine, power: PowerModel, end_s: float) -> tuple[float, float]:
    """(GPU joules, GPU-seconds) of one engine over its life."""
    stop = engine.stopped_s if engine.stopped_s >= 0 else end_s
    life = max(stop - engine.started_s, 0.0)
    busy = engine.prefill_busy_s + engine.decode_busy_s
    idle = max(life - busy, 0.0)
    per_gpu = (power.phase_w("prefill") * engine.prefill_busy_s + power.phase_w("decode") * engine.decode_busy_s
               + power.phase_w("idle") * idle)
    return per_gpu * engine.num_gpus, life * engine.num_gpus


def summarize(result: SimResult, power: PowerModel) -> dict[str, Any]:
    """The summary.json fields of one run."""
    config = result.config
    served = [r for r in result.requests if r.served]
    duration = max(result.duration_s - min((r.arrival_s for r in result.requests), default=0.0), 1e-9)
    ttft_ms = [r.ttft_s * 1e3 for r in served]
    tpot_ms = [r.tpot_s * 1e3 for r in served if r.output_tokens > 1]
    good = sum(1 for r in served if r.ttft_s * 1e3 <= config.ttft_slo_ms and r.tpot_s * 1e3 <= config.tpot_slo_ms
               and r.finish_reason != "deadline")  # stopped by its deadline: the cluster was too slow
    input_tokens = sum(r.prompt_tokens for r in served)
    output_tokens = sum(r.output_tokens for r in served)
    gpu_j = gpu_s = 0.0
    tier_j, tier_s = {"prefill": 0.0, "decode": 0.0}, {"prefill": 0.0, "decode": 0.0}
    for engine in result.engines:
        j, s = engine_energy_j(engine, power, result.duration_s)
        gpu_j, gpu_s = gpu_j + j, gpu_s + s
        busy = engine.prefill_busy_s + engine.decode_busy_s
        share = 1.0 if engine.tier == "prefill" else (engine.prefill_busy_s / busy if engine.tier == "colocated" and busy else 0.0)
        for tier, part in (("prefill", share), ("decode", 1.0 - share)):
            tier_j[tier] += j * part
            tier_s[tier] += s * part
    facility_j = power.facility_j(gpu_j, gpu_s)
    avg_gpus = gpu_s / duration
    megawatts = avg_gpus * power.all_in_kw_per_gpu / 1e3
    total = input_tokens + output_tokens
    summary: dict[str, Any] = {
        "label": config.label(),
        "num_requests": len(result.requests),
        "num_served": len(served),
        "num_refused": sum(1 for r in result.requests if r.refusal),
        "refused_by": dict(Counter(r.refusal for r in result.requests if r.refusal)),
        "finish_reasons": dict(Counter(r.finish_reason for r in result.requests if r.finished and not r.refusal)),
        "num_unfinished": sum(1 for r in result.requests if not r.finished),
        "duration_s": duration,
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "input_tokens_per_s": input_tokens / duration,
        "output_tokens_per_s": output_tokens / duration,
        "total_tokens_per_s": total / duration,
        "tokens_per_s_per_mw": total / duration / megawatts if megawatts else 0.0,
        "input_tokens_per_s_per_mw": input_tokens / duration / megawatts if megawatts else 0.0,
        "output_tokens_per_s_per_mw": output_tokens / duration / megawatts if megawatts else 0.0,
        "tokens_per_s_per_gpu": total / duration / avg_gpus if avg_gpus else 0.0,
        "avg_gpus": avg_gpus,
        "provisioned_mw": megawatts,
        "avg_facility_kw": facility_j / duration / 1e3,
        "j_per_token": facility_j / total if total else 0.0,
        "usd_per_million_tokens": power.cost_usd(facility_j, gpu_s) / total * 1e6 if total else 0.0,
        "goodput_rps": good / duration,
        "slo_attainment": good / len(result.requests) if result.requests else 0.0,
        "throughput_rps": len(served) / duration,
        "ttft_slo_ms": config.ttft_slo_ms,
        "tpot_slo_ms": config.tpot_slo_ms,
        "replicas": {"prefill": config.num_prefill, "decode": config.num_decode, "mode": config.mode,
                     "gpus": config.num_gpus},
        "prefill_skipped": sum(1 for r in served if r.prefill_skipped),
        "cached_prompt_tokens": sum(r.cached_tokens for r in served),
        "num_events": result.num_events,
        "configuration": config.model_dump(mode="json"),
    }
    for tier, tokens in (("prefill", input_tokens), ("decode", output_tokens)):  # what orchestrator.budget prices per tier
        facility = power.facility_j(tier_j[tier], tier_s[tier])
        summary[f"{tier}_j_per_token"] = facility / tokens if tokens else 0.0
        summary[f"{tier}_usd_per_token"] = power.cost_usd(facility, tier_s[tier]) / tokens if tokens else 0.0
    summary.update(_percentiles(ttft_ms, "ttft_ms"))
    summary.update(_percentiles(tpot_ms, "tpot_ms"))
    summary.update(_percentiles([(r.finish_s - r.arrival_s) * 1e3 for r in served], "e2e_ms"))
    summary["ttft_ms_at_slo_percentile"] = float(np.percentile(ttft_ms, config.slo_percentile)) if ttft_ms else float("nan")
    summary["tpot_ms_at_slo_percentile"] = float(np.percentile(tpot_ms, config.slo_percentile)) if tpot_ms else 0.0
    # Every request must be served, except those its own budget or its tenant's quota refuses (the
    # contract, not the cluster); a deadline that passes in the cluster is the cluster's miss.
    contract = sum(1 for r in result.requests if r.refusal in ("budget", "quota"))
    summary["meets_slo"] = bool(served) and len(served) + contract == len(result.requests) and (
        "deadline" not in summary["finish_reasons"]) and (
        summary["ttft_ms_at_slo_percentile"] <= config.ttft_slo_ms and summary["tpot_ms_at_slo_percentile"] <= config.tpot_slo_ms)
    summary["budgets_enforced"] = result.budgets is not None
    if result.budgets is not None:
        summary.update(budget_summary(result))
    timeline = result.timeline or [(0.0, config.num_prefill, config.num_decode)]
    summary["replicas_max"] = {"prefill": max(p for _, p, _ in timeline), "decode": max(d for _, _, d in timeline)}
    return summary


def budget_summary(result: SimResult) -> dict[str, Any]:
    """What `orchestrator.budget` did in the run: refusals, thinking caps, what the meters charged."""
    metered = [r for r in result.requests if r.meter is not None]
    budgets = result.budgets
    return {
        "num_budget_refused": budgets.refusals.get("budget", 0),  # type: ignore[union-attr]
        "num_quota_refused": budgets.refusals.get("quota", 0),  # type: ignore[union-attr]
        "refusal_examples": dict(budgets.refusal_examples),  # type: ignore[union-attr]
        "num_thinking_capped": sum(1 for r in metered if r.thinking_capped),
        "thinking_tokens": sum(r.meter.num_thinking_tokens for r in metered),  # type: ignore[attr-defined]
        "thinking_tokens_uncapped": sum(r.thinking_tokens for r in metered),
        "budget_cost_usd": sum(r.cost_usd for r in metered),
        "budget_energy_j": sum(r.energy_j for r in metered),
    }
