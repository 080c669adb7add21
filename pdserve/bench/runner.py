"""One `pdserve bench` run, start to end.

Life of a run: 1. read the baseline and the trace (bad files: `ConfigError`, exit 2), then probe the target
(unreachable: `Unavailable`, exit 3) and learn its model and context;
2. plan the workload (synthetic, ramp or trace; clipped to the context with a note); 3. with `--ramp`,
start polling the cluster status; 4. send the load open-loop and wait for every request; 5. keep polling
for the ramp tail, then stop; 6. reduce outcomes to the summary and build the report document.
"""

from __future__ import annotations

import asyncio
import datetime
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.errors import ConfigError
from pdserve.bench import replicas, report, workload
from pdserve.bench.config import BenchConfig
from pdserve.bench.endpoints import ENDPOINTS, BaseEndpoint, ServerInfo
from pdserve.bench.loadgen import run_load
from pdserve.bench.prompts import PromptBuilder
from pdserve.bench.ramp import PhaseLengths, RampSchedule
from pdserve.bench.stats import Slo, compute_summary


@dataclass
class Plan:
    """The requests to send and what a reader of the report must know about them."""

    requests: list[workload.BenchRequest]
    schedule: RampSchedule | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class RunResult:
    document: dict[str, Any]
    ramp_table: list[dict[str, Any]] | None = None


def ramp_paths(out: str | Path) -> tuple[Path, Path]:
    """Where a ramp's replicas table and plot go: next to `--out`, named after it."""
    out = Path(out)
    stem = out.with_suffix("") if out.suffix == ".json" else out
    return Path(f"{stem}.replicas.csv"), Path(f"{stem}.replicas.png")


def make_endpoint(config: BenchConfig, endpoint: str, target: str) -> BaseEndpoint:
    return ENDPOINTS[endpoint](target, model=config.model, api_key=config.api_key, temperature=config.temperature)


def load_trace(config: BenchConfig) -> list | None:
    """The trace's first `--num-requests` requests (None without `--trace`); raises ConfigError."""
    if config.trace is None:
        return None
    trace = workload.read_trace(config.trace, config.trace_format, config.num_requests)
    if not trace:
        raise ConfigError(f"the trace {config.trace} holds no request")
    return trace


def plan_workload(config: BenchConfig, info: ServerInfo, trace: list | None = None) -> Plan:
    """Step 2: the requests of this run, fitted to the server's context (`info.max_model_len`, 0: unknown)."""
    if trace is not None:
        return _plan_trace(config, info, trace)
    if config.ramp:
        return _plan_ramp(config, info)
    prompt_tokens, output_tokens = config.lengths()
    _check_fits(prompt_tokens, output_tokens, info, "--prompt-tokens + --output-tokens")
    return Plan(workload.synthetic(config.num_requests, config.rate_per_s, prompt_tokens, output_tokens, config.seed))


def _plan_ramp(config: BenchConfig, info: ServerInfo) -> Plan:
    shape = config.ramp_shape
    if config.duration_s is not None:
        schedule = RampSchedule(config.rate_per_s, shape, config.duration_s / len(shape))
    else:
        schedule = RampSchedule.fitting(config.rate_per_s, shape, config.num_requests)
    lengths = config.ramp_lengths or (PhaseLengths(*config.lengths()),) * len(shape)
    for i, phase in enumerate(lengths):
        _check_fits(phase.prompt_tokens, phase.output_tokens, info, f"--ramp-lengths phase {i}")
    requests = workload.ramped(schedule, lengths, config.num_requests, config.seed)
    notes = [f"ramp: {len(shape)} phases of {schedule.phase_s:.1f} s at "
             f"{', '.join(f'{r:g}' for r in schedule.rates_per_s)} req/s; expected {schedule.expected_requests:.0f} "
             f"requests, {len(requests)} drawn (capped at --num-requests {config.num_requests})"]
    return Plan(requests, schedule, notes)


