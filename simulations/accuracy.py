"""Accuracy against a real cluster: a `pdserve bench` report replayed in the simulator, and the comparison.

The pure half of `benchmarks/sim_vs_real.py` (which starts `pdserve up`, runs `pdserve bench`, stops the
cluster and calls these):
1. `workload_from_bench(report)`: the requests exactly as the client sent them (send time = scheduled
   arrival + the client's dispatch lag; prompt and output lengths);
2. `Calibration`: the serving-path parameters of the run, each named and documented with where its value
   came from (`calibrate` derives the request overhead from a separate calibration phase);
3. `sim_config(profile, calibration, engine)`: the simulated twin of the cluster (1 prefill + 1 decode
   engine timed by the measured profile, the real engines' batch limits);
4. `compare(measured, predicted)`: TTFT and TPOT p50/p90 with their relative errors against the bounds
   the issue states (medians within 15%, p90 within 25%), as rows, Markdown and JSON;
5. the machine is shared: `foreign_cores(samples)` turns CPU samples (taken by the script, 1 s apart)
   into the cores that processes outside the run used, and `foreign_load_per_request` gives each
   request the mean over its life; `quiet(...)` selects, by that measure alone (never by latency), the
   requests that ran while the machine was otherwise idle, for a second comparison beside the full one.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from orchestrator.errors import ConfigError
from simulations.config import SimConfig
from simulations.request import SimRequest

METRICS = (("ttft_ms", 50), ("ttft_ms", 90), ("tpot_ms", 50), ("tpot_ms", 90))
BOUNDS = {50: 0.15, 90: 0.25}  # relative error allowed at each percentile


def workload_from_bench(report: dict[str, Any]) -> list[SimRequest]:
    """The requests a `pdserve bench` JSON report sent, at their actual send times (seconds from the
    first send). Raises ConfigError when the report has no per-request rows."""
    rows = report.get("requests") or []
    if not rows:
        raise ConfigError("the bench report has no `requests` rows to replay")
    sends = [row["scheduled_s"] + (row.get("dispatch_lag_ms") or 0.0) / 1e3 for row in rows]
    start = min(sends)
    ordered = sorted(zip(sends, rows), key=lambda pair: pair[0])
    # request_id: the bench's own index, so a subset of rows finds its simulated twins
    return [SimRequest(int(row.get("index", i)), send - start, int(row["prompt_tokens"]),
                       max(int(row["expected_output_tokens"]), 1)) for i, (send, row) in enumerate(ordered)]


def measured_metrics(report: dict[str, Any], indices: set[int] | None = None) -> dict[str, float]:
    """TTFT/TPOT p50 and p90 (ms) of a bench report's successful requests (numpy linear percentiles,
    as `pdserve bench` computes them); only those in `indices` when given."""
    rows = [r for r in report.get("requests") or [] if r.get("ok") and (indices is None or r["index"] in indices)]
    return _percentiles({"ttft_ms": [r["ttft_ms"] for r in rows if r.get("ttft_ms") is not None],
                         "tpot_ms": [r["tpot_ms"] for r in rows if r.get("tpot_ms") is not None]})


def predicted_metrics(summary: dict[str, Any]) -> dict[str, float]:
    """The same metrics from a simulation summary."""
    return {f"{name}_p{p}": float(summary[f"{name}_p{p}"]) for name, p in METRICS}


def predicted_metrics_of(requests: Sequence[SimRequest], indices: set[int]) -> dict[str, float]:
    """The same metrics over the simulated requests whose ids are in `indices`."""
    chosen = [r for r in requests if r.request_id in indices and r.served]
    return _percentiles({"ttft_ms": [r.ttft_s * 1e3 for r in chosen],
                         "tpot_ms": [r.tpot_s * 1e3 for r in chosen if r.output_tokens > 1]})


def foreign_cores(samples: Sequence[Sequence[float]], ticks_per_s: float = 100.0) -> list[tuple[float, float]]:
    """From CPU samples `(wall time s, machine busy jiffies, this run's processes' jiffies, ...)` to
    `(interval midpoint, cores used by everything else)` per interval."""
    out = []
    for (t0, busy0, ours0, *_), (t1, busy1, ours1, *_) in itertools.pairwise(samples):
        if t1 > t0:
            out.append(((t0 + t1) / 2, max((busy1 - busy0) - (ours1 - ours0), 0.0) / ticks_per_s / (t1 - t0)))
    return out


def cpu_split(samples: Sequence[Sequence[float]], ticks_per_s: float = 100.0) -> dict[str, float] | None:
    """Mean cores over the samples `(wall s, machine busy, this run's, this run's engine processes')`:
    `engines`, `stack` (the rest of this run: gateway, Ray, client) and `foreign`. None without the split."""
    if len(samples) < 2 or len(samples[0]) < 4:
        return None
    (t0, busy0, ours0, engines0), (t1, busy1, ours1, engines1) = samples[0][:4], samples[-1][:4]
    seconds = (t1 - t0) * ticks_per_s
    return {"engines": (engines1 - engines0) / seconds, "stack": ((ours1 - ours0) - (engines1 - engines0)) / seconds,
            "foreign": max((busy1 - busy0) - (ours1 - ours0), 0.0) / seconds}


def foreign_load_per_request(report: dict[str, Any], start_epoch_s: float,
                             load: Sequence[tuple[float, float]]) -> dict[int, float]:
    """Each sent request's mean foreign load (cores) over its life, from its send to its end; requests
    no sample covers get the nearest sample's value."""
    result = {}
    for row in report.get("requests") or []:
        begin = start_epoch_s + row["scheduled_s"] + (row.get("dispatch_lag_ms") or 0.0) / 1e3
        end = begin + (row.get("e2e_ms") or 0.0) / 1e3
        inside = [cores for t, cores in load if begin <= t <= end]
        if not inside and load:
            inside = [min(load, key=lambda sample: abs(sample[0] - (begin + end) / 2))[1]]
        if inside:
            result[int(row["index"])] = float(np.mean(inside))
    return result


