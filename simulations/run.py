"""Run one simulation: fresh requests, the cluster, the live planner when asked (`simulations.autoscale`), the summary.

The entry point the CLI, the capacity search and the benchmark share. `simulate(config, workload)`
never mutates `workload` (each run works on its own copies of the requests).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from simulations.autoscale import SimPlanner, planner_summary
from simulations.cluster import Cluster, SimResult
from simulations.config import SimConfig
from simulations.metrics import summarize
from simulations.request import SimRequest


def fresh(workload: Sequence[SimRequest]) -> list[SimRequest]:
    """Unstarted copies of the workload's requests (a run mutates its requests)."""
    return [SimRequest(r.request_id, r.arrival_s, r.prompt_tokens, r.output_tokens, r.hash_ids, r.block_tokens,
                       r.thinking_tokens, r.budget, r.tenant) for r in workload]


def simulate(config: SimConfig, workload: Sequence[SimRequest],
             on_progress: Callable[[float], None] | None = None) -> tuple[dict[str, Any], SimResult]:
    """Simulate `workload` on the cluster `config` describes; returns (summary fields, raw result)."""
    cluster = Cluster(config, fresh(workload))
    planner = SimPlanner(cluster) if config.autoscale else None
    result = cluster.run(on_progress=on_progress)
    summary = summarize(result, cluster.power)
    summary["timeline"] = result.timeline
    if planner is not None:
        result.planner_decisions = list(planner.decisions)
        summary["planner"] = planner_summary(planner.decisions, planner.config.interval_s)
    return summary, result


def simulate_summary(config: SimConfig, workload: Sequence[SimRequest]) -> dict[str, Any]:
    """Only the summary (what a search worker sends back)."""
    summary, _ = simulate(config, workload)
    return summary


def scaled(workload: Sequence[SimRequest], factor: float) -> list[SimRequest]:
    """The workload arriving `factor` times as fast."""
    return [replace(r, arrival_s=r.arrival_s / factor) for r in fresh(workload)]
