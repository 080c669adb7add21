"""Capacity search (`pdserve plan`): which cluster serves a workload within its SLOs for the fewest MW.

1. Enumerate candidates: accelerator x mode x TP per tier x prefill:decode ratio x batch limit x
   cluster size (GPUs), within the GPU and power budgets.
2. Simulate each on the same workload (in process with `workers=0`, else as Ray tasks).
3. Feasible candidates meet the TTFT and TPOT SLOs at the chosen percentile and serve every request;
   the best maximises tokens/s per MW (for a fixed workload: the smallest provisioned power).
4. The Pareto frontier: candidates no other beats on both tokens/MW (higher) and latency (lower).
5. The scaling curve: for the best shape, the fewest replicas meeting the SLOs at 1x, 2x, 5x, 10x the rate.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from orchestrator.errors import ConfigError
from simulations.config import SimConfig
from simulations.hardware import get_accelerator
from simulations.power import PowerModel
from simulations.request import SimRequest
from simulations.run import scaled, simulate_summary

LATENCY_KEYS = {"tpot": "tpot_ms_at_slo_percentile", "ttft": "ttft_ms_at_slo_percentile", "e2e": "e2e_ms_p90"}


@dataclass(frozen=True)
class SearchSpace:
    """What `pdserve plan` varies. Ratios are (prefill engines, decode engines) per unit."""

    accelerators: tuple[str, ...] = ("h100-sxm",)
    modes: tuple[str, ...] = ("disaggregated", "colocated")
    prefill_tps: tuple[int, ...] = (1, 2)
    decode_tps: tuple[int, ...] = (1, 2, 4)
    ratios: tuple[tuple[int, int], ...] = ((1, 1), (1, 2), (1, 3), (2, 1))
    max_num_seqs: tuple[int, ...] = (256,)
    gpu_counts: tuple[int, ...] = (8, 16, 32)
    max_gpus: int | None = None
    max_mw: float | None = None


def _fits_budget(config: SimConfig, space: SearchSpace) -> bool:
    if space.max_gpus is not None and config.num_gpus > space.max_gpus:
        return False
    if space.max_mw is not None:
        power = PowerModel(get_accelerator(config.accelerator), config.power)
        if config.num_gpus * power.all_in_kw_per_gpu / 1e3 > space.max_mw:
            return False
    return True


def candidates(base: SimConfig, space: SearchSpace) -> list[SimConfig]:
    """Every distinct configuration of the space that fits the budgets (sizes rounded down to whole engines)."""
    seen: dict[str, SimConfig] = {}
    for accelerator, seqs, gpus in itertools.product(space.accelerators, space.max_num_seqs, space.gpu_counts):
        get_accelerator(accelerator)  # unknown names fail here, listing the valid ones
        common = dict(accelerator=accelerator, max_num_seqs=seqs)
        if "colocated" in space.modes:
            for tp in space.decode_tps:
                if gpus // tp >= 1:
                    _add(seen, base, space, mode="colocated", num_prefill=0, num_decode=gpus // tp, decode_tp=tp, **common)
        if "disaggregated" in space.modes:
            for ptp, dtp, (p, d) in itertools.product(space.prefill_tps, space.decode_tps, space.ratios):
                units = gpus // (p * ptp + d * dtp)
                if units >= 1:
                    _add(seen, base, space, mode="disaggregated", num_prefill=p * units, num_decode=d * units,
                         prefill_tp=ptp, decode_tp=dtp, **common)
    return list(seen.values())


def _add(seen: dict[str, SimConfig], base: SimConfig, space: SearchSpace, **changes: Any) -> None:
    config = SimConfig.model_validate({**base.model_dump(), **changes})
    if _fits_budget(config, space):
        seen.setdefault(config.model_dump_json(), config)


def evaluate(configs: Sequence[SimConfig], workload: Sequence[SimRequest], workers: int = 0,
             progress: Callable[[int], None] | None = None) -> list[dict[str, Any]]:
    """Summaries of every config on `workload`, in order: in process (workers=0) or as Ray tasks."""
    if workers == 0:
        results = []
        for config in configs:
            results.append(_safe_summary(config, workload))
            if progress:
                progress(1)
        return results
    from simulations.fanout import evaluate_on_ray
    return evaluate_on_ray(configs, workload, workers, progress)


def _safe_summary(config: SimConfig, workload: Sequence[SimRequest]) -> dict[str, Any]:
    """A config that cannot run (model larger than the engine's memory) is infeasible, not an error."""
    try:
        return simulate_summary(config, workload)
    except ConfigError as exc:
        return {"label": config.label(), "infeasible": exc.message, "meets_slo": False,
                "configuration": config.model_dump(mode="json"), "replicas": {"gpus": config.num_gpus}}


def pareto_front(points: Sequence[dict[str, Any]], latency_key: str) -> list[dict[str, Any]]:
    """Points not dominated on (tokens_per_s_per_mw higher, latency lower), sorted by latency."""
    usable = [p for p in points if "infeasible" not in p and p.get(latency_key) == p.get(latency_key)]
    front = []
    for p in usable:
        dominated = any(q["tokens_per_s_per_mw"] >= p["tokens_per_s_per_mw"] and q[latency_key] <= p[latency_key]
                        and (q["tokens_per_s_per_mw"] > p["tokens_per_s_per_mw"] or q[latency_key] < p[latency_key])
                        for q in usable)
        if not dominated:
            front.append(p)
    return sorted(front, key=lambda p: p[latency_key])


def best(points: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The feasible point with the most tokens/s per MW (ties: fewer GPUs)."""
    feasible = [p for p in points if p.get("meets_slo")]
    if not feasible:
        return None
    return max(feasible, key=lambda p: (p["tokens_per_s_per_mw"], -p["replicas"]["gpus"]))


@dataclass
class PlanResult:
    """What `pdserve plan` reports."""

    points: list[dict[str, Any]]
    best: dict[str, Any] | None
    frontier: list[dict[str, Any]]
    scaling: list[dict[str, Any]] = field(default_factory=list)
    latency_key: str = LATENCY_KEYS["tpot"]


def plan(base: SimConfig, space: SearchSpace, workload: Sequence[SimRequest], workers: int = 0,
         latency: str = "tpot", scales: Sequence[float] = (1, 2, 5, 10),
         progress: Callable[[int], None] | None = None) -> PlanResult:
    """Search the space, then size the best shape at each load scale."""
    if latency not in LATENCY_KEYS:
        raise ConfigError(f"unknown latency metric {latency!r}; valid: {', '.join(LATENCY_KEYS)}")
    configs = candidates(base, space)
    if not configs:
        raise ConfigError("the search space is empty under the GPU/power budget: widen it or raise the budget")
    points = evaluate(configs, workload, workers, progress)
    winner = best(points)
    result = PlanResult(points, winner, pareto_front(points, LATENCY_KEYS[latency]), latency_key=LATENCY_KEYS[latency])
    if winner is not None and scales:
        shape = SimConfig.model_validate(winner["configuration"])
        result.scaling = [size_for_load(shape, workload, factor, space) for factor in scales]
    return result


def _units(config: SimConfig) -> tuple[int, int, int]:
    """(prefill, decode) engines per unit of the shape, and the number of units."""
    from math import gcd
    if config.mode == "colocated":
        return 0, 1, config.num_decode
    g = gcd(config.num_prefill, config.num_decode)
    return config.num_prefill // g, config.num_decode // g, g


def with_units(config: SimConfig, units: int) -> SimConfig:
    """The same shape with `units` copies of its prefill:decode unit."""
    p, d, _ = _units(config)
    return config.model_copy(update={"num_prefill": p * units, "num_decode": d * units})


def size_for_load(shape: SimConfig, workload: Sequence[SimRequest], factor: float, space: SearchSpace,
                  max_units: int = 512) -> dict[str, Any]:
    """The fewest units of `shape` meeting the SLOs at `factor` x the workload's rate (doubling, then bisection)."""
    load = scaled(workload, factor)
    _, _, start = _units(shape)
    probe = lambda units: _safe_summary(with_units(shape, units), load)  # noqa: E731
    low, high, high_summary = 0, max(int(start * factor) // 2, 1), None
    while high <= max_units:
        high_summary = probe(high)
        if high_summary.get("meets_slo"):
            break
        low, high = high, high * 2
    if high_summary is None or not high_summary.get("meets_slo"):
        return {"rate_scale": factor, "feasible": False, "max_units_tried": max_units}
    while high - low > 1:
        middle = (low + high) // 2
        summary = probe(middle)
        if summary.get("meets_slo"):
            high, high_summary = middle, summary
        else:
            low = middle
    return {"rate_scale": factor, "feasible": True, "units": high, "gpus": high_summary["replicas"]["gpus"],
            "provisioned_mw": high_summary["provisioned_mw"], "tokens_per_s_per_mw": high_summary["tokens_per_s_per_mw"],
            "label": high_summary["label"], "ttft_ms_p90": high_summary["ttft_ms_p90"],
            "tpot_ms_p90": high_summary["tpot_ms_p90"]}
