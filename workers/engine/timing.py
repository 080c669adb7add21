"""The timing engine: an engine with no weights whose steps take the time a profile predicts.

It lets the control plane (Ray actors, gateway, router, planner, budgets) run with dozens of workers on
two cores. Never the default (`engine.kind: timing` with `engine.profile: FILE`).

What is real: the worker actors around it, the continuous-batching scheduler's decisions (batch
limits, chunked prefill, KV block allocation, recompute preemption), and the KV transfer: a prefill
engine's prompt KV is correctly sized bytes (`kv_bytes_per_token` of the profile, split over its
layers) that travel layer by layer over the real ZeroMQ or gRPC transport (`workers.kv.transport`)
into the blocks the decode engine allocated (`workers.kv.assembler`), with checksums, timeouts and a
recompute that costs the profiled prefill time when a transfer fails.
What is simulated: the model. Step durations come from the profile; tokens are deterministic
(`_Voice`); KV bytes carry a stamp (token id and layer at the start of each token's row) instead of
keys and values, which the receiver checks; there is no prefix cache (`num_cached_tokens` is 0);
temperature, top_p and top_k change nothing.

Life of a request:
1. `generate(request)` validates it (ValueError when it can never run here) and, once iterated,
   queues it as waiting.
2. The step loop (one asyncio task per engine; it sleeps on an event while there is no work):
   a. polls KV receives: a complete transfer makes its request runnable from the transferred tokens,
      a failed one (checksum, sender abort, timeout, wrong content) from token 0 (recompute);
   b. schedules (`_schedule`): running requests first (one token each when decoding, the next prompt
      chunk otherwise; a request that needs a block when none is free preempts the newest running
      one, which later recomputes), then waiting ones first come first served within `max_num_seqs`,
      `max_num_batched_tokens` and the free blocks. A request with `kv_receive` is admitted with
      blocks for its transferred tokens and waits for them without using the step;
   c. sleeps the predicted step time (`step_ms`), sending pushed prompts' KV layer by layer meanwhile;
   d. commits: computed tokens advance; each request whose prompt is done gets one token; requests
      end "length" at `max_tokens` (or `max_model_len`), "stop" when they emit `EOS_ID`.
3. `abort(request_id)`, or closing the iterator, frees the request's blocks at once (a receive's once
   the assembler has let go of them).

Tokens (`TimingTokenizer`, shared with the gateway): ids 0-255 are bytes (text prompts, chat, think
delimiters: `<think>` is 7 ids, as delimiters are several ids in SmolLM2), 256-8191 are words (what the
engine writes; the ids `pdserve bench` sends), 8192 is EOS.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import xxhash

from orchestrator.budget.thinking import Ban, Force, ThinkingController, ThinkingTracker, starts_in_thinking
from orchestrator.config import EngineConfig, ModelConfig
from orchestrator.errors import ConfigError, InvalidRequest
from orchestrator.profiles import EngineProfile
from orchestrator.request import Prompt
from workers.engine.base import (
    BaseEngine,
    EngineError,
    EngineInfo,
    EngineOutput,
    EngineRequest,
    EngineStats,
    KVOutcome,
)
from workers.kv.assembler import TransferAssembler
from workers.kv.auth import KVAuth
from workers.kv.service import KVTransferService, serve_kv_service
from workers.kv.transport import KVSenders, OutgoingFrame, ZmqReceiver
from workers.kv.zmtp import ZmtpReceiver
from workers.kv.wire import Payload, payload_parts

log = logging.getLogger(__name__)

# ---- the vocabulary ---------------------------------------------------------------------------------

NUM_BYTE_IDS = 256
FIRST_WORD_ID = 256
NUM_WORDS = 8192 - FIRST_WORD_ID
EOS_ID = 8192
VOCAB_SIZE = 8193
EOS_TEXT = "<|im_end|>"
ASSISTANT_MARKER = "assistant:"

# ---- the model's deterministic behaviour --------------------------------------------------------------

THINKING_TOKENS = (32, 128)  # a thinking span runs this many tokens (drawn per request) before it closes
ANSWER_TOKENS = (64, 320)  # the answer runs this many tokens (drawn per request) before EOS

RECEIVE_POLL_S = 0.02  # while transfers are pending and nothing runs: how often their timeouts are checked
MAX_CATCH_UP_S = 0.005  # a step that starts this late after the previous one still starts at its end
STAMP_BYTES = 4  # int32 (token id | layer << 16) at the start of each token's row in each layer

WAITING, RECEIVING, RUNNING, FINISHED = "waiting", "receiving", "running", "finished"


class TimingTokenizer:
    """The tokenizer of the timing engine, as the gateway uses it (`orchestrator.gateway.text.PromptTokenizer`).

    Bytes are their own ids, so any text round-trips; word ids decode to pronounceable words; a chat is
    rendered as `role: content` lines followed by `assistant:`.
    """

    vocab_size = VOCAB_SIZE
    eos_id = EOS_ID

    def __init__(self, model: ModelConfig | None = None) -> None:
        model = model or ModelConfig()
        self.think_start_ids = self.delimiter_ids(model.think_start)
        self.think_end_ids = self.delimiter_ids(model.think_end)

    def delimiter_ids(self, text: str) -> tuple[int, ...]:
        """Ids of `text` on its own (its UTF-8 bytes). Raises ValueError for empty text."""
        ids = tuple(text.encode("utf-8"))
        if not ids:
            raise ValueError(f"{text!r} encodes to no tokens")
        return ids

    def encode(self, prompt: Prompt, *, start_thinking: bool = False) -> list[int]:
        """The prompt's ids; with `start_thinking` they end with the start delimiter.

        Raises InvalidRequest for token ids outside the vocabulary."""
        if prompt.token_ids is not None:
            ids = list(prompt.token_ids)
            bad = [t for t in ids if not 0 <= t < VOCAB_SIZE]
            if bad:
                raise InvalidRequest(f"token id {bad[0]} is outside the timing engine's vocabulary of {VOCAB_SIZE}: "
                                     f"send ids in [0, {VOCAB_SIZE})")
        elif prompt.messages is not None:
            text = "".join(f"{m.role}: {m.content}\n" for m in prompt.messages) + ASSISTANT_MARKER
            ids = list(text.encode("utf-8"))
        else:
            ids = list((prompt.text or "").encode("utf-8"))
        start = list(self.think_start_ids)
        if start_thinking and ids[-len(start):] != start:
            ids += start
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        """Text of `ids`; EOS is skipped (a special token), bytes that are not UTF-8 become U+FFFD."""
        out = bytearray()
        for token in ids:
            if 0 <= token < NUM_BYTE_IDS:
                out.append(token)
            elif FIRST_WORD_ID <= token < FIRST_WORD_ID + NUM_WORDS:
                out += word_text(token).encode("ascii")
        return out.decode("utf-8", errors="replace")


_CONSONANTS = "bdfgklmnprstvz"
_VOWELS = "aeiou"
_SYLLABLES = [c + v for c in _CONSONANTS for v in _VOWELS]


def word_text(token_id: int) -> str:
    """The word a word id stands for: a space and one to three syllables (bijective base 70)."""
    n = token_id - FIRST_WORD_ID + 1
    syllables = []
    while n > 0:
        n, digit = divmod(n - 1, len(_SYLLABLES))
        syllables.append(_SYLLABLES[digit])
    return " " + "".join(reversed(syllables))


def _mix(key: int, index: int) -> int:
    """splitmix64 of (key, index): a pure function, so a continuation elsewhere draws the same."""
    z = (key + 0x9E3779B97F4A7C15 * (index + 1)) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return z ^ (z >> 31)


def request_key(prompt_ids: Sequence[int], seed: int | None) -> int:
    """What a request's tokens are drawn from: its original prompt and its seed."""
    return xxhash.xxh3_64_intdigest(np.asarray(prompt_ids, dtype=np.int64).tobytes(), seed=(seed or 0) & (2**64 - 1))


