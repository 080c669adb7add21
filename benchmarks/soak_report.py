"""The pure parts of `benchmarks/soak.py`: the mixed workload, process groups, windows, the pass rules.

No I/O but `plot` (which writes the PNG). The soak's rules, with `warmup` the first `--warmup-windows`
windows and "post-warm-up" the rest:
- RSS growth: for every process group and for the whole tree, RSS at the end of the last window over RSS
  at the end of the last warm-up window, minus 1; each must stay under `max_rss_growth` (5%). Per group,
  so that a leak in the 0.5 GB gateway is not hidden by the engines' gigabytes.
- p99 drift: the post-warm-up windows are split in an earlier and a later half (the middle one of an
  odd count is left out); drift = p99 of every request of the later half / p99 of the earlier half - 1,
  for TTFT and for TPOT; each must stay under `max_p99_drift` (10%). Upward only: a faster later half
  is no regression. With 3 windows (1 warm-up) it is window 3 against window 2; with 30, the last 14
  windows pooled against the first 14 after warm-up, so a slow trend shows and one noisy minute does not.
- failures: none, in any window or in the capacity measurement.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pdserve.bench import arrivals
from pdserve.bench.outcome import Outcome
from pdserve.bench.stats import distribution
from pdserve.bench.workload import BenchRequest

MAX_RSS_GROWTH = 0.05
MAX_P99_DRIFT = 0.10
WINDOW_INDEX_STRIDE = 1_000_000  # request indices of window k start at k * stride: every prompt is new


@dataclass(frozen=True)
class MixEntry:
    """One kind of request of the mix: its share of requests and its exact lengths."""

    name: str
    share: float
    prompt_tokens: int
    output_tokens: int


# Short chat turns with short and long answers, and longer prompts (the prefill tier's load).
MIX = (
    MixEntry("chat 96x24", 0.45, 96, 24),
    MixEntry("chat 96x128", 0.25, 96, 128),
    MixEntry("prompt 512x64", 0.20, 512, 64),
    MixEntry("prompt 768x32", 0.10, 768, 32),
)


def mix_lengths(num_requests: int, seed: int, mix: Sequence[MixEntry] = MIX) -> list[tuple[int, int]]:
    """(prompt, output) tokens of `num_requests` requests drawn from the mix by share (seeded)."""
    rng = np.random.default_rng([seed, 0x50A])
    shares = np.array([entry.share for entry in mix])
    picks = rng.choice(len(mix), size=num_requests, p=shares / shares.sum())
    return [(mix[i].prompt_tokens, mix[i].output_tokens) for i in picks]


def window_requests(window: int, rate_per_s: float, window_s: float, seed: int) -> list[BenchRequest]:
    """The requests of window `window`: Poisson arrivals at `rate_per_s` within `window_s` seconds.

    Every window sends the same arrival offsets and lengths (one seeded draw), with prompts of its own
    (indices offset by the window), so that windows differ by what the server does, not by the draw.
    """
    expected = rate_per_s * window_s
    times = arrivals.poisson_arrivals_s(rate_per_s, int(expected + 10 * expected**0.5 + 10), seed)
    times = times[times < window_s]
    lengths = mix_lengths(len(times), seed)
    base = window * WINDOW_INDEX_STRIDE
    return [BenchRequest(base + i, float(t), prompt, output, phase=window)
            for i, (t, (prompt, output)) in enumerate(zip(times, lengths))]


def process_group(pid: int, name: str, root_pid: int, tier: str | None) -> str:
    """The group a process of `pdserve up`'s tree is counted in.

    `tier`: "prefill"/"decode" for a worker's Ray actor process and everything under it (found from the
    KV port it listens on), else None. Groups: pdserve up (gateway and API servers), controller, the
    tiers' actor processes and their vLLM engines, and Ray's own processes.
    """
    if pid == root_pid:
        return "pdserve up"
    if tier:
        return f"{tier} worker" if name.startswith("ray::") else f"{tier} engine"
    if name.startswith(("ray::ClusterCon", "ray::Controller")):  # /proc's comm keeps 15 characters
        return "controller"
    if name.startswith("VLLM::"):  # an engine of a worker whose KV port the soak has not seen yet
        return "engines, tier unknown"
    if name.startswith("ray::Worker"):  # Ray retitles an actor's process while it runs a method: ray::Worker.x
        return "other ray workers"
    return "ray system"


def rss_by_group(processes: Sequence[tuple[str, int]]) -> dict[str, int]:
    """(group, rss bytes) of every process -> bytes per group, and `total`."""
    groups: dict[str, int] = {}
    for group, rss in processes:
        groups[group] = groups.get(group, 0) + rss
    groups["total"] = sum(rss for _, rss in processes)
    return groups


def window_row(window: int, outcomes: Sequence[Outcome], rss: Mapping[str, int], offered_per_s: float,
               warmup: bool) -> dict[str, Any]:
    """One window's line: requests, failures by reason, TTFT/TPOT distributions and RSS at its end."""
    succeeded = [o for o in outcomes if o.ok]
    failures: dict[str, int] = {}
    for outcome in outcomes:
        if not outcome.ok:
            failures[outcome.error_reason] = failures.get(outcome.error_reason, 0) + 1
    return {
        "window": window, "warmup": warmup, "offered_per_s": round(offered_per_s, 4),
        "num_sent": len(outcomes), "num_failed": len(outcomes) - len(succeeded), "failures": failures,
        "ttft_ms": distribution(o.ttft_ms for o in succeeded),
        "tpot_ms": distribution(o.tpot_ms for o in succeeded),
        "rss_bytes": dict(rss),
        "ttft_values_ms": [round(o.ttft_ms, 3) for o in succeeded if o.ttft_ms is not None],
        "tpot_values_ms": [round(o.tpot_ms, 3) for o in succeeded if o.tpot_ms is not None],
    }


