"""Outputs of `pdserve simulate` and `pdserve plan`: summary.json, report.md and PNG plots.

Plots use matplotlib's Agg backend (no display). Every writer takes the output folder and returns the
paths it wrote.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

SUMMARY_FIELDS = ("tokens_per_s_per_mw", "input_tokens_per_s_per_mw", "output_tokens_per_s_per_mw",
                  "usd_per_million_tokens", "j_per_token", "goodput_rps", "throughput_rps", "total_tokens_per_s",
                  "ttft_ms_p50", "ttft_ms_p90", "ttft_ms_p99", "tpot_ms_p50", "tpot_ms_p90", "tpot_ms_p99",
                  "avg_gpus", "provisioned_mw", "num_served", "num_refused")


def _clean(value: Any) -> Any:
    """JSON-safe: NaN and infinities become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def write_json(path: Path, data: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_clean(data), indent=2, sort_keys=False) + "\n")
    return path


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def _table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


BUDGET_FIELDS = ("num_budget_refused", "num_quota_refused", "num_thinking_capped", "thinking_tokens",
                 "thinking_tokens_uncapped", "budget_cost_usd", "budget_energy_j")


def simulate_report(summary: dict[str, Any], workload_name: str) -> str:
    """Markdown report of one simulation."""
    rows = [(key, summary.get(key)) for key in SUMMARY_FIELDS]
    parts = [
        f"# Simulation: {summary['label']}",
        f"Workload: {workload_name}; {summary['num_requests']} requests over {summary['duration_s']:.0f} s. "
        f"Model {summary['configuration']['model']}, step times from {summary['configuration']['timing']}.",
        f"SLO: TTFT <= {summary['ttft_slo_ms']:g} ms and TPOT <= {summary['tpot_slo_ms']:g} ms; "
        f"attained by {summary['slo_attainment']:.1%} of requests.",
        _table(rows, ("metric", "value"))]
    if summary.get("budgets_enforced"):
        reasons = (f"Finish reasons: {summary.get('finish_reasons')}; "
                   f"refused by: {summary.get('refused_by') or 'none'}.")
        parts += ["## Budgets (orchestrator.budget)", reasons,
                  _table([(key, summary.get(key)) for key in BUDGET_FIELDS], ("metric", "value"))]
    if "planner" in summary:
        planner = summary["planner"]
        title = f"## Planner (orchestrator.planner.decide, every {planner['interval_s']:g} s)"
        what = (f"{planner['num_decisions']} decisions; up to {planner['max_prefill']} prefill and "
                f"{planner['max_decode']} decode engines; actions per tier: {planner['actions']}.")
        parts += [title, what]
    return "\n\n".join(parts + ["Plots: `replicas.png` (engines over time).\n"])


