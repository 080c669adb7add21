"""Benchmark workloads: which requests to send, when, and how long each is.

Three sources: synthetic (Poisson arrivals, every request A prompt tokens and B output tokens), a ramp
(piecewise Poisson, lengths per phase) and a trace (its own arrivals and lengths, through the readers of
`simulations.traces`). Pure: prompts are only built when a request is sent (`prompts.PromptBuilder`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pdserve.bench import arrivals
from pdserve.bench.ramp import PhaseLengths, RampSchedule

TRACE_FORMATS = ("azure", "mooncake")


@dataclass(frozen=True)
class BenchRequest:
    """One request to send: at `arrival_s` from the start, `prompt_tokens` in, `output_tokens` out."""

    index: int
    arrival_s: float
    prompt_tokens: int
    output_tokens: int
    prefix_hash_ids: tuple[int, ...] = ()
    phase: int = 0


@dataclass(frozen=True)
class Limits:
    """Clipping of trace lengths: caps from flags and the model's context (0 or None: no cap)."""

    max_prompt_tokens: int | None = None
    max_output_tokens: int | None = None
    max_model_len: int = 0

    def fit(self, prompt_tokens: int, output_tokens: int) -> tuple[int, int]:
        """Clip (prompt, output) so that each is >= 1, under its cap, and together within the context."""
        output = max(1, output_tokens if self.max_output_tokens is None else min(output_tokens, self.max_output_tokens))
        prompt = max(1, prompt_tokens if self.max_prompt_tokens is None else min(prompt_tokens, self.max_prompt_tokens))
        if self.max_model_len:
            output = max(1, min(output, self.max_model_len - 1))
            prompt = max(1, min(prompt, self.max_model_len - output))
        return prompt, output


def synthetic(num_requests: int, rate_per_s: float, prompt_tokens: int, output_tokens: int,
              seed: int) -> list[BenchRequest]:
    """Poisson arrivals at `rate_per_s`, every request exactly `prompt_tokens` in, `output_tokens` out."""
    times = arrivals.poisson_arrivals_s(rate_per_s, num_requests, seed)
    return [BenchRequest(i, float(t), prompt_tokens, output_tokens) for i, t in enumerate(times)]


def ramped(schedule: RampSchedule, lengths: Sequence[PhaseLengths], max_requests: int,
           seed: int) -> list[BenchRequest]:
    """Piecewise-Poisson arrivals of the ramp; each request takes its phase's lengths."""
    times, phases = arrivals.piecewise_poisson_arrivals_s(schedule.rates_per_s, schedule.phase_s, max_requests, seed)
    return [BenchRequest(i, float(t), lengths[p].prompt_tokens, lengths[p].output_tokens, phase=int(p))
            for i, (t, p) in enumerate(zip(times, phases))]


def read_trace(path: str, trace_format: str | None, limit: int) -> list:
    """The first `limit` requests of a trace file (format from `trace_format`, else the suffix).

    Raises `simulations.traces.TraceError` (a `ConfigError`) for a missing, unknown or malformed file.
    """
    from simulations import traces

    if trace_format is None:
        return traces.read_trace(path, limit)
    if trace_format == "azure":
        return traces.read_azure_csv(path, limit)
    if trace_format == "mooncake":
        return traces.read_mooncake_jsonl(path, limit)
    raise traces.TraceError(f"unknown trace format {trace_format!r}: expected one of {', '.join(TRACE_FORMATS)}")


def from_trace(trace: Sequence, limits: Limits, *, block_tokens: int, rate_per_s: float | None = None,
               time_scale: float | None = None) -> tuple[list[BenchRequest], int]:
    """Trace requests -> bench requests, arrivals rescaled and lengths clipped.

    In a trace with prefix hash ids, prompt lengths scale with `block_tokens / trace block size` (a
    Mooncake trace replayed with 32-token blocks keeps its prefix structure at 1/16 of its length).
    Returns (requests, how many were clipped).
    """
    times = arrivals.rescale_trace_arrivals_s([r.arrival_s for r in trace], time_scale=time_scale,
                                              rate_per_s=rate_per_s)
    has_blocks = any(entry.prefix_hash_ids for entry in trace)
    requests, num_clipped = [], 0
    for i, (entry, t) in enumerate(zip(trace, times)):
        scale = block_tokens / entry.prefix_block_tokens if has_blocks else 1.0
        scaled_prompt = max(1, round(entry.prompt_tokens * scale))
        prompt, output = limits.fit(scaled_prompt, entry.output_tokens)
        num_clipped += (prompt, output) != (scaled_prompt, max(1, entry.output_tokens))
        requests.append(BenchRequest(i, float(t), prompt, output, tuple(entry.prefix_hash_ids)))
    return requests, num_clipped
