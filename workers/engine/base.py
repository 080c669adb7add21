"""The contract every engine adapter implements, and the plain data that crosses it.

Who calls it: the worker actor (`workers.actor.WorkerActor`), from its asyncio event loop. One engine
per worker; the engine may run its own threads or processes (vLLM runs an EngineCore process).

Life of a request in an engine:
1. `generate(request)` returns an async iterator of `EngineOutput`s, one per engine step that produced
   tokens for it; the last one has `finished` set with a `finish_reason`.
2. A request with `kv_push` sends the KV of its prompt, layer by layer as it is computed, to the decode
   worker at `kv_push.endpoint` (a prefill request: `max_tokens` is 1).
3. A request with `kv_receive` gets the KV of its first `kv_receive.num_prompt_tokens` tokens from a
   transfer instead of computing them; a lost, late or corrupt transfer makes the engine recompute
   them, and `EngineOutput.kv` of the first output says which happened.
4. Closing the iterator early, or `abort(request_id)`, stops the request and frees its KV blocks.
Token ids only: engines do not detokenize (the gateway does, once, for the whole stream).
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from dataclasses import dataclass, field


@dataclass(frozen=True)
class KVPush:
    """Prefill side: send this request's prompt KV to a decode worker's receiver."""

    transfer_id: str
    endpoint: str  # zmq://host:port or grpc://host:port of the decode worker
    num_prompt_tokens: int
    control_endpoint: str = ""  # grpc://host:port of the decode worker's KV control service
    fault: str = ""  # chaos testing only (`workers.kv.faults`): "corrupt" one frame, "drop" or "stall" the transfer
    stall_s: float = 0.0  # a "stall": how long the sender holds the frames


@dataclass(frozen=True)
class KVReceive:
    """Decode side: the KV of the first `num_prompt_tokens` tokens arrives as transfer `transfer_id`."""

    transfer_id: str
    num_prompt_tokens: int


@dataclass(frozen=True)
class ThinkingLimits:
    """A request's thinking span limits, as token ids (the engine forces or bans tokens to hold them)."""

    start_ids: tuple[int, ...]
    end_ids: tuple[int, ...]
    max_thinking_tokens: int | None = None
    min_thinking_tokens: int | None = None
    wait_ids: tuple[int, ...] = ()  # forced instead of an early end delimiter
    close_prefix_ids: tuple[int, ...] = ()  # forced before the end delimiter at the cap (counts as thinking)
    start_thinking: bool = False


@dataclass(frozen=True)
class EngineRequest:
    """One request as an engine runs it: token ids in, token ids out."""

    request_id: str
    prompt_ids: tuple[int, ...]
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    ignore_eos: bool = False
    thinking: ThinkingLimits | None = None
    # When the prompt is the original prompt followed by tokens generated elsewhere (after a prefill
    # worker's first token, or after a migration): the original prompt's length. Those tokens count
    # as generated for the thinking limits.
    num_original_prompt_tokens: int | None = None
    kv_push: KVPush | None = None
    kv_receive: KVReceive | None = None
    trace: dict[str, str] = field(default_factory=dict)  # W3C trace context of the request's span


@dataclass(frozen=True)
class KVOutcome:
    """How a receive ended: the KV arrived whole, or it was recomputed (and why)."""

    complete: bool
    bytes: int = 0
    seconds: float = 0.0  # first frame to last frame
    failure: str = ""


@dataclass
class EngineOutput:
    """New tokens of one step; the last output of a request has `finished` and `finish_reason`."""

    token_ids: list[int]
    finished: bool = False
    finish_reason: str | None = None  # "stop" (EOS / stop token), "length", "abort"
    num_cached_tokens: int = 0  # prompt tokens this engine found in its prefix cache
    kv: KVOutcome | None = None  # on the first output of a request with kv_receive


@dataclass(frozen=True)
class EngineStats:
    """Load of one engine, as the router and the planner read it."""

    num_running: int = 0
    num_waiting: int = 0
    kv_usage: float = 0.0  # fraction of KV blocks held by requests
    num_free_blocks: int = 0
    num_total_blocks: int = 0
    itl_ms: float = 0.0  # median gap between a request's tokens as the engine made them, lately (0: none yet)


@dataclass(frozen=True)
class EngineHealth:
    """Whether the engine can serve: its processes live and its steps advance. `reason` says why not."""

    alive: bool = True
    reason: str = ""


@dataclass(frozen=True)
class EngineInfo:
    """What the control plane needs to know about an engine once it started."""

    max_model_len: int
    block_size: int
    num_total_blocks: int
    kv_bytes_per_token: int
    kv_endpoints: dict[str, str] = field(default_factory=dict)  # transport -> where this engine receives KV
    kv_control_endpoint: str | None = None  # gRPC control (abort, stats) of the receiver
    dtype: str = ""  # the weights' and KV cache's dtype the engine resolved (`model.dtype: auto` made concrete)

    def kv_endpoint(self, transport: str) -> str:
        """The receiving endpoint for `transport` (`zmq` | `grpc`). Raises EngineError if it has none."""
        if transport not in self.kv_endpoints:
            raise EngineError(f"this engine receives no KV over {transport!r} (it has {sorted(self.kv_endpoints)})")
        return self.kv_endpoints[transport]


class EngineError(Exception):
    """The engine failed (not the request's fault): the worker reports it and the gateway retries elsewhere."""


class BaseEngine(abc.ABC):
    """An inference engine hosted by one worker."""

    @abc.abstractmethod
    async def start(self) -> EngineInfo:
        """Load the model and allocate the KV cache; returns once requests can be served.

        Raises EngineError when the engine cannot start (model missing, out of memory)."""

    @abc.abstractmethod
    def generate(self, request: EngineRequest) -> AsyncIterator[EngineOutput]:
        """Run one request (see the module docstring). Raises EngineError if the engine died."""

    @abc.abstractmethod
    async def abort(self, request_id: str) -> None:
        """Stop a request and free its blocks; a no-op for unknown or finished requests."""

    @abc.abstractmethod
    def stats(self) -> EngineStats:
        """The latest load figures (cheap, non-blocking)."""

    async def kv_outcome(self, transfer_id: str) -> KVOutcome | None:
        """How a transfer this engine received ended (None: unknown yet). Engines without KV transfer: None."""
        return None

    def health(self, stall_timeout_s: float) -> EngineHealth:
        """Cheap, non-blocking: dead when an engine process exited or the engine failed; dead too when it
        holds unfinished requests and made no step for `stall_timeout_s` (wedged). Engines that run in
        the worker's own process: always alive (the worker's liveness is theirs)."""
        return EngineHealth()

    def kv_counters(self) -> dict[str, float]:
        """Cumulative KV transfer counters of this engine (names of `GetTransferStatsResponse`); {} if none."""
        return {}

    @abc.abstractmethod
    async def shutdown(self) -> None:
        """Stop the engine and release its processes, threads and sockets."""
