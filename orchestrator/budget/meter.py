"""Per-request budget accounting: every generated token is charged before the client sees it.

Life of a meter (one per admitted request; the gateway and the simulator drive it the same way):
1. `BudgetMeter(admission, think_start_ids, think_end_ids, prompt_ids=..., now_s=...)`: starts in the `queue` phase with
   the prefill charge (computed prompt tokens x prefill price and energy) already counted.
2. `enter(phase, now_s)` as the request moves: `prefill`, `transfer`, `decode` (for the usage times);
   `observe_cached(n)` once the router knows how much of the prompt a cache held (cheaper prefill).
3. `charge(meter, new_tokens, now_s) -> Verdict` for each batch of generated tokens (one per decode
   step, or a streamed chunk), and `charge(meter, [], now_s)` from a timer while no token comes
   (queue, prefill, transfer) so that the deadline holds there too. The verdict says how many of the
   new tokens fit (`num_accepted`: send those, drop the rest) and whether to stop, with the reason.
4. `finish(reason, now_s)` when the engine ends the request itself (stop token, cancel, error);
   `usage` is then final.

Limits, checked before a token is accepted (a token that would exceed one is not accepted):
- `length`: generated tokens (thinking included) reach min(sampling max_tokens, max_output_tokens);
- `total_budget`: prompt + generated tokens reach max_total_tokens;
- `cost_budget`: the next decode token would take cost over max_cost_usd or energy over max_energy_j;
- `deadline`: a charge at or after the deadline accepts nothing (a stop within one step);
- thinking: not a stop. The engine closes the span at max_thinking_tokens (budget forcing); the
  verdict's `thinking_capped` says when the cap was reached. Only if an engine fails to close it and a
  token would take thinking past the cap does the meter stop the request with `thinking_budget`.
After accepting tokens the meter also stops at once when no further token could fit, so the engine is
not asked for a step whose token would be refused.
Pure: no I/O, no asyncio, the clock is passed in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from orchestrator.budget.admission import Admission, compute_prefill_charge
from orchestrator.budget.thinking import ThinkingTracker, starts_in_thinking
from orchestrator.request import FinishReason, Usage

PHASES = ("queue", "prefill", "transfer", "decode")


@dataclass(frozen=True)
class Verdict:
    """What to do with a batch of new tokens."""

    num_accepted: int  # the leading new tokens within budget; the rest must not reach the client
    finish_reason: FinishReason | None = None  # None: continue
    thinking_capped: bool = False  # thinking reached max_thinking_tokens on this charge (engine closes it)
    cost_usd: float = 0.0  # price of the accepted tokens (decode tier)
    energy_j: float = 0.0

    @property
    def stop(self) -> bool:
        return self.finish_reason is not None


class BudgetMeter:
    """One request's running account against its effective budget."""

    def __init__(self, admission: Admission, think_start_ids: Sequence[int], think_end_ids: Sequence[int],
                 *, prompt_ids: Sequence[int] | None = None, now_s: float | None = None) -> None:
        """`prompt_ids` (optional): a prompt ending with the start delimiter starts in thinking even
        without `budget.start_thinking`, as the engine-side processor decides. `now_s`: when the
        queue phase began (default: admission time)."""
        self.admission = admission
        self.budget = admission.budget
        thinking = starts_in_thinking(prompt_ids, think_start_ids, admission.budget.start_thinking)
        self.tracker = ThinkingTracker(think_start_ids, think_end_ids, thinking=thinking)
        self.num_cached_tokens = admission.num_cached_tokens
        self.num_output_tokens = 0
        self.decode_cost_usd = 0.0
        self.decode_energy_j = 0.0
        self.finish_reason: FinishReason | None = None
        self.thinking_capped = False
        self._phase = "queue"
        self._phase_since_s = admission.admitted_s if now_s is None else now_s
        self._phase_ms = dict.fromkeys(PHASES, 0.0)

    # -- accounting -------------------------------------------------------------------------

    @property
    def prefill_cost_usd(self) -> float:
        return compute_prefill_charge(self.admission.num_prompt_tokens, self.num_cached_tokens, self.admission.pricing)[0]

    @property
    def prefill_energy_j(self) -> float:
        return compute_prefill_charge(self.admission.num_prompt_tokens, self.num_cached_tokens, self.admission.pricing)[1]

    @property
    def cost_usd(self) -> float:
        return self.prefill_cost_usd + self.decode_cost_usd

    @property
    def energy_j(self) -> float:
        return self.prefill_energy_j + self.decode_energy_j

    @property
    def cost_usd_by_tier(self) -> dict[str, float]:
        return {"prefill": self.prefill_cost_usd, "decode": self.decode_cost_usd}

    @property
    def tokens_by_tier(self) -> dict[str, int]:
        return {"prefill": max(self.admission.num_prompt_tokens - self.num_cached_tokens, 0), "decode": self.num_output_tokens}

    @property
    def num_thinking_tokens(self) -> int:
        return self.tracker.num_thinking_tokens

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    @property
    def usage(self) -> Usage:
        """The usage so far (final once finished); phase times include the current phase up to its last event."""
        return Usage(
            prompt_tokens=self.admission.num_prompt_tokens,
            cached_tokens=self.num_cached_tokens,
            thinking_tokens=self.num_thinking_tokens,
            output_tokens=self.num_output_tokens,
            energy_j=self.energy_j,
            cost_usd=self.cost_usd,
            queue_ms=self._phase_ms["queue"],
            prefill_ms=self._phase_ms["prefill"],
            transfer_ms=self._phase_ms["transfer"],
            decode_ms=self._phase_ms["decode"],
        )

    def time_left_s(self, now_s: float) -> float:
        """Seconds until the deadline (math.inf: none); for the caller's timer."""
        return self.admission.deadline_s - now_s

    # -- events ----------------------------------------------------------------------------

    def enter(self, phase: str, now_s: float) -> None:
        """The request moved to `phase` (one of PHASES) at `now_s`."""
        if phase not in PHASES:
            raise ValueError(f"unknown phase {phase!r}; expected one of {PHASES}")
        self._close_phase(now_s)
        self._phase = phase

    def observe_cached(self, num_cached_tokens: int) -> None:
        """The prefill found this many prompt tokens in a cache: they are not computed nor charged."""
        self.num_cached_tokens = min(max(num_cached_tokens, 0), self.admission.num_prompt_tokens)

    def finish(self, reason: FinishReason, now_s: float) -> None:
        """End the request (the engine stopped, the client cancelled, an error); the first reason wins."""
        if self.finish_reason is None:
            self.finish_reason = reason
            self._close_phase(now_s)

    def charge(self, new_tokens: Sequence[int], now_s: float) -> Verdict:
        """Charge newly generated tokens; see the module docstring. Idempotent once finished."""
        if self.finish_reason is not None:
            return Verdict(0, self.finish_reason)
        if now_s >= self.admission.deadline_s:
            return self._stop(0, FinishReason.DEADLINE, now_s, 0.0, 0.0, False)
        pricing = self.admission.pricing
        capped_before = self.thinking_capped
        cost_before, energy_before = self.decode_cost_usd, self.decode_energy_j
        for index, token_id in enumerate(new_tokens):
            reason = self._refusal(token_id)
            if reason is not None:
                return self._stop(index, reason, now_s, cost_before, energy_before, capped_before)
            self.tracker.observe(token_id)
            self.num_output_tokens += 1
            self.decode_cost_usd += pricing.decode_usd_per_token
            self.decode_energy_j += pricing.decode_j_per_token
            self._observe_thinking_cap()
        reason = self._exhausted()
        if reason is not None:
            return self._stop(len(new_tokens), reason, now_s, cost_before, energy_before, capped_before)
        return Verdict(len(new_tokens), None, self.thinking_capped and not capped_before,
                       self.decode_cost_usd - cost_before, self.decode_energy_j - energy_before)

    # -- limits ----------------------------------------------------------------------------

    def _refusal(self, token_id: int) -> FinishReason | None:
        """Why the next token, `token_id`, cannot be accepted (None: it can)."""
        reason = self._exhausted()
        if reason is not None:
            return reason
        cap = self.budget.max_thinking_tokens
        if cap is not None and self.tracker.in_thinking:
            probe = self.tracker.copy()
            probe.observe(token_id)
            if probe.num_thinking_tokens > cap:
                return FinishReason.THINKING_BUDGET
        return None

    def _exhausted(self) -> FinishReason | None:
        """Why no further token can fit (None: one more can)."""
        budget, pricing = self.budget, self.admission.pricing
        limit = self.admission.max_output_tokens
        if limit is not None and self.num_output_tokens >= limit:
            # The total-token budget is the binding limit when it is what made the output limit.
            if budget.max_total_tokens is not None and self.admission.num_prompt_tokens + self.num_output_tokens >= budget.max_total_tokens:
                return FinishReason.TOTAL_BUDGET
            return FinishReason.LENGTH
        if budget.max_cost_usd is not None and self.cost_usd + pricing.decode_usd_per_token > budget.max_cost_usd * (1 + 1e-12):
            return FinishReason.COST_BUDGET
        if budget.max_energy_j is not None and self.energy_j + pricing.decode_j_per_token > budget.max_energy_j * (1 + 1e-12):
            return FinishReason.COST_BUDGET
        return None

    def _observe_thinking_cap(self) -> None:
        cap = self.budget.max_thinking_tokens
        if cap is not None and not self.thinking_capped and self.tracker.in_thinking and self.tracker.num_used_tokens >= cap:
            self.thinking_capped = True

    def _stop(self, num_accepted: int, reason: FinishReason, now_s: float, cost_before: float,
              energy_before: float, capped_before: bool) -> Verdict:
        self.finish(reason, now_s)
        return Verdict(num_accepted, reason, self.thinking_capped and not capped_before,
                       self.decode_cost_usd - cost_before, self.decode_energy_j - energy_before)

    def _close_phase(self, now_s: float) -> None:
        self._phase_ms[self._phase] += max(now_s - self._phase_since_s, 0.0) * 1000.0
        self._phase_since_s = now_s


def charge(meter: BudgetMeter, new_tokens: Sequence[int], now_s: float) -> Verdict:
    """Charge `new_tokens` generated by `meter`'s request at `now_s` (see `BudgetMeter.charge`)."""
    return meter.charge(new_tokens, now_s)


__all__ = ["PHASES", "BudgetMeter", "Verdict", "charge"]
