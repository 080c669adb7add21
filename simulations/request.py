"""A simulated request: its shape (from a trace or a synthetic mix) and the times of its life.

Life: arrives -> routed (decode worker chosen, prefill worker or none) -> prefill (first token) ->
KV transfer -> joins a decode batch -> finishes. The times recorded are the ones the metrics need.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from orchestrator.request import Budget


@dataclass(slots=True, eq=False)
class SimRequest:
    """Mutable per-request state of one simulation run."""

    request_id: int
    arrival_s: float
    prompt_tokens: int
    output_tokens: int
    hash_ids: tuple[int, ...] = ()
    block_tokens: int = 512
    thinking_tokens: int = 0  # of output_tokens, the part spent thinking
    budget: Budget = field(default_factory=Budget)
    tenant: str = "default"
    # Set during the run.
    cached_tokens: int = 0  # prompt tokens not computed (a prefix cache held them)
    transfer_skip_tokens: int = 0  # prompt tokens whose KV the decode engine already held
    prefill_left: int = 0
    remaining: int = 0
    context: int = 0
    kv_reserved: int = 0
    prefill_worker: str = ""
    decode_worker: str = ""
    prefill_skipped: bool = False
    prefill_start_s: float = -1.0
    first_token_s: float = -1.0
    transfer_done_s: float = -1.0
    finish_s: float = -1.0
    finish_reason: str = ""
    error: str = ""
    num_finishes: int = 0  # must end at 1: the loop's invariant
    energy_j: float = 0.0
    cost_usd: float = 0.0

    @property
    def finished(self) -> bool:
        return self.finish_s >= 0

    @property
    def ttft_s(self) -> float:
        return self.first_token_s - self.arrival_s

    @property
    def tpot_s(self) -> float:
        """Mean time per output token after the first (0 for one-token outputs)."""
        if self.output_tokens <= 1:
            return 0.0
        return (self.finish_s - self.first_token_s) / (self.output_tokens - 1)
