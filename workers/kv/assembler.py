"""The receiving side of KV transfers, independent of transport and engine.

Life of a transfer on the decode side:
1. Frames may arrive before the engine has allocated blocks for the request: they are stashed
   (bounded by `max_stash_bytes`, and dropped when no `expect()` claims them within `timeout_s` of
   their last frame, as for a request that ended before it reached the decode engine; a dropped stash
   only means a recompute).
2. `expect()` (engine thread, when the scheduler allocated the blocks) registers where each prompt
   block goes and replays the stash.
3. Each frame is checksummed and written (`write` callback) into the destination blocks, skipping the
   blocks the engine already holds from its own prefix cache; with `verify_after_write` the checksum
   is taken over what was written (one cold read instead of two). Per layer, coverage advances.
4. When every layer covers the prompt, the transfer is complete. A checksum mismatch, an
   `abort()` from the sender or a missing/late frame past `timeout_s` fails it: the engine recomputes.
5. `poll()` (engine thread, every step) hands out completed and failed requests exactly once.
   `cancel()` drops a transfer whose request ended while waiting; it is reported finished too, so the
   engine frees its blocks.

Thread safety: `on_frame` and `abort` run on receiver threads; `expect`, `cancel`, `poll` on the engine
thread. One lock guards the tables; writes into the KV cache happen outside it only for registered
transfers, whose blocks nobody else touches while they wait.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from workers.kv.wire import FrameSpan, Header, Payload, checksum, payload_size

# write(layer_index, destination_block_ids, header, payload, first_row): copy rows [first_row:] of the
# payload's blocks into the destination blocks of that layer. The payload is one buffer or a list of
# parts (runs of whole blocks, in order), as the sender sent it. It may return the frame's checksum as
# written (`blocks.write_blocks` does, in host memory): the assembler then verifies the copy rather
# than the received bytes, reading them once; None: the assembler checks the payload before writing.
WriteFn = Callable[[int, list[int], Header, Payload, int], "int | None"]


@dataclass
class _Expected:
    transfer_id: str
    request_id: str
    block_ids: list[int]
    local_tokens: int  # tokens the engine already holds (prefix cache): not overwritten
    num_prompt_tokens: int
    registered_s: float
    covered: dict[int, int] = field(default_factory=dict)  # layer -> tokens covered from 0
    out_of_order: list[tuple[Header, Payload]] = field(default_factory=list)
    num_layers: int = 0
    first_frame_s: float | None = None
    last_frame_s: float | None = None
    bytes: int = 0
    failure: str | None = None
    done: bool = False


@dataclass(frozen=True)
class Outcome:
    transfer_id: str
    request_id: str
    complete: bool
    failure: str | None
    bytes: int
    seconds: float


@dataclass
class Counters:
    bytes_total: int = 0
    frames_total: int = 0
    transfers_completed: int = 0
    transfers_recomputed: int = 0
    seconds_total: float = 0.0
    checksum_failures: int = 0
    timeouts: int = 0


class TransferAssembler:
    def __init__(self, write: WriteFn, *, timeout_s: float, max_stash_bytes: int = 256 << 20,
                 clock: Callable[[], float] = time.monotonic, max_outcomes: int = 4096,
                 verify_after_write: bool = False) -> None:
        """`verify_after_write`: check each frame's checksum on what `write` returns (see WriteFn)."""
        self._write = write
        self._verify_after_write = verify_after_write
        self._timeout_s = timeout_s
        self._max_stash_bytes = max_stash_bytes
        self._clock = clock
        self._lock = threading.Lock()
        self._expected: dict[str, _Expected] = {}  # transfer_id -> state
        self._by_request: dict[str, str] = {}  # request_id -> transfer_id
        self._stash: OrderedDict[str, list[tuple[Header, Payload]]] = OrderedDict()  # received buffers, not copies
        self._stash_bytes = 0
        self._stash_since: dict[str, float] = {}  # transfer_id -> when its latest frame was stashed
        self._aborted_early: dict[str, str] = {}  # transfer_id -> reason, abort before expect()
        self._finished: set[str] = set()
        self._failed: set[str] = set()
        self._outcomes: OrderedDict[str, Outcome] = OrderedDict()
        self._max_outcomes = max_outcomes
        self.counters = Counters()

    # ---- engine thread -------------------------------------------------------------------------
    def expect(self, transfer_id: str, request_id: str, block_ids: list[int], local_tokens: int,
               num_prompt_tokens: int) -> None:
        """Register a transfer whose destination blocks are now allocated; replay stashed frames."""
        state = _Expected(transfer_id, request_id, list(block_ids), local_tokens, num_prompt_tokens, self._clock())
        with self._lock:
            self._expected[transfer_id] = state
            self._by_request[request_id] = transfer_id
            stashed = self._stash.pop(transfer_id, [])
            self._stash_since.pop(transfer_id, None)
            self._stash_bytes -= sum(payload_size(p) for _, p in stashed)
            early_abort = self._aborted_early.pop(transfer_id, None)
        if early_abort is not None:
            self._fail(state, f"aborted: {early_abort}")
            return
        for header, payload in stashed:
            self._apply(state, header, payload)

    def cancel(self, request_id: str) -> None:
        """The request ended while waiting (aborted): stop expecting; report it finished."""
        with self._lock:
            transfer_id = self._by_request.get(request_id)
            state = self._expected.get(transfer_id) if transfer_id else None
            if state is None or state.done:
                return
            state.done = True
            state.failure = "cancelled"
            self._finished.add(request_id)

    def poll(self) -> tuple[set[str], set[str]]:
        """Requests whose transfer ended since the last poll: (finished, failed); failed is a subset."""
        now = self._clock()
        for state in list(self._expected.values()):
            if not state.done and now - self._last_progress(state) > self._timeout_s:
                with self._lock:
                    self.counters.timeouts += 1
                have = min(state.covered.values(), default=0) if len(state.covered) == state.num_layers else 0
                self._fail(state, f"timeout: {have}/{state.num_prompt_tokens} tokens after {self._timeout_s:.1f}s")
        with self._lock:
            self._expire_stash(now)
            finished, failed = self._finished, self._failed
            self._finished, self._failed = set(), set()
            for request_id in finished:
                transfer_id = self._by_request.pop(request_id, None)
                self._expected.pop(transfer_id, None)
        return finished, failed

    # ---- receiver threads ----------------------------------------------------------------------
    def on_frame(self, header: Header, payload: Payload) -> None:
        """A frame arrived (any transport). The payload's buffers must stay valid: they may be kept."""
        with self._lock:
            self.counters.frames_total += 1
            self.counters.bytes_total += payload_size(payload)
            state = self._expected.get(header.transfer_id)
            if state is None:
                self._stash_frame(header, payload)
                return
        self._apply(state, header, payload)

    def abort(self, transfer_id: str, reason: str) -> bool:
        """The sender gave up: fail now rather than at the timeout. Returns whether it was known."""
        with self._lock:
            state = self._expected.get(transfer_id)
            if state is None:
                self._aborted_early[transfer_id] = reason
                if len(self._aborted_early) > self._max_outcomes:
                    self._aborted_early.pop(next(iter(self._aborted_early)))
                return False
        self._fail(state, f"aborted: {reason}")
        return True

    def outcome(self, transfer_id: str) -> Outcome | None:
        with self._lock:
            return self._outcomes.get(transfer_id)

    # ---- internals -----------------------------------------------------------------------------
    def _stash_frame(self, header: Header, payload: Payload) -> None:
        self._stash.setdefault(header.transfer_id, []).append((header, payload))
        self._stash.move_to_end(header.transfer_id)
        self._stash_since[header.transfer_id] = self._clock()
        self._stash_bytes += payload_size(payload)
        while self._stash_bytes > self._max_stash_bytes and self._stash:
            self._drop_stash(next(iter(self._stash)))

    def _expire_stash(self, now: float) -> None:
        """Drop stashes nobody claimed within the timeout (lock held)."""
        for transfer_id, since in list(self._stash_since.items()):
            if now - since > self._timeout_s:
                self._drop_stash(transfer_id)

    def _drop_stash(self, transfer_id: str) -> None:
        dropped = self._stash.pop(transfer_id, [])
        self._stash_since.pop(transfer_id, None)
        self._stash_bytes -= sum(payload_size(p) for _, p in dropped)

    @property
    def stash_bytes(self) -> int:
        return self._stash_bytes

    def _last_progress(self, state: _Expected) -> float:
        return state.last_frame_s if state.last_frame_s is not None else state.registered_s

    def _apply(self, state: _Expected, header: Header, payload: Payload) -> None:
        if state.done:
            return
        if not self._verify_after_write and checksum(payload) != header.checksum:
            self._checksum_failed(state, header)
            return
        now = self._clock()
        state.first_frame_s = state.first_frame_s or now
        state.last_frame_s = now
        state.num_layers = header.num_layers
        covered = state.covered.get(header.layer_index, 0)
        if header.token_start > covered:
            state.out_of_order.append((header, payload))
            return
        if not self._write_frame(state, header, payload):
            return
        state.bytes += payload_size(payload)
        state.covered[header.layer_index] = max(covered, header.token_end)
        self._replay_out_of_order(state)
        self._maybe_complete(state)

    def _write_frame(self, state: _Expected, header: Header, payload: Payload) -> bool:
        """Write one frame; False when its bytes did not match its checksum (the transfer failed)."""
        span = FrameSpan.of(header)
        first_local = state.local_tokens // header.block_size  # blocks the engine holds already
        skip = max(first_local - span.first_block, 0)
        if skip >= span.num_blocks:
            return self._verified(state, header, checksum(payload) if self._verify_after_write else None)
        dest = state.block_ids[span.first_block + skip: span.first_block + span.num_blocks]
        if len(dest) != span.num_blocks - skip:
            raise ValueError(f"transfer {state.transfer_id}: frame covers blocks up to "
                             f"{span.first_block + span.num_blocks} but {len(state.block_ids)} were allocated")
        written = self._write(header.layer_index, dest, header, payload, skip)
        if self._verify_after_write and written is None:
            written = checksum(payload)
        return self._verified(state, header, written if self._verify_after_write else None)

    def _verified(self, state: _Expected, header: Header, digest: int | None) -> bool:
        if digest is None or digest == header.checksum:
            return True
        self._checksum_failed(state, header)
        return False

    def _checksum_failed(self, state: _Expected, header: Header) -> None:
        with self._lock:
            self.counters.checksum_failures += 1
        self._fail(state, f"checksum mismatch on layer {header.layer_index} tokens {header.token_start}-{header.token_end}")

    def _replay_out_of_order(self, state: _Expected) -> None:
        progressed = True
        while progressed and state.out_of_order:
            progressed = False
            for item in list(state.out_of_order):
                header, data = item
                if header.token_start <= state.covered.get(header.layer_index, 0):
                    state.out_of_order.remove(item)
                    if not self._write_frame(state, header, data):
                        return
                    state.bytes += payload_size(data)
                    state.covered[header.layer_index] = max(state.covered.get(header.layer_index, 0), header.token_end)
                    progressed = True

    def _maybe_complete(self, state: _Expected) -> None:
        if len(state.covered) < state.num_layers:
            return
        if min(state.covered.values()) < state.num_prompt_tokens:
            return
        with self._lock:
            if state.done:
                return
            state.done = True
            seconds = (state.last_frame_s or 0.0) - (state.first_frame_s or 0.0)
            self.counters.transfers_completed += 1
            self.counters.seconds_total += seconds
            self._finished.add(state.request_id)
            self._record(Outcome(state.transfer_id, state.request_id, True, None, state.bytes, seconds))

    def _fail(self, state: _Expected, reason: str) -> None:
        with self._lock:
            if state.done:
                return
            state.done = True
            state.failure = reason
            self.counters.transfers_recomputed += 1
            self._finished.add(state.request_id)
            self._failed.add(state.request_id)
            seconds = (state.last_frame_s or state.registered_s) - state.registered_s
            self._record(Outcome(state.transfer_id, state.request_id, False, reason, state.bytes, seconds))

    def _record(self, outcome: Outcome) -> None:
        self._outcomes[outcome.transfer_id] = outcome
        while len(self._outcomes) > self._max_outcomes:
            self._outcomes.popitem(last=False)