class _Voice:
    """What the model would write next, before any thinking-limit action.

    Inside a thinking span it thinks (words) for a drawn number of tokens, then writes the end delimiter;
    a forced wait text restarts that count. Outside a span it answers (words) for a drawn number of
    tokens, then writes EOS (unless EOS is ignored). It never opens a span itself. Deterministic in
    (request key, position): a request continued on another engine goes on with the same tokens.
    """

    def __init__(self, key: int, start_ids: Sequence[int], end_ids: Sequence[int], *, thinking: bool,
                 ignore_eos: bool, wait_ids: Sequence[int] = ()) -> None:
        self.tracker = ThinkingTracker(start_ids, end_ids, thinking=thinking)
        self._key = key
        self._index = 0
        self._ignore_eos = ignore_eos
        self._wait_ids = list(wait_ids)
        self._tail: list[int] = []
        self.thinking_tokens = THINKING_TOKENS[0] + _mix(key, -1) % (THINKING_TOKENS[1] - THINKING_TOKENS[0])
        self.answer_tokens = ANSWER_TOKENS[0] + _mix(key, -2) % (ANSWER_TOKENS[1] - ANSWER_TOKENS[0])
        self._since_reset = 0  # thinking tokens since the span opened or a wait text ended
        self._answered = 0

    def word(self) -> int:
        return FIRST_WORD_ID + _mix(self._key, self._index) % NUM_WORDS

    def preferred(self) -> int:
        tracker = self.tracker
        if tracker.in_thinking:
            if tracker.pending or self._since_reset >= self.thinking_tokens:
                return tracker.end_ids[tracker.pending]
            return self.word()
        if not self._ignore_eos and self._answered >= self.answer_tokens:
            return EOS_ID
        return self.word()

    def observe(self, token_id: int) -> None:
        """The token that was written (its own choice, or forced)."""
        was_thinking = self.tracker.in_thinking
        self.tracker.observe(token_id)
        self._index += 1
        if self.tracker.in_thinking:
            self._since_reset = self._since_reset + 1 if was_thinking else 0
            if self._wait_ids:
                self._tail = (self._tail + [token_id])[-len(self._wait_ids):]
                if self._tail == self._wait_ids:
                    self._since_reset = 0
        elif not was_thinking:
            self._answered += 1


