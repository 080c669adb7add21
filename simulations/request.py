"""A simulated request: its shape (from a trace or a synthetic mix) and the times of its life.

Life: arrives -> admitted (budget and quota, when budgets are on) -> routed (decode worker chosen,
prefill worker or none) -> prefill (first token) -> KV transfer -> joins a decode batch -> finishes.
A request that cannot be served is refused (`refusal` says by whom) and counted, never dropped. The
times recorded are the ones the metrics need.
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
    thinking_tokens: int = 0  # of output_tokens, the part the model would spend thinking if not capped
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
    refusal: str = ""  # "capacity", "budget" or "quota" when the request was refused
    num_finishes: int = 0  # must end at 1: the loop's invariant
    energy_j: float = 0.0
    cost_usd: float = 0.0
    cancelled: bool = False  # stopped by its budget while an engine still held it: engines drop it
    stage: str = ""  # "prefill", "transfer" or "decode" while an engine holds it
    meter: object = None  # the request's orchestrator.budget.BudgetMeter (budgets on)
    stream: list[int] | None = None  # the token ids it will generate (budgets on)
    num_charged: int = 0  # of `stream`, the tokens already charged to the meter
    thinking_capped: bool = False  # the engine-side controller forced its thinking span closed

    @property
    def finished(self) -> bool:
        return self.finish_s >= 0

    @property
    def served(self) -> bool:
        """Finished with at least its first token (not refused, not stopped before it)."""
        return (self.finish_s >= 0 and not self.refusal and self.output_tokens >= 1
                and 0 <= self.first_token_s <= self.finish_s)

    @property
    def ttft_s(self) -> float:
        return self.first_token_s - self.arrival_s

    @property
    def tpot_s(self) -> float:
        """Mean time per output token after the first (0 for one-token outputs)."""
        if self.output_tokens <= 1:
            return 0.0
        return (self.finish_s - self.first_token_s) / (self.output_tokens - 1)
