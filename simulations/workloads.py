"""Workloads: the requests a simulation serves, from a shipped trace or a synthetic mix.

Synthetic shapes (prompt/output token means): chat 1k/1k, reasoning 1k/8k, summarisation 8k/1k,
each drawn log-normally around its means with a coefficient of variation `spread`, arriving as a
Poisson process at `rate_rps`. A test-time-compute budget mix gives a share of requests a long thinking
phase (its natural length, `SimRequest.thinking_tokens`) and a budget (`max_thinking_tokens`, starting
in thinking). The workload does not cap anything: the simulator enforces the budget through
`orchestrator.budget` (`simulations.budgets`), where the engine-side controller forces the end of
thinking at the cap and the answer follows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from orchestrator.errors import ConfigError
from orchestrator.request import Budget
from simulations.request import SimRequest
from simulations.traces import TraceRequest, read_trace, scale_rate

SHAPES = {"chat": (1024, 1024), "reasoning": (1024, 8192), "summarisation": (8192, 1024)}
REPO = Path(__file__).resolve().parents[1]
TRACE_DIRS = (REPO / "simulations" / "data" / "traces", REPO.parent / "shared" / "data" / "traces")
TRACE_NAMES = {"azure_conv": "azure2023_conv.csv", "azure_code": "azure2023_code.csv",
               "mooncake_conversation": "mooncake_conversation_trace.jsonl",
               "mooncake_synthetic": "mooncake_synthetic_trace.jsonl"}


@dataclass(frozen=True)
class BudgetMix:
    """A share of requests that think at length before answering, under a thinking cap."""

    thinking_share: float = 0.0
    thinking_mean_tokens: int = 4096
    max_thinking_tokens: int | None = 2048

    def __post_init__(self) -> None:
        if not 0 <= self.thinking_share <= 1:
            raise ConfigError(f"thinking share must be in [0, 1], got {self.thinking_share}")


def resolve_trace(name_or_path: str) -> Path:
    """A shipped trace by short name (`azure_conv`, ...) or a file path; ConfigError when absent."""
    if name_or_path in TRACE_NAMES:
        for folder in TRACE_DIRS:
            path = folder / TRACE_NAMES[name_or_path]
            if path.exists():
                return path
        raise ConfigError(f"trace {name_or_path} ({TRACE_NAMES[name_or_path]}) not found in "
                          f"{' or '.join(str(d) for d in TRACE_DIRS)}; pass its path with --trace FILE")
    path = Path(name_or_path)
    if not path.exists():
        raise ConfigError(f"trace file not found: {path} (shipped traces: {', '.join(sorted(TRACE_NAMES))})")
    return path


def from_trace(name_or_path: str, rate_scale: float = 1.0, limit: int | None = None,
               duration_s: float | None = None) -> list[SimRequest]:
    """Requests of a trace, `rate_scale` times as fast, cut to `limit` requests or `duration_s` seconds."""
    trace = scale_rate(read_trace(resolve_trace(name_or_path), limit), rate_scale)
    if duration_s is not None:
        trace = [t for t in trace if t.arrival_s < duration_s]
    return to_requests(trace)


def to_requests(trace: Sequence[TraceRequest]) -> list[SimRequest]:
    """Simulator requests from trace records (zero-length prompts or outputs count as one token)."""
    return [SimRequest(i, t.arrival_s, max(t.prompt_tokens, 1), max(t.output_tokens, 1), t.prefix_hash_ids,
                       t.prefix_block_tokens) for i, t in enumerate(trace)]


def parse_mix(text: str) -> dict[str, float]:
    """`chat` or `chat=0.7,reasoning=0.3` into shape weights; ConfigError naming the valid shapes."""
    weights: dict[str, float] = {}
    for part in text.split(","):
        name, _, weight = part.strip().partition("=")
        if name not in SHAPES:
            raise ConfigError(f"unknown workload shape {name!r}; valid: {', '.join(SHAPES)}")
        try:
            weights[name] = float(weight) if weight else 1.0
        except ValueError:
            raise ConfigError(f"bad weight {weight!r} for shape {name}") from None
    if sum(weights.values()) <= 0:
        raise ConfigError("workload weights must sum to a positive number")
    return weights


def synthetic(mix: dict[str, float], rate_rps: float, duration_s: float, spread: float = 0.3,
              budget: BudgetMix = BudgetMix(), seed: int = 0) -> list[SimRequest]:
    """Poisson arrivals at `rate_rps` for `duration_s`, shapes drawn by `mix` weights."""
    if rate_rps <= 0 or duration_s <= 0:
        raise ConfigError(f"rate and duration must be positive, got {rate_rps} req/s for {duration_s} s")
    rng = np.random.default_rng(seed)
    count = int(rng.poisson(rate_rps * duration_s))
    arrivals = np.sort(rng.uniform(0.0, duration_s, count))
    names = list(mix)
    picks = rng.choice(len(names), size=count, p=np.array([mix[n] for n in names]) / sum(mix.values()))
    requests = []
    for i, (arrival, pick) in enumerate(zip(arrivals, picks)):
        prompt_mean, output_mean = SHAPES[names[pick]]
        prompt, output = _lognormal(rng, prompt_mean, spread), _lognormal(rng, output_mean, spread)
        requests.append(_with_budget(SimRequest(i, float(arrival), prompt, output), budget, rng))
    return requests


def _lognormal(rng: np.random.Generator, mean: float, spread: float) -> int:
    if spread <= 0:
        return int(mean)
    sigma = math.sqrt(math.log(1 + spread * spread))
    return max(int(rng.lognormal(math.log(mean) - sigma * sigma / 2, sigma)), 1)


def _with_budget(request: SimRequest, budget: BudgetMix, rng: np.random.Generator) -> SimRequest:
    if budget.thinking_share <= 0 or rng.random() >= budget.thinking_share:
        return request
    thinking = _lognormal(rng, budget.thinking_mean_tokens, 0.5)
    request.thinking_tokens = thinking
    request.output_tokens += thinking
    request.budget = Budget(max_thinking_tokens=budget.max_thinking_tokens, start_thinking=True)
    return request


def apply_budget_mix(requests: list[SimRequest], budget: BudgetMix, seed: int = 0) -> list[SimRequest]:
    """Give a share of already-built (trace) requests a thinking phase under the cap."""
    rng = np.random.default_rng(seed)
    return [_with_budget(r, budget, rng) for r in requests]
