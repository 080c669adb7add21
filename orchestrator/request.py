"""The internal request and what flows back for it.

The API layer (gRPC, HTTP) converts its wire messages into a `Request` and does nothing else; the
gateway, router, budget module, workers and simulator all speak these types. Pure data: no I/O,
no Ray, no torch. Tokens are ints; text is already decoded.
"""

from __future__ import annotations

import enum
import time
import uuid
from dataclasses import dataclass, field, replace


class FinishReason(str, enum.Enum):
    """Why a request's stream ended (public: wire value is the lower-case name)."""

    STOP = "stop"
    LENGTH = "length"
    THINKING_BUDGET = "thinking_budget"
    TOTAL_BUDGET = "total_budget"
    DEADLINE = "deadline"
    COST_BUDGET = "cost_budget"
    CANCELLED = "cancelled"
    ERROR = "error"


@dataclass(frozen=True)
class Sampling:
    """Sampling controls, validated by `orchestrator.validation`."""

    max_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: off
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False


@dataclass(frozen=True)
class Budget:
    """One request's test-time-compute contract. None means "no limit beyond the tenant default"."""

    max_thinking_tokens: int | None = None
    min_thinking_tokens: int | None = None
    max_output_tokens: int | None = None
    max_total_tokens: int | None = None
    deadline_ms: float | None = None
    max_cost_usd: float | None = None
    max_energy_j: float | None = None
    priority: int = 0
    start_thinking: bool = False


@dataclass(frozen=True)
class ChatMessage:
    role: str
    content: str


@dataclass(frozen=True)
class Prompt:
    """Exactly one of text, token ids or chat messages."""

    text: str | None = None
    token_ids: tuple[int, ...] | None = None
    messages: tuple[ChatMessage, ...] | None = None


@dataclass(frozen=True)
class Request:
    """A request as the control plane sees it, after the API layer and before tokenization."""

    prompt: Prompt
    sampling: Sampling = field(default_factory=Sampling)
    budget: Budget = field(default_factory=Budget)
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    tenant: str = "default"
    model: str | None = None
    arrival_s: float = field(default_factory=time.monotonic)

    def with_id(self, request_id: str) -> Request:
        return replace(self, request_id=request_id)


@dataclass
class Usage:
    """What a request consumed; the final chunk of every stream carries it."""

    prompt_tokens: int = 0
    cached_tokens: int = 0
    thinking_tokens: int = 0
    output_tokens: int = 0
    energy_j: float = 0.0
    cost_usd: float = 0.0
    queue_ms: float = 0.0
    prefill_ms: float = 0.0
    transfer_ms: float = 0.0
    decode_ms: float = 0.0
    prefill_worker: str = ""
    decode_worker: str = ""
    kv_recomputed: bool = False
    prefill_skipped: bool = False
    prefill_reason: str = ""  # why the router prefilled where it did (the prefill pool, or the decode worker itself)

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.output_tokens


@dataclass
class GenerationChunk:
    """One piece of a response stream: new tokens and their text; the last one has finish_reason and usage."""

    request_id: str
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: FinishReason | None = None
    usage: Usage | None = None
    error: str | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None
