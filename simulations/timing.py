"""Step-time prediction: how long one engine step takes, kept apart from the scheduling that forms steps.

Three predictors share one interface (`BaseTiming`):
- `RooflineTiming`: FLOPs and HBM bytes of the step from the model's shape, against the accelerator's
  peaks times efficiency factors, plus tensor-parallel all-reduces and a fixed per-step overhead.
- `CoefficientTiming`: user-given (or DistServe-fitted) coefficients,
  prefill ms = a + b*sum(len) + c*sum(len^2), decode ms = a + b*sum(context) + c*batch.
- `ProfileTiming` (in `simulations.profile`): a measured `orchestrator.profiles.EngineProfile`.

A step is a list of prefill chunks `(new_tokens, past_tokens)` plus a decode batch of `batch` requests
whose contexts sum to `sum_context`. A decode step's time is a maximum of at most two lines in the step
index while the batch stays the same (context grows by `batch` per step), so spans of many steps have
closed forms (`decode_span_ms`): the event loop advances decode in one event per batch change.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from orchestrator.errors import ConfigError
from simulations.hardware import Accelerator
from simulations.models import ModelShape

Chunk = tuple[int, int]  # (new tokens computed this step, tokens of the same request already in KV)
Line = tuple[float, float]  # step ms = intercept + slope * step_index


class BaseTiming:
    """Step-time predictor. Subclasses give `prefill_ms`, `decode_lines` and `kv_capacity_tokens`."""

    def prefill_ms(self, chunks: Sequence[Chunk]) -> float:
        """Time of one step computing these prompt chunks (no decode requests in it)."""
        raise NotImplementedError

    def decode_lines(self, batch: int, sum_context: int) -> tuple[Line, ...]:
        """Decode step j's time is max over these lines of intercept + slope*j (j = 0 is this step)."""
        raise NotImplementedError

    def mixed_ms(self, chunks: Sequence[Chunk], batch: int, sum_context: int) -> float:
        """One chunked-prefill step: prompt chunks and a decode batch together."""
        if not chunks:
            return self.decode_ms(batch, sum_context)
        if batch == 0:
            return self.prefill_ms(chunks)
        return self.prefill_ms(chunks) + self.decode_ms(batch, sum_context) - self.step_overhead_ms()

    def step_overhead_ms(self) -> float:
        """The fixed part of a step, counted once in a mixed step."""
        return 0.0

    def kv_capacity_tokens(self) -> int:
        """KV cache tokens one engine holds (all its GPUs together)."""
        raise NotImplementedError

    def decode_ms(self, batch: int, sum_context: int) -> float:
        return max(a for a, _ in self.decode_lines(batch, sum_context))

    def decode_span_ms(self, batch: int, sum_context: int, steps: int) -> float:
        """Total time of `steps` consecutive decode steps of an unchanged batch."""
        return span_ms(self.decode_lines(batch, sum_context), steps)

    def decode_steps_within(self, batch: int, sum_context: int, elapsed_ms: float, limit: int) -> int:
        """How many whole decode steps (at most `limit`) finish within `elapsed_ms`."""
        lines = self.decode_lines(batch, sum_context)
        lo, hi = 0, limit
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if span_ms(lines, mid) <= elapsed_ms + 1e-9:
                lo = mid
            else:
                hi = mid - 1
        return lo


def _line_sum(line: Line, lo: int, hi: int) -> float:
    """Sum of intercept + slope*j for j in [lo, hi)."""
    a, b = line
    return (hi - lo) * a + b * (hi * (hi - 1) - lo * (lo - 1)) / 2.0


def span_ms(lines: Sequence[Line], steps: int) -> float:
    """Sum over j < steps of max over `lines` (one or two) of intercept + slope*j, in closed form."""
    if steps <= 0:
        return 0.0
    if len(lines) == 1:
        return _line_sum(lines[0], 0, steps)
    if len(lines) != 2:
        return sum(max(a + b * j for a, b in lines) for j in range(steps))
    (a1, b1), (a2, b2) = sorted(lines, key=lambda line: line[1])  # line 2 grows faster
    if b2 == b1:
        return _line_sum((max(a1, a2), b1), 0, steps)
    crossing = (a1 - a2) / (b2 - b1)  # from here on line 2 dominates
    split = min(max(math.ceil(crossing), 0), steps)
    return _line_sum((a1, b1), 0, split) + _line_sum((a2, b2), split, steps)


@dataclass(frozen=True)
class Efficiency:
    """How far below peak real kernels run (defaults from Vidur's H100 profiles: GEMMs at ~70% of peak,
    weight-bound steps at ~90% of HBM bandwidth), and fixed costs."""

    compute: float = 0.70
    bandwidth: float = 0.90
    step_overhead_ms: float = 0.5
    allreduce_latency_us: float = 8.0
    memory_utilization: float = 0.90