def compute_rss_growth(rows: Sequence[dict[str, Any]]) -> dict[str, float | None]:
    """Per group: RSS at the end of the last window / at the end of the last warm-up window - 1."""
    baseline = [r for r in rows if r["warmup"]][-1]["rss_bytes"]
    final = rows[-1]["rss_bytes"]
    return {group: (round(final[group] / base - 1, 4) if base and group in final else None)
            for group, base in baseline.items()}


def drift_halves(rows: Sequence[dict[str, Any]]) -> tuple[list[int], list[int]]:
    """The windows of the earlier and the later half of the post-warm-up windows (middle one out)."""
    measured = [r["window"] for r in rows if not r["warmup"]]
    half = len(measured) // 2
    return measured[:half], measured[len(measured) - half:]


def compute_p99_drift(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per metric: p99 of the earlier and later halves' pooled requests, and later / earlier - 1."""
    earlier, later = drift_halves(rows)
    by_window = {r["window"]: r for r in rows}
    result = {}
    for metric in ("ttft_ms", "tpot_ms"):
        key = metric.replace("_ms", "_values_ms")
        p99s = []
        for windows in (earlier, later):
            values = [v for w in windows for v in by_window[w][key]]
            p99s.append(float(np.percentile(values, 99)) if values else None)
        drift = round(p99s[1] / p99s[0] - 1, 4) if None not in p99s and p99s[0] > 0 else None
        result[metric] = {"earlier_windows": earlier, "later_windows": later, "earlier_p99": _round(p99s[0]),
                          "later_p99": _round(p99s[1]), "drift": drift}
    return result


def compute_verdict(rows: Sequence[dict[str, Any]], capacity_failed: int, *, max_rss_growth: float = MAX_RSS_GROWTH,
                    max_p99_drift: float = MAX_P99_DRIFT, rss_measured: bool = True) -> dict[str, Any]:
    """The three rules over the windows; `passed` only when every checked bound holds."""
    if len(drift_halves(rows)[0]) < 1:
        raise ValueError("the p99 drift needs at least 2 windows after warm-up")
    failed = sum(r["num_failed"] for r in rows) + capacity_failed
    broken = []
    growth = compute_rss_growth(rows) if rss_measured else {}
    for group, value in growth.items():
        if value is None or value >= max_rss_growth:
            broken.append(f"RSS growth of {group}: {_pct(value)} (bound {_pct(max_rss_growth)})")
    drift = compute_p99_drift(rows)
    for metric, entry in drift.items():
        if entry["drift"] is None or entry["drift"] >= max_p99_drift:
            broken.append(f"p99 {metric} drift: {_pct(entry['drift'])} (bound {_pct(max_p99_drift)})")
    if failed:
        broken.append(f"{failed} requests failed (bound: 0)")
    return {"passed": not broken, "broken": broken, "num_failed": failed, "rss_growth": growth,
            "rss_measured": rss_measured, "p99_drift": drift,
            "bounds": {"max_rss_growth": max_rss_growth, "max_p99_drift": max_p99_drift, "max_failed": 0}}


def format_table(rows: Sequence[dict[str, Any]], verdict: dict[str, Any]) -> str:
    """Per window: requests, failures, TTFT and TPOT p50/p99, total RSS; then the rules and the verdict."""
    lines = [f"{'window':>6} {'sent':>5} {'fail':>5} {'TTFT p50':>9} {'TTFT p99':>9} {'TPOT p50':>9} "
             f"{'TPOT p99':>9} {'RSS GiB':>8}"]
    for row in rows:
        lines.append(f"{row['window']:>6} {row['num_sent']:>5} {row['num_failed']:>5} "
                     f"{_ms(row['ttft_ms']['p50']):>9} {_ms(row['ttft_ms']['p99']):>9} "
                     f"{_ms(row['tpot_ms']['p50']):>9} {_ms(row['tpot_ms']['p99']):>9} "
                     f"{row['rss_bytes'].get('total', 0) / 2**30:>8.3f}" + ("  (warm-up)" if row["warmup"] else ""))
    lines.append("")
    if verdict["rss_measured"]:
        lines.append("RSS growth after warm-up: " + ", ".join(f"{group} {_pct(value)}"
                                                             for group, value in verdict["rss_growth"].items()))
    else:
        lines.append("RSS growth: not measured (no process tree to sample)")
    for metric, entry in verdict["p99_drift"].items():
        lines.append(f"p99 {metric} drift: windows {entry['later_windows']} vs {entry['earlier_windows']}: "
                     f"{_ms(entry['later_p99'])} vs {_ms(entry['earlier_p99'])} ms = {_pct(entry['drift'])}")
    reasons: dict[str, int] = {}
    for row in rows:
        for reason, count in row["failures"].items():
            reasons[reason] = reasons.get(reason, 0) + count
    lines.append(f"failed: {verdict['num_failed']}" + (f" ({', '.join(f'{r}: {n}' for r, n in reasons.items())})"
                                                       if reasons else ""))
    lines.append("PASS" if verdict["passed"] else "FAIL: " + "; ".join(verdict["broken"]))
    return "\n".join(lines)


def plot(path, samples: Sequence[dict[str, Any]], rows: Sequence[dict[str, Any]], window_s: float) -> None:
    """RSS per process group over time, TTFT and TPOT p50/p99 per window, and failures per window."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(4, 1, figsize=(10, 13), sharex=True)
    times_min = [s["t_s"] / 60 for s in samples]
    groups = sorted({g for s in samples for g in s["rss_bytes"] if g != "total"})
    for group in groups:
        axes[0].plot(times_min, [s["rss_bytes"].get(group, 0) / 2**20 for s in samples], label=group)
    axes[0].set_ylabel("RSS (MiB)")
    axes[0].set_yscale("log")
    axes[0].legend(fontsize=7, ncol=2)
    ends_min = [(r["window"] + 1) * window_s / 60 for r in rows]
    for ax, metric in ((axes[1], "ttft_ms"), (axes[2], "tpot_ms")):
        for q, style in (("p50", "o-"), ("p99", "s--")):
            ax.plot(ends_min, [r[metric][q] for r in rows], style, label=f"{metric[:4].upper()} {q}")
        ax.set_ylabel(f"{metric[:4].upper()} (ms)")
        ax.legend(fontsize=7)
    axes[3].bar([e - window_s / 120 for e in ends_min], [r["num_failed"] for r in rows], width=window_s / 90,
                color="tab:red")
    axes[3].set_ylim(0, max([1, *(r["num_failed"] for r in rows)]) * 1.1)
    axes[3].set_ylabel("failed requests")
    axes[3].set_xlabel("minutes (window values at each window's end)")
    warmup_end = sum(r["warmup"] for r in rows) * window_s / 60
    for ax in axes:
        ax.axvspan(0, warmup_end, color="0.9", zorder=0)
    axes[0].set_title("pdserve soak (grey: warm-up)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:+.1f}%"
