"""What happened to one benchmark request: its timings, tokens, server usage or failure.

Times are `time.perf_counter()` seconds taken on the client's event loop as each event arrives. An
outcome is either a success (`error_reason` is None) or a counted failure with its reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Outcome:
    """One request's record. `token_times_s[i]` is when `token_counts[i]` new tokens arrived."""

    index: int
    phase: int
    scheduled_s: float  # arrival time in the schedule, from the run's start
    prompt_tokens: int
    expected_output_tokens: int
    start_s: float = 0.0  # perf_counter when the request was sent
    end_s: float = 0.0  # perf_counter when its stream ended (or it failed)
    dispatch_lag_ms: float = 0.0  # how late the client sent it against the schedule
    token_times_s: list[float] = field(default_factory=list)
    token_counts: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None
    error_reason: str | None = None
    error_message: str | None = None

    @property
    def ok(self) -> bool:
        return self.error_reason is None

    @property
    def output_tokens(self) -> int:
        """Output tokens as the server counted them (usage), else as the client received them."""
        if self.usage and self.usage.get("output_tokens") is not None:
            return int(self.usage["output_tokens"])
        return sum(self.token_counts)

    @property
    def ttft_ms(self) -> float | None:
        return (self.token_times_s[0] - self.start_s) * 1e3 if self.token_times_s else None

    @property
    def tpot_ms(self) -> float | None:
        """(last token time - first token time) / (tokens - 1); None below 2 tokens."""
        if not self.token_times_s or self.output_tokens < 2:
            return None
        return (self.token_times_s[-1] - self.token_times_s[0]) * 1e3 / (self.output_tokens - 1)

    @property
    def e2e_ms(self) -> float:
        return (self.end_s - self.start_s) * 1e3

    @property
    def itl_ms(self) -> list[float]:
        """Gaps between token arrivals; a gap that brought k tokens counts as k gaps of gap/k."""
        gaps: list[float] = []
        for i in range(1, len(self.token_times_s)):
            count = max(self.token_counts[i], 1)
            gaps.extend([(self.token_times_s[i] - self.token_times_s[i - 1]) * 1e3 / count] * count)
        return gaps

    @property
    def gaps_ms(self) -> list[float]:
        """Gaps between message arrivals as they are, however many tokens each message brought: a stream
        that delivers in bursts shows near-zero gaps and long ones here, where `itl_ms` evens them out."""
        return [(b - a) * 1e3 for a, b in zip(self.token_times_s, self.token_times_s[1:])]

    def fail(self, reason: str, message: str, end_s: float) -> None:
        """Mark this request failed (the first failure wins)."""
        if self.error_reason is None:
            self.error_reason, self.error_message = reason, message
        self.end_s = end_s

    def summary(self) -> dict[str, Any]:
        """The per-request row of the JSON report (no per-token lists)."""
        return {
            "index": self.index, "phase": self.phase, "scheduled_s": round(self.scheduled_s, 6),
            "prompt_tokens": self.prompt_tokens, "expected_output_tokens": self.expected_output_tokens,
            "output_tokens": self.output_tokens, "ok": self.ok, "ttft_ms": _round(self.ttft_ms),
            "tpot_ms": _round(self.tpot_ms), "e2e_ms": _round(self.e2e_ms),
            "dispatch_lag_ms": _round(self.dispatch_lag_ms),
            "finish_reason": self.finish_reason,
            "error_reason": self.error_reason, "error_message": self.error_message, "usage": self.usage,
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)