def _thinking_controller(request: EngineRequest, original: Sequence[int]) -> ThinkingController | None:
    """The request's budget forcing, as the vLLM logits processor builds it (None without limits)."""
    limits = request.thinking
    if limits is None or (limits.max_thinking_tokens is None and limits.min_thinking_tokens is None):
        return None
    return ThinkingController(
        limits.start_ids, limits.end_ids, max_thinking_tokens=limits.max_thinking_tokens,
        min_thinking_tokens=limits.min_thinking_tokens, wait_ids=limits.wait_ids,
        close_prefix_ids=limits.close_prefix_ids, stop_ids=set() if request.ignore_eos else {EOS_ID},
        thinking=starts_in_thinking(original, limits.start_ids, limits.start_thinking))


# ---- step time --------------------------------------------------------------------------------------


def step_ms(profile: EngineProfile, chunk_tokens: Sequence[int], num_decodes: int, decode_context_tokens: int) -> float:
    """Predicted time of one step: prompt chunks (`predict_prefill_ms` of their lengths) and a decode
    batch (`predict_decode_step_ms`) together; the fixed cost of a step is counted once, as the
    simulator does (`simulations.timing.BaseTiming.mixed_ms`)."""
    prefill = profile.predict_prefill_ms(chunk_tokens)
    decode = profile.predict_decode_step_ms(num_decodes, decode_context_tokens)
    if chunk_tokens and num_decodes:
        return prefill + decode - min(profile.prefill_coefficients.a_ms, profile.decode_coefficients.a_ms)
    return prefill + decode


# ---- the KV cache -----------------------------------------------------------------------------------