@dataclass(frozen=True)
class RooflineTiming(BaseTiming):
    """Roofline of one engine: `model` on `tp` GPUs of kind `accelerator`.

    `prefill_clock` and `decode_clock` (<= 1) scale compute throughput per phase (a power cap slows
    the clocks of a phase whose draw exceeds the cap; see `simulations.power`).
    """

    model: ModelShape
    accelerator: Accelerator
    tp: int = 1
    efficiency: Efficiency = Efficiency()
    prefill_clock: float = 1.0
    decode_clock: float = 1.0

    def __post_init__(self) -> None:
        if self.tp < 1:
            raise ConfigError(f"tensor parallel degree must be >= 1, got {self.tp}")

    # FLOPs and bytes ---------------------------------------------------------------------------
    def _attention_flops(self, context_tokens: float, sliding_context_tokens: float) -> float:
        """QK^T and AV FLOPs for the given sums of attended tokens over full and sliding layers."""
        m = self.model
        per_token_layer = 4.0 * m.num_heads * m.head_dim
        full_layers = m.num_layers - m.num_sliding_layers
        return per_token_layer * (full_layers * context_tokens + m.num_sliding_layers * sliding_context_tokens)

    def _prefill_attention(self, chunks: Sequence[Chunk]) -> tuple[float, float]:
        """(sum of attended tokens, same for sliding layers) over every new token of the chunks."""
        window = self.model.sliding_window or 0
        full = sliding = 0.0
        for new, past in chunks:
            full += new * past + new * (new + 1) / 2.0
            sliding += new * min(past + new, window) if window else 0.0
        return full, sliding

    def _kv_read_bytes(self, sum_context: float, batch: int) -> float:
        m = self.model
        per_layer = m.kv_bytes_per_token / m.num_layers
        full_layers = m.num_layers - m.num_sliding_layers
        sliding = min(sum_context, batch * (m.sliding_window or 0)) if m.num_sliding_layers else 0.0
        return per_layer * (full_layers * sum_context + m.num_sliding_layers * sliding)

    def _comm_ms(self, tokens: int) -> float:
        """Two all-reduces per layer (after attention, after the MLP) of the step's activations."""
        if self.tp == 1:
            return 0.0
        a = self.accelerator
        message = tokens * self.model.hidden_size * 2.0
        bandwidth = a.scale_up_bytes_per_s or a.scale_out_bytes_per_s
        one = self.efficiency.allreduce_latency_us * 1e-3 + 2.0 * (self.tp - 1) / self.tp * message / bandwidth * 1e3
        return 2 * self.model.num_layers * one

    def _compute_ms(self, flops: float, clock: float) -> float:
        peak = self.accelerator.flops(self.model.compute_dtype) * self.tp * self.efficiency.compute * clock
        return flops / peak * 1e3

    def _memory_ms(self, num_bytes: float) -> float:
        return num_bytes / (self.accelerator.hbm_bytes_per_s * self.tp * self.efficiency.bandwidth) * 1e3

    # Interface ---------------------------------------------------------------------------------
    def step_overhead_ms(self) -> float:
        return self.efficiency.step_overhead_ms

    def prefill_ms(self, chunks: Sequence[Chunk]) -> float:
        return self.mixed_ms(chunks, 0, 0)

    def mixed_ms(self, chunks: Sequence[Chunk], batch: int, sum_context: int) -> float:
        m = self.model
        new_tokens = sum(n for n, _ in chunks) + batch
        if new_tokens == 0:
            return 0.0
        full, sliding = self._prefill_attention(chunks)
        window = m.sliding_window or 0
        decode_sliding = min(sum_context, batch * window)
        flops = 2.0 * m.active_params * new_tokens + self._attention_flops(full + sum_context, sliding + decode_sliding)
        past = sum(p for _, p in chunks)
        kv_bytes = self._kv_read_bytes(sum_context + past, batch + len(chunks)) + new_tokens * m.kv_bytes_per_token
        memory = m.weight_bytes_read(new_tokens) + kv_bytes
        clock = self.prefill_clock if chunks else self.decode_clock
        return (max(self._compute_ms(flops, clock), self._memory_ms(memory)) + self._comm_ms(new_tokens)
                + self.efficiency.step_overhead_ms)

    def decode_lines(self, batch: int, sum_context: int) -> tuple[Line, ...]:
        """Compute and memory time are each affine in the context while no request joins or leaves."""
        m = self.model
        fixed = self._comm_ms(batch) + self.efficiency.step_overhead_ms
        if m.num_sliding_layers:  # sliding layers stop growing once the window is full: linearise at the start
            kv_per_context = self._kv_read_bytes(sum_context + batch, batch) - self._kv_read_bytes(sum_context, batch)
        else:
            kv_per_context = m.kv_bytes_per_token * batch
        flops0 = 2.0 * m.active_params * batch + self._attention_flops(sum_context, min(sum_context, batch * (m.sliding_window or 0)))
        flops_slope = self._attention_flops(batch, 0.0)  # sliding layers' share stops growing at the window
        bytes0 = m.weight_bytes_read(batch) + self._kv_read_bytes(sum_context, batch) + batch * m.kv_bytes_per_token
        compute = (fixed + self._compute_ms(flops0, self.decode_clock), self._compute_ms(flops_slope, self.decode_clock))
        memory = (fixed + self._memory_ms(bytes0), self._memory_ms(kv_per_context))
        return (compute, memory)

    def kv_capacity_tokens(self) -> int:
        a, m = self.accelerator, self.model
        free = a.hbm_bytes * self.tp * self.efficiency.memory_utilization - m.weight_bytes
        return max(int(free / m.kv_bytes_per_token), 0)


@dataclass(frozen=True)
class CoefficientTiming(BaseTiming):
    """prefill ms = a + b*sum(len) + c*sum(len^2) over new tokens; decode ms = a + b*sum(context) + c*batch."""

    prefill_a: float
    prefill_b: float
    prefill_c: float
    decode_a: float
    decode_b: float
    decode_c: float
    kv_tokens: int = 1_000_000

    def prefill_ms(self, chunks: Sequence[Chunk]) -> float:
        lengths = [n for n, _ in chunks]
        return self.prefill_a + self.prefill_b * sum(lengths) + self.prefill_c * sum(n * n for n in lengths)

    def step_overhead_ms(self) -> float:
        return min(self.prefill_a, self.decode_a)

    def decode_lines(self, batch: int, sum_context: int) -> tuple[Line, ...]:
        return ((self.decode_a + self.decode_b * sum_context + self.decode_c * batch, self.decode_b * batch),)

    def kv_capacity_tokens(self) -> int:
        return self.kv_tokens