def _plan_trace(config: BenchConfig, info: ServerInfo, trace: list) -> Plan:
    limits = workload.Limits(config.max_prompt_tokens, config.max_output_tokens, info.max_model_len)
    requests, num_clipped = workload.from_trace(trace, limits, block_tokens=config.block_tokens,
                                                rate_per_s=config.rate_per_s, time_scale=config.time_scale)
    notes = [f"trace {config.trace}: first {len(requests)} requests"]
    if any(entry.prefix_hash_ids for entry in trace) and config.block_tokens != trace[0].prefix_block_tokens:
        notes.append(f"prompt lengths scaled by {config.block_tokens}/{trace[0].prefix_block_tokens} "
                     f"(--block-tokens {config.block_tokens} per prefix hash block)")
    if num_clipped:
        notes.append(f"{num_clipped} of {len(requests)} requests clipped (max prompt {config.max_prompt_tokens}, "
                     f"max output {config.max_output_tokens}, model context {info.max_model_len or 'unknown'})")
    return Plan(requests, None, notes)


def _check_fits(prompt_tokens: int, output_tokens: int, info: ServerInfo, what: str) -> None:
    if info.max_model_len and prompt_tokens + output_tokens > info.max_model_len:
        raise ConfigError(f"{what} = {prompt_tokens + output_tokens} tokens exceeds the model context "
                          f"({info.max_model_len} tokens for {info.model})")


async def run_bench(config: BenchConfig, command: str, argv: list[str]) -> RunResult:
    """Steps 1-6; raises ConfigError (bad input) or Unavailable (target unreachable) before sending."""
    baseline = report.load_json(config.compare) if config.compare else None
    trace = load_trace(config)
    endpoint = make_endpoint(config, config.endpoint, config.target)
    status_endpoint = endpoint
    try:
        info = await endpoint.probe(config.connect_timeout_s)
        plan = plan_workload(config, info, trace)
        if config.ramp and config.status_target:
            status_endpoint = make_endpoint(config, "grpc", config.status_target)
        started_at = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        start_s = time.perf_counter()
        poller = replicas.ReplicaPoller(status_endpoint, plan.schedule, start_s, config.poll_interval_s) \
            if plan.schedule else None
        poll_task = asyncio.create_task(poller.run()) if poller else None
        builder = PromptBuilder(config.seed, config.token_id_low, config.token_id_high, config.block_tokens)
        try:
            result = await run_load(plan.requests, endpoint, builder, timeout_s=config.request_timeout_s,
                                    duration_s=config.duration_s, progress=config.progress, start_s=start_s)
            if poll_task:
                await asyncio.sleep(config.ramp_tail_s)
        finally:
            if poll_task:
                poll_task.cancel()
                await asyncio.gather(poll_task, return_exceptions=True)
    finally:
        await endpoint.close()
        if status_endpoint is not endpoint:
            await status_endpoint.close()
    return _finish(config, command, argv, info, plan, result, poller, started_at, start_s, baseline)


def _finish(config, command, argv, info, plan, result, poller, started_at, start_s, baseline) -> RunResult:
    """Step 6: summary, notes, comparison and the report document."""
    summary = compute_summary(result.outcomes, result.duration_s, Slo(config.slo_ttft_ms, config.slo_tpot_ms),
                              num_planned=len(plan.requests))
    notes = list(plan.notes)
    if result.num_not_sent:
        notes.append(f"{result.num_not_sent} requests not sent: past --duration-s {config.duration_s:g}")
    comparison = None
    if baseline is not None:
        comparison = {"baseline": config.compare, "baseline_command": baseline.get("command"),
                      "rows": report.compute_comparison(summary, baseline["summary"])}
    table = ramp_doc = None
    if poller:
        table = replicas.flatten_rows(poller.rows, result.outcomes, start_s, config.poll_interval_s)
        csv_path, png_path = ramp_paths(config.out)
        ramp_doc = {"phase_s": plan.schedule.phase_s, "rates_per_s": list(plan.schedule.rates_per_s),
                    "csv": str(csv_path), "png": str(png_path), "replicas": table}
    config_doc = {**config.public_dict(), "model": info.model, "max_model_len": info.max_model_len}
    document = report.build_document(command=command, argv=argv, config=config_doc, started_at=started_at,
                                     summary=summary, notes=notes, requests=[o.summary() for o in result.outcomes],
                                     ramp=ramp_doc, comparison=comparison)
    return RunResult(document, table)