class _KVStore:
    """The engine's KV cache: per layer an array (num_blocks, block_size, bytes of a token in one layer).

    `np.zeros` maps pages lazily: a block takes memory only once a frame or a stamp is written into it,
    and free blocks are reused last-freed first, so an engine's memory follows its peak use.
    """

    def __init__(self, num_blocks: int, block_size: int, num_layers: int, layer_bytes: int) -> None:
        self.block_size = block_size
        self.layers = [np.zeros((num_blocks, block_size, layer_bytes), dtype=np.uint8) for _ in range(num_layers)]
        self._stamped = layer_bytes >= STAMP_BYTES

    def _rows(self, block_ids: Sequence[int], start: int, end: int) -> tuple[np.ndarray, np.ndarray]:
        positions = np.arange(start, end)
        return np.asarray(block_ids)[positions // self.block_size], positions % self.block_size

    def _stamps(self, token_ids: Sequence[int], layer: int) -> np.ndarray:
        return (np.asarray(token_ids, dtype="<i4") | (layer << 16)).view(np.uint8).reshape(-1, STAMP_BYTES)

    def stamp(self, block_ids: Sequence[int], start: int, token_ids: Sequence[int]) -> None:
        """"Compute" the KV of tokens [start, start + len(token_ids)): stamp each token's row in every layer."""
        if not self._stamped or not token_ids:
            return
        blocks, rows = self._rows(block_ids, start, start + len(token_ids))
        for index, layer in enumerate(self.layers):
            layer[blocks, rows, :STAMP_BYTES] = self._stamps(token_ids, index)

    def matches(self, block_ids: Sequence[int], token_ids: Sequence[int]) -> bool:
        """Whether the blocks hold the KV of these tokens (from position 0) in every layer."""
        if not self._stamped or not token_ids:
            return True
        blocks, rows = self._rows(block_ids, 0, len(token_ids))
        return all(np.array_equal(layer[blocks, rows, :STAMP_BYTES], self._stamps(token_ids, index))
                   for index, layer in enumerate(self.layers))

    def gather(self, layer: int, block_ids: Sequence[int]) -> np.ndarray:
        """A contiguous copy of some blocks of one layer (a frame's payload)."""
        return self.layers[layer][np.asarray(block_ids)]

    def write(self, layer: int, dest_block_ids: list[int], header: Any, payload: Payload, first_row: int) -> None:
        """The assembler's write callback (receiver threads): blocks [first_row:] of the payload (one
        buffer, or parts that together are the blocks in order) into `dest_block_ids`."""
        target = self.layers[layer]
        shape = tuple(header.shape)
        if header.dtype != "uint8" or shape[1:] != target.shape[1:]:
            raise ValueError(f"KV layout mismatch: sender {header.dtype}{list(shape[1:])} per block, receiver "
                             f"uint8{list(target.shape[1:])} (both engines need the same profile and block size)")
        chunks = [np.frombuffer(part, dtype=np.uint8).reshape(-1, *shape[1:]) for part in payload_parts(payload)]
        blocks = chunks[0] if len(chunks) == 1 else np.concatenate(chunks)
        if blocks.shape[0] != shape[0]:
            raise ValueError(f"KV frame holds {blocks.shape[0]} blocks, its header says {shape[0]}")
        target[np.asarray(dest_block_ids)] = blocks[first_row:]


class _WakingAssembler(TransferAssembler):
    """The transport-side assembler, waking the step loop when a frame or an abort arrives."""

    def __init__(self, write: Any, wake: Callable[[], None], *, timeout_s: float, max_stash_bytes: int) -> None:
        super().__init__(write, timeout_s=timeout_s, max_stash_bytes=max_stash_bytes)
        self._wake = wake

    def on_frame(self, header: Any, payload: Payload) -> None:
        try:
            super().on_frame(header, payload)
        finally:
            self._wake()

    def abort(self, transfer_id: str, reason: str) -> bool:
        known = super().abort(transfer_id, reason)
        self._wake()
        return known


# ---- requests in the engine -------------------------------------------------------------------------


@dataclass(eq=False)
class _Sequence:
    request: EngineRequest
    tokens: list[int]  # prompt, then what this engine generated
    voice: _Voice
    controller: ThinkingController | None
    outputs: asyncio.Queue
    state: str = WAITING
    block_ids: list[int] = field(default_factory=list)
    num_computed: int = 0  # tokens whose KV is in the blocks
    num_generated: int = 0
    receive_pending: bool = False  # its KV transfer has not ended yet
    kv: KVOutcome | None = None  # how the transfer ended, for the next output
    pushed_until: int = 0  # prompt tokens whose KV has been sent

    @property
    def request_id(self) -> str:
        return self.request.request_id

    @property
    def decoding(self) -> bool:
        """Its next step computes one token with the rest already in the cache (a decode step)."""
        return self.num_computed > 0 and len(self.tokens) - self.num_computed == 1


@dataclass
class _Step:
    """What one step computes: prompt chunks (request, tokens) and decoding requests."""

    chunks: list[tuple[_Sequence, int]] = field(default_factory=list)
    decodes: list[_Sequence] = field(default_factory=list)

    def add(self, seq: _Sequence, num_tokens: int) -> None:
        if seq.decoding:
            self.decodes.append(seq)
        else:
            self.chunks.append((seq, num_tokens))

    @property
    def empty(self) -> bool:
        return not self.chunks and not self.decodes


@dataclass(frozen=True)
class _PushSpan:
    """The frames one step sends for a pushed request: tokens [token_start, token_end) in whole blocks."""

    seq: _Sequence
    token_start: int
    token_end: int
    block_ids: list[int]


# ---- the engine -------------------------------------------------------------------------------------


class TimingEngine(BaseEngine):
    """A weightless engine that keeps a real engine's schedule and KV traffic (see the module docstring).

    `kv` set (disaggregated; `host`, `timeout_s`, `max_stash_bytes`): the engine receives KV on a ZeroMQ socket and a gRPC
    server (data and control) and sends by each push's endpoint; None (colocated): no KV moves and no
    cache is mapped. A push's `fault` (chaos tests) corrupts its first frame or drops its frames.
    `profile` overrides `engine.profile`; `clock` and `sleep` are how steps keep time (tests pass a
    fake clock's). Steps are timed against deadlines, back to back: the event loop's lateness in waking
    (about a millisecond) does not add up over steps and layers.
    """

    def __init__(self, model: ModelConfig, engine: EngineConfig, *, worker_id: str, kv: dict[str, Any] | None = None,
                 profile: EngineProfile | None = None, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep) -> None:
        self._model = model
        self._config = engine
        self._worker_id = worker_id
        self._kv = kv
        self._profile = profile
        self._clock = clock
        self._sleep = sleep
        self._last_step_end: float | None = None
        self._tokenizer = TimingTokenizer(model)
        self._info: EngineInfo | None = None
        self._free: list[int] = []  # a stack: the last freed block is reused first
        self._num_blocks = 0
        self._waiting: deque[_Sequence] = deque()
        self._receiving: dict[str, _Sequence] = {}
        self._running: list[_Sequence] = []
        self._by_id: dict[str, _Sequence] = {}
        self._cancelled: dict[str, list[int]] = {}  # cancelled receives: blocks freed once the assembler lets go
        self._outcomes: dict[str, KVOutcome] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._dead: BaseException | None = None
        self._store: _KVStore | None = None
        self._assembler: TransferAssembler | None = None
        self._sender: Any = None
        self._auth: KVAuth | None = None
        self._closers: list[Callable[[], Any]] = []

    # ---- life cycle ------------------------------------------------------------------------------

    async def start(self) -> EngineInfo:
        profile = self._profile = self._profile or self._load_profile()
        block_size = self._config.block_size
        capacity = profile.kv_capacity_tokens or int(self._config.kv_cache_gib * 2**30) // profile.kv_bytes_per_token
        self._num_blocks = capacity // block_size
        if self._num_blocks < 1:
            raise EngineError(f"a KV cache of {capacity} tokens holds no block of {block_size} tokens")
        self._free = list(range(self._num_blocks - 1, -1, -1))
        endpoints: dict[str, str] = {}
        if self._kv is not None:
            self._store = _KVStore(self._num_blocks, block_size, profile.num_kv_layers, profile.kv_bytes_per_token_per_layer)
            endpoints = self._start_kv(asyncio.get_running_loop())
        self._task = asyncio.create_task(self._run_loop(), name=f"pdserve-timing-engine-{self._worker_id}")
        self._info = EngineInfo(
            max_model_len=self._model.max_model_len, block_size=block_size, num_total_blocks=self._num_blocks,
            kv_bytes_per_token=profile.kv_bytes_per_token, kv_endpoints=endpoints, kv_control_endpoint=endpoints.get("grpc"))
        return self._info

    def _load_profile(self) -> EngineProfile:
        if self._config.profile is None:
            raise EngineError("the timing engine needs engine.profile: a file written by `pdserve profile`")
        try:
            return EngineProfile.load(self._config.profile)
        except ConfigError as exc:
            raise EngineError(exc.message) from None

    def _start_kv(self, loop: asyncio.AbstractEventLoop) -> dict[str, str]:
        """Receivers (ZeroMQ; gRPC data and control) and the senders, as the vLLM connector starts them: the
        engine receives on both transports and sends by the scheme of each push's endpoint."""
        def wake() -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed: the engine is shutting down
                loop.call_soon_threadsafe(self._wake.set)

        host = self._kv.get("host", "127.0.0.1")
        self._assembler = _WakingAssembler(self._store.write, wake, timeout_s=float(self._kv.get("timeout_s", 10.0)),
                                           max_stash_bytes=int(self._kv.get("max_stash_bytes", 1 << 30)))
        auth = self._auth = KVAuth(str(self._kv.get("auth", "none")), self._kv.get("secret"))
        receiver = (ZmqReceiver(self._assembler, host, 0, auth=auth) if self._kv.get("zmq_receiver") == "libzmq"
                    else ZmtpReceiver(self._assembler, host, 0, stall_timeout_s=float(self._kv.get("timeout_s", 10.0)),
                                      auth=auth))
        self._closers.append(receiver.close)
        self._sender = KVSenders(auth)
        self._closers.append(self._sender.close)
        service = KVTransferService(self._assembler, self._sender, self._block_counts, auth=auth)
        server, grpc_endpoint = serve_kv_service(service, host, 0)
        self._closers.append(lambda: server.stop(grace=0))
        return {"zmq": receiver.endpoint, "grpc": grpc_endpoint}

    def _block_counts(self) -> tuple[int, int]:
        return len(self._free), self._num_blocks

    async def shutdown(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for seq in list(self._by_id.values()):
            self._drop(seq)
            seq.outputs.put_nowait(EngineOutput([], True, "abort"))
        for close in reversed(self._closers):
            await asyncio.to_thread(close)
        self._closers.clear()
        self._dead = self._dead or EngineError("the engine was shut down")

    # ---- requests --------------------------------------------------------------------------------

    def generate(self, request: EngineRequest) -> AsyncIterator[EngineOutput]:
        if self._info is None or self._dead is not None:
            raise EngineError(f"the timing engine is not running{f': {self._dead}' if self._dead else ''}")
        self._validate(request)
        return self._stream(self._new_sequence(request))

    def _validate(self, request: EngineRequest) -> None:
        """Refuse what could never run here (ValueError: the caller's request is wrong)."""
        prompt = request.prompt_ids
        if not prompt:
            raise ValueError("the prompt is empty")
        if request.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {request.max_tokens}")
        if request.request_id in self._by_id:
            raise ValueError(f"request {request.request_id} is already running")
        if len(prompt) >= self._model.max_model_len:
            raise ValueError(f"the prompt has {len(prompt)} tokens: it leaves no room below max_model_len "
                             f"{self._model.max_model_len}")
        if min(prompt) < 0 or max(prompt) >= VOCAB_SIZE:
            raise ValueError(f"token ids must be in [0, {VOCAB_SIZE})")
        need = math.ceil(min(len(prompt) + request.max_tokens, self._model.max_model_len) / self._config.block_size)
        if need > self._num_blocks:
            raise ValueError(f"the request needs {need} KV blocks; this engine holds {self._num_blocks}")
        transfer = request.kv_push or request.kv_receive
        if transfer is not None:
            if self._kv is None:
                raise ValueError("this engine moves no KV (colocated): send the request without kv_push/kv_receive")
            if not 1 <= transfer.num_prompt_tokens <= len(prompt):
                raise ValueError(f"the transfer covers {transfer.num_prompt_tokens} tokens of a {len(prompt)}-token prompt")

    def _new_sequence(self, request: EngineRequest) -> _Sequence:
        prompt = request.prompt_ids
        original = prompt if request.num_original_prompt_tokens is None else prompt[:request.num_original_prompt_tokens]
        tokenizer = self._tokenizer
        start_ids = request.thinking.start_ids if request.thinking else tokenizer.think_start_ids
        end_ids = request.thinking.end_ids if request.thinking else tokenizer.think_end_ids
        thinking = starts_in_thinking(original, start_ids, bool(request.thinking and request.thinking.start_thinking))
        voice = _Voice(request_key(original, request.seed), start_ids, end_ids, thinking=thinking,
                       ignore_eos=request.ignore_eos, wait_ids=request.thinking.wait_ids if request.thinking else ())
        controller = _thinking_controller(request, original)
        for token in prompt[len(original):]:  # generated elsewhere (a prefill worker, a lost worker)
            voice.observe(token)
            if controller is not None:
                controller.observe(token)
        return _Sequence(request, list(prompt), voice, controller, asyncio.Queue(),
                         receive_pending=request.kv_receive is not None)

    async def _stream(self, seq: _Sequence) -> AsyncIterator[EngineOutput]:
        if seq.request_id in self._by_id:
            raise ValueError(f"request {seq.request_id} is already running")
        self._by_id[seq.request_id] = seq
        self._waiting.append(seq)
        self._wake.set()
        finished = False
        try:
            while True:
                item = await seq.outputs.get()
                if isinstance(item, BaseException):
                    raise EngineError(f"the timing engine failed: {item}") from item
                finished = item.finished
                yield item
                if finished:
                    return
        finally:
            if not finished:
                self._drop(seq)

    async def abort(self, request_id: str) -> None:
        seq = self._by_id.get(request_id)
        if seq is not None:
            self._drop(seq)
            seq.outputs.put_nowait(EngineOutput([], True, "abort"))

    def _drop(self, seq: _Sequence) -> None:
        """Take a request out wherever it is and free its blocks (a receive's once the assembler lets go)."""
        if seq.state == FINISHED:
            return
        if seq.state == RECEIVING:
            self._receiving.pop(seq.request_id, None)
            self._assembler.cancel(seq.request_id)
            self._cancelled[seq.request_id], seq.block_ids = seq.block_ids, []
        elif seq.state == RUNNING:
            self._running.remove(seq)
        else:
            self._waiting.remove(seq)
        self._finish(seq)
        self._wake.set()

    def _finish(self, seq: _Sequence) -> None:
        self._free_blocks(seq.block_ids)
        seq.block_ids = []
        seq.state = FINISHED
        self._by_id.pop(seq.request_id, None)

    # ---- stats -----------------------------------------------------------------------------------

    def stats(self) -> EngineStats:
        free, total = len(self._free), self._num_blocks
        return EngineStats(num_running=len(self._running), num_waiting=len(self._waiting) + len(self._receiving),
                           kv_usage=1.0 - free / total if total else 0.0, num_free_blocks=free, num_total_blocks=total)

    async def kv_outcome(self, transfer_id: str) -> KVOutcome | None:
        if transfer_id in self._outcomes:
            return self._outcomes[transfer_id]
        outcome = self._assembler.outcome(transfer_id) if self._assembler else None
        return None if outcome is None else KVOutcome(outcome.complete, outcome.bytes, outcome.seconds, outcome.failure or "")

    def kv_counters(self) -> dict[str, float]:
        if self._assembler is None:
            return {}
        c, s = self._assembler.counters, self._sender.counters
        return {"bytes_total": c.bytes_total, "frames_total": c.frames_total, "transfers_completed": c.transfers_completed,
                "transfers_recomputed": c.transfers_recomputed, "seconds_total": c.seconds_total,
                "checksum_failures": c.checksum_failures, "timeouts": c.timeouts, "auth_failures": self._auth.failures,
                "bytes_sent_total": s.bytes_sent, "frames_sent_total": s.frames_sent}

    # ---- the step loop ---------------------------------------------------------------------------

    async def _run_loop(self) -> None:
        try:
            while True:
                self._wake.clear()
                self._poll_transfers()
                step = self._schedule()
                if step.empty:
                    await self._idle()
                    continue
                spans = self._push_spans(step)
                await self._execute(step, spans)
                self._commit(step)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug here must reach every waiting caller, not vanish with the task
            log.exception("timing engine %s: the step loop failed", self._worker_id)
            self._dead = exc
            for seq in list(self._by_id.values()):
                seq.outputs.put_nowait(exc)

    async def _idle(self) -> None:
        """Wait for work; while transfers are pending, wake regularly to expire their timeouts."""
        pending = self._receiving or self._cancelled or (self._assembler is not None and self._assembler.stash_bytes)
        if not pending:
            await self._wake.wait()
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), RECEIVE_POLL_S)

    def _poll_transfers(self) -> None:
        """Step 1: receives that ended become runnable; cancelled ones give their blocks back."""
        if self._assembler is None:
            return
        finished, failed = self._assembler.poll()
        for request_id in finished:
            blocks = self._cancelled.pop(request_id, None)
            if blocks is not None:
                self._free_blocks(blocks)
                continue
            seq = self._receiving.pop(request_id, None)
            if seq is not None:
                self._end_receive(seq, failed=request_id in failed)

    def _end_receive(self, seq: _Sequence, *, failed: bool) -> None:
        transfer = seq.request.kv_receive
        outcome = self._assembler.outcome(transfer.transfer_id)
        kv = (KVOutcome(outcome.complete, outcome.bytes, outcome.seconds, outcome.failure or "") if outcome
              else KVOutcome(False, failure="the transfer ended without an outcome"))
        if not failed and kv.complete and not self._store.matches(seq.block_ids, seq.tokens[:transfer.num_prompt_tokens]):
            kv = KVOutcome(False, kv.bytes, kv.seconds, "the received KV is not this prompt's (wrong blocks or layers)")
            log.error("timing engine %s: transfer %s: %s", self._worker_id, transfer.transfer_id, kv.failure)
        self._outcomes[transfer.transfer_id] = kv
        while len(self._outcomes) > 4096:
            self._outcomes.pop(next(iter(self._outcomes)))
        seq.kv, seq.receive_pending = kv, False
        seq.num_computed = transfer.num_prompt_tokens if kv.complete and not failed else 0  # else: recompute
        seq.state = RUNNING
        self._running.append(seq)

    def _schedule(self) -> _Step:
        """Step 2: running requests first, then waiting ones while nothing had to be preempted."""
        step = _Step()
        budget, preempted = self._schedule_running(step)
        if not preempted:
            self._admit_waiting(step, budget)
        return step

    def _schedule_running(self, step: _Step) -> tuple[int, bool]:
        budget = self._config.max_num_batched_tokens
        preempted = False
        for seq in list(self._running):
            if budget <= 0:
                break
            if seq.state != RUNNING:  # preempted for an earlier request of this step
                continue
            want = 1 if seq.decoding else min(len(seq.tokens) - seq.num_computed, budget)
            if not self._reserve(seq, seq.num_computed + want):
                preempted = True
                continue
            step.add(seq, want)
            budget -= want
        return budget, preempted

    def _reserve(self, seq: _Sequence, num_tokens: int) -> bool:
        """Blocks for `num_tokens` of a running request, preempting the newest running ones if needed.

        False when the request itself had to be preempted."""
        while not self._grow(seq, num_tokens):
            victim = self._running[-1]
            self._preempt(victim)
            if victim is seq:
                return False
        return True

    def _preempt(self, seq: _Sequence) -> None:
        """Recompute preemption, as vLLM's: blocks freed, back to the front of the queue, computed anew later."""
        self._running.remove(seq)
        self._free_blocks(seq.block_ids)
        seq.block_ids, seq.num_computed, seq.pushed_until = [], 0, 0
        seq.state = WAITING
        self._waiting.appendleft(seq)

    def _admit_waiting(self, step: _Step, budget: int) -> None:
        """First come first served: stops at the first request that does not fit (no overtaking)."""
        while self._waiting and budget > 0 and len(self._running) + len(self._receiving) < self._config.max_num_seqs:
            seq = self._waiting[0]
            if seq.receive_pending:
                if not self._grow(seq, seq.request.kv_receive.num_prompt_tokens):
                    return
                self._waiting.popleft()
                self._start_receive(seq)
                continue
            want = min(len(seq.tokens) - seq.num_computed, budget)
            if not self._grow(seq, seq.num_computed + want):
                return
            self._waiting.popleft()
            seq.state = RUNNING
            self._running.append(seq)
            step.add(seq, want)
            budget -= want

    def _start_receive(self, seq: _Sequence) -> None:
        transfer = seq.request.kv_receive
        seq.state = RECEIVING
        self._receiving[seq.request_id] = seq
        self._assembler.expect(transfer.transfer_id, seq.request_id, list(seq.block_ids), 0, transfer.num_prompt_tokens)
        self._wake.set()  # frames that came first were replayed just now: the transfer may be complete

    def _grow(self, seq: _Sequence, num_tokens: int) -> bool:
        need = math.ceil(num_tokens / self._config.block_size) - len(seq.block_ids)
        if need > len(self._free):
            return False
        for _ in range(max(need, 0)):
            seq.block_ids.append(self._free.pop())
        return True

    def _free_blocks(self, block_ids: list[int]) -> None:
        self._free.extend(reversed(block_ids))

    def _push_spans(self, step: _Step) -> list[_PushSpan]:
        """The KV this step computes for pushed prompts: stamped into the blocks, to be sent per layer."""
        spans = []
        for seq, num_tokens in step.chunks:
            push = seq.request.kv_push
            if push is None or seq.num_computed >= push.num_prompt_tokens or push.fault == "drop":
                continue
            end = min(seq.num_computed + num_tokens, push.num_prompt_tokens)
            self._store.stamp(seq.block_ids, seq.num_computed, seq.tokens[seq.num_computed:end])
            block_size = self._config.block_size
            start = seq.pushed_until // block_size * block_size  # frames start on a block; a partial one is resent
            spans.append(_PushSpan(seq, start, end, seq.block_ids[start // block_size: math.ceil(end / block_size)]))
            seq.pushed_until = end
        return spans

    async def _execute(self, step: _Step, spans: list[_PushSpan]) -> None:
        """Step 3: the predicted time passes; pushed KV leaves layer by layer while it does."""
        duration_s = step_ms(self._profile, [n for _, n in step.chunks], len(step.decodes),
                             sum(seq.num_computed for seq in step.decodes)) / 1000.0
        now = self._clock()
        last = self._last_step_end
        start = last if last is not None and 0.0 <= now - last <= MAX_CATCH_UP_S else now
        self._last_step_end = start + duration_s
        if not spans:
            await self._sleep(max(start + duration_s - now, 0.0))
            return
        num_layers = len(self._store.layers)
        for layer in range(num_layers):
            await self._sleep(max(start + duration_s * (layer + 1) / num_layers - self._clock(), 0.0))
            for span in spans:
                if span.seq.state == RUNNING:  # an aborted request sends no more
                    self._send(span, layer, num_layers)

    def _send(self, span: _PushSpan, layer: int, num_layers: int) -> None:
        push = span.seq.request.kv_push
        payload = self._store.gather(layer, span.block_ids)
        self._sender.send(OutgoingFrame(push.endpoint, dict(
            transfer_id=push.transfer_id, layer_index=layer, num_layers=num_layers, token_start=span.token_start,
            token_end=span.token_end, num_prompt_tokens=push.num_prompt_tokens, block_size=self._config.block_size,
            dtype="uint8", shape=tuple(payload.shape), source_block_ids=list(span.block_ids), sender=self._worker_id),
            payload, corrupt=push.fault == "corrupt" and layer == 0,
            hold_until_s=time.monotonic() + push.stall_s if push.fault == "stall" else 0.0))

    def _commit(self, step: _Step) -> None:
        """Step 4: computed tokens advance; a request whose prompt is done gets its next token."""
        for seq, num_tokens in step.chunks + [(seq, 1) for seq in step.decodes]:
            if seq.state != RUNNING:  # aborted during the step
                continue
            seq.num_computed += num_tokens
            if seq.num_computed == len(seq.tokens):
                self._emit(seq)

    def _emit(self, seq: _Sequence) -> None:
        token = self._next_token(seq)
        seq.tokens.append(token)
        seq.num_generated += 1
        request = seq.request
        reason = None
        if token == EOS_ID and not request.ignore_eos:
            reason = "stop"
        elif seq.num_generated >= request.max_tokens or len(seq.tokens) >= self._model.max_model_len:
            reason = "length"
        output = EngineOutput([token], reason is not None, reason, kv=seq.kv)
        seq.kv = None
        if reason is not None:
            self._running.remove(seq)
            self._finish(seq)
        seq.outputs.put_nowait(output)

    def _next_token(self, seq: _Sequence) -> int:
        """The voice's token, after the thinking limits' action (forced, or another token if banned)."""
        token = seq.voice.preferred()
        if seq.controller is not None:
            action = seq.controller.next_action(token)
            if isinstance(action, Force):
                token = action.token_id
            elif isinstance(action, Ban) and token in action.token_ids:
                token = seq.voice.word()
            seq.controller.observe(token)
        seq.voice.observe(token)
        return token