def quiet(per_request: dict[int, float], max_cores: float) -> set[int]:
    """The requests whose mean foreign load stayed at or under `max_cores`."""
    return {index for index, cores in per_request.items() if cores <= max_cores}


def _percentiles(values: dict[str, list[float]]) -> dict[str, float]:
    out = {}
    for name, p in METRICS:
        series = values[name]
        out[f"{name}_p{p}"] = float(np.percentile(series, p)) if series else math.nan
    return out


@dataclass(frozen=True)
class Calibration:
    """The serving path's costs outside the engines' steps, and where each value came from."""

    request_overhead_ms: float = 0.0  # client send -> the prefill worker's queue, and the first token back
    transfer_gb_s: float = 1.0  # KV bytes per second on loopback
    transfer_latency_ms: float = 0.5  # fixed cost of a hand-off: the decode request's RPC, the last frame
    decode_kv_load_steps: int = 1  # vLLM loads received KV asynchronously: scheduled one step later
    sources: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def calibrate(calibration_report: dict[str, Any], base: Calibration) -> Calibration:
    """The request overhead measured in a calibration phase (a few requests far apart, not the compared
    workload): the median of the client's TTFT minus the server's own queue and prefill time of the
    request (`usage.queue_ms + usage.prefill_ms`): the API, tokenization, admission and the first
    token's way back, none of it engine time. Raises ConfigError when no request has both."""
    gaps = [r["ttft_ms"] - r["usage"]["queue_ms"] - r["usage"]["prefill_ms"]
            for r in calibration_report.get("requests") or []
            if r.get("ok") and r.get("ttft_ms") is not None and r.get("usage")
            and r["usage"].get("queue_ms") is not None and r["usage"].get("prefill_ms") is not None]
    if not gaps:
        raise ConfigError("the calibration phase has no successful request with the server's queue and prefill times")
    overhead = max(float(np.median(gaps)), 0.0)
    sources = {**base.sources, "request_overhead_ms": (
        f"median over {len(gaps)} calibration requests of client TTFT minus the server's queue + prefill time")}
    return Calibration(overhead, base.transfer_gb_s, base.transfer_latency_ms, base.decode_kv_load_steps, sources)


def sim_config(profile_path: str, calibration: Calibration, *, max_num_seqs: int, max_batched_tokens: int,
               model: str = "smollm2-135m", kv_tokens: int | None = None, shared_host: bool = False) -> SimConfig:
    """The simulated twin of a 1 prefill + 1 decode cluster whose engines the profile measured; with
    `shared_host`, the two engines slow each other by the profile's measured interference."""
    return SimConfig(model=model, num_prefill=1, num_decode=1, timing="profile", profile=profile_path,
                     kv_tokens=kv_tokens, max_num_seqs=max_num_seqs, max_batched_tokens=max_batched_tokens,
                     transfer_gb_s=calibration.transfer_gb_s, transfer_latency_ms=calibration.transfer_latency_ms,
                     request_overhead_ms=calibration.request_overhead_ms,
                     decode_kv_load_steps=calibration.decode_kv_load_steps, budgets="off", shared_host=shared_host)


def compare(measured: dict[str, float], predicted: dict[str, float]) -> list[dict[str, Any]]:
    """One row per metric: measured, predicted, relative error (predicted / measured - 1), its bound,
    and whether it is within."""
    rows = []
    for name, p in METRICS:
        key = f"{name}_p{p}"
        real, sim = measured[key], predicted[key]
        error = sim / real - 1.0 if real and math.isfinite(real) and math.isfinite(sim) else math.nan
        rows.append({"metric": key, "measured_ms": real, "predicted_ms": sim, "error": error, "bound": BOUNDS[p],
                     "within": bool(math.isfinite(error) and abs(error) <= BOUNDS[p])})
    return rows


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """The comparison as a Markdown table."""
    lines = ["| metric | measured (ms) | simulated (ms) | error | bound | within |", "|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['metric'].replace('_ms_', ' ')} | {row['measured_ms']:.1f} | {row['predicted_ms']:.1f} | "
                     f"{row['error']:+.1%} | ±{row['bound']:.0%} | {'yes' if row['within'] else 'no'} |")
    return "\n".join(lines)


def all_within(rows: Sequence[dict[str, Any]]) -> bool:
    return all(row["within"] for row in rows)