def plan_report(result: Any, workload_name: str) -> str:
    """Markdown report of a capacity search."""
    key = result.latency_key
    header = ("configuration", "GPUs", "tokens/s/MW", key, "TTFT p90 ms", "TPOT p90 ms", "$/Mtok", "meets SLO")
    row = lambda p: (p["label"], p["replicas"]["gpus"], p.get("tokens_per_s_per_mw", 0.0), p.get(key, float("nan")),  # noqa: E731
                     p.get("ttft_ms_p90", float("nan")), p.get("tpot_ms_p90", float("nan")),
                     p.get("usd_per_million_tokens", float("nan")), p.get("meets_slo"))
    parts = [f"# Capacity plan for {workload_name}", f"{len(result.points)} configurations simulated."]
    if result.best:
        parts.append(f"**Best:** {result.best['label']}: {result.best['tokens_per_s_per_mw']:,.0f} tokens/s per MW, "
                     f"${result.best['usd_per_million_tokens']:.3f} per million tokens.")
    else:
        parts.append("**No configuration met the SLOs.** Widen the search (more GPUs, other accelerators) or relax the SLOs.")
    parts += ["## Pareto frontier (tokens/MW vs latency)", _table([row(p) for p in result.frontier], header)]
    if result.scaling:
        scale_rows = [(s["rate_scale"], s.get("gpus", "-"), s.get("provisioned_mw", "-"), s.get("tokens_per_s_per_mw", "-"),
                       s.get("label", "infeasible")) for s in result.scaling]
        parts += ["## Scaling with load", _table(scale_rows, ("rate x", "GPUs", "MW", "tokens/s/MW", "configuration"))]
    ranked = sorted(result.points, key=lambda p: -p.get("tokens_per_s_per_mw", 0.0))
    parts += ["## All configurations", _table([row(p) for p in ranked], header),
              "Plots: `pareto.png`, `scaling.png`.\n"]
    return "\n\n".join(parts)


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_replicas(timeline: Sequence[Sequence[float]], path: Path) -> Path:
    """Prefill and decode engines over time (a step plot)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.5))
    times = [t for t, _, _ in timeline] or [0.0]
    ax.step(times, [p for _, p, _ in timeline] or [0], where="post", label="prefill")
    ax.step(times, [d for _, _, d in timeline] or [0], where="post", label="decode / colocated")
    ax.set_xlabel("simulated time (s)")
    ax.set_ylabel("engines")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_pareto(points: Sequence[dict[str, Any]], frontier: Sequence[dict[str, Any]], key: str, path: Path) -> Path:
    """Every candidate and the frontier: tokens/s per MW against latency."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    usable = [p for p in points if "infeasible" not in p]
    for ok, colour in ((True, "tab:green"), (False, "tab:gray")):
        chosen = [p for p in usable if bool(p.get("meets_slo")) == ok]
        ax.scatter([p[key] for p in chosen], [p["tokens_per_s_per_mw"] for p in chosen], c=colour, s=18,
                   label="meets SLO" if ok else "misses SLO")
    ax.plot([p[key] for p in frontier], [p["tokens_per_s_per_mw"] for p in frontier], "r-o", ms=4, label="Pareto frontier")
    ax.set_xlabel(key.replace("_", " "))
    ax.set_ylabel("tokens/s per MW")
    ax.set_xscale("log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_scaling(scaling: Sequence[dict[str, Any]], path: Path) -> Path:
    """GPUs and tokens/s per MW as the load grows."""
    plt = _pyplot()
    feasible = [s for s in scaling if s.get("feasible")]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot([s["rate_scale"] for s in feasible], [s["tokens_per_s_per_mw"] for s in feasible], "b-o")
    ax.set_xlabel("load (x the workload's rate)")
    ax.set_ylabel("tokens/s per MW", color="b")
    twin = ax.twinx()
    twin.plot([s["rate_scale"] for s in feasible], [s["gpus"] for s in feasible], "g--s")
    twin.set_ylabel("GPUs", color="g")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_simulation(out: Path, summary: dict[str, Any], workload_name: str) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    data = {k: v for k, v in summary.items() if k != "timeline"}
    data["replicas_over_time"] = summary.get("timeline", [])
    return [write_json(out / "summary.json", data),
            _write_text(out / "report.md", simulate_report(summary, workload_name)),
            plot_replicas(summary.get("timeline", []), out / "replicas.png")]


def write_plan(out: Path, result: Any, workload_name: str) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    strip = lambda p: {k: v for k, v in p.items() if k != "timeline"}  # noqa: E731
    best = strip(result.best) if result.best else {}
    data = {**best, "best": best or None, "frontier": [strip(p) for p in result.frontier],
            "scaling": result.scaling, "candidates": [strip(p) for p in result.points], "latency_metric": result.latency_key}
    paths = [write_json(out / "summary.json", data), _write_text(out / "report.md", plan_report(result, workload_name)),
             plot_pareto(result.points, result.frontier, result.latency_key, out / "pareto.png")]
    if result.scaling:
        paths.append(plot_scaling(result.scaling, out / "scaling.png"))
    if result.best and result.best.get("timeline"):
        paths.append(plot_replicas(result.best["timeline"], out / "replicas.png"))
    return paths


def _write_text(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
