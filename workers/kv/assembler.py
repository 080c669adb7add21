"""The receiving side of KV transfers, independent of transport and engine.

Life of a transfer on the decode side:
1. Frames may arrive before the engine has allocated blocks for the request: they are stashed
   (bounded by `max_stash_bytes`, and dropped when no `expect()` claims them within `timeout_s` of
   their last frame, as for a request that ended before it reached the decode engine; a dropped stash
   only means a recompute).
2. `expect()` (engine thread, when the scheduler allocated the blocks) registers where each prompt
   block goes and replays the stash: with `place_in_background`, on a thread of the assembler's, so
   that the engine's step (and every other request in its batch) does not wait for the copies.
3. Each frame is checksummed and written (`write` callback) into the destination blocks, skipping the
   blocks the engine already holds from its own prefix cache; with `verify_after_write` the checksum
   is taken over what was written (one cold read instead of two). Per layer, coverage advances.
4. When every layer covers the prompt, the transfer is complete. A checksum mismatch, an
   `abort()` from the sender or a missing/late frame past `timeout_s` fails it: the engine recomputes.
5. `poll()` (engine thread, every step) hands out completed and failed requests exactly once.
   `cancel()` drops a transfer whose request ended while waiting; it is reported finished too, so the
   engine frees its blocks.

Two ways in for a frame's bytes:
- `on_frame(header, payload)`: the bytes are already in memory (a libzmq or gRPC message, a stashed
  frame); step 3 copies them into the blocks.
- `reserve(header)` -> `Placement`, then `commit(placement)` (or `release(placement, why)` when the
  bytes never fully came): a receiver that reads off the socket itself (`zmtp.ZmtpReceiver`) asks where
  the payload goes before reading it. For a registered transfer whose earlier tokens of that layer are
  in, that is the destination blocks themselves (`locate`, see LocateFn): no copy at all; otherwise a
  new buffer, which `commit` hands to `on_frame`.

Thread safety: `on_frame`, `reserve`/`commit`/`release` and `abort` run on receiver threads; `expect`,
`cancel`, `poll` on the engine thread. One lock guards the tables; each transfer has a lock of its own
that orders the frames applied to it. Writes into the KV cache happen outside the table lock, for
registered transfers only, each under a claim (`_Expected.writers`): `poll()` does not report a
transfer's request finished (after which the engine may reuse its blocks) while a write into its
blocks is under way, so a cancel or a timeout never races a write into blocks that changed hands.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import xxhash

from workers.kv.wire import FrameSpan, Header, Payload, checksum, payload_bytes, payload_size

log = logging.getLogger(__name__)

# write(layer_index, destination_block_ids, header, payload, first_row): copy rows [first_row:] of the
# payload's blocks into the destination blocks of that layer. The payload is one buffer or a list of
# parts (runs of whole blocks, in order), as the sender sent it. It may return the frame's checksum as
# written (`blocks.write_blocks` does, in host memory): the assembler then verifies the copy rather
# than the received bytes, reading them once; None: the assembler checks the payload before writing.
WriteFn = Callable[[int, list[int], Header, Payload, int], "int | None"]

# locate(layer_index, destination_block_ids, header, first_row): writable byte views of the destination
# blocks (one per run of consecutive ids, in order) where rows [first_row:] of the payload go, or None
# when they cannot be a socket's destination (device memory). `blocks.locate_blocks` is one.
LocateFn = Callable[[int, list[int], Header, int], "list[memoryview] | None"]


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
    writers: int = 0  # receiver threads writing into this transfer's blocks now (table lock)
    lock: threading.Lock = field(default_factory=threading.Lock)  # orders the frames applied to it


@dataclass(frozen=True)
class Placement:
    """Where a frame's payload goes, decided from its header before its bytes are read.

    `targets` are writable byte views, in payload order, together exactly the payload's size. With
    `state` set they are the transfer's destination blocks (after a scratch buffer for rows the engine
    already holds), and the frame is applied by `commit`; without, one new buffer."""

    header: Header
    targets: list[memoryview]
    state: _Expected | None = None

    @property
    def nbytes(self) -> int:
        return sum(target.nbytes for target in self.targets)


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
                 verify_after_write: bool = False, locate: LocateFn | None = None,
                 place_in_background: bool = False) -> None:
        """`verify_after_write`: check each frame's checksum on what `write` returns (see WriteFn).
        `locate`: lets `reserve` place payloads straight into the destination blocks (see LocateFn).
        `place_in_background`: `expect()` hands the stash's copies to a thread (`close()` stops it)."""
        self._write = write
        self._locate = locate
        self._placer = _Placer() if place_in_background else None
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
        if not stashed:
            return
        with self._lock:
            state.writers += 1  # until the stash is in the blocks
        if self._placer is None:
            self._replay_stash(state, stashed)
        else:
            self._placer.submit(lambda: self._replay_stash(state, stashed))

    def close(self) -> None:
        """Stop the background placer, if any (after what it was given)."""
        if self._placer is not None:
            self._placer.close()

    def _replay_stash(self, state: _Expected, stashed: list[tuple[Header, Payload]]) -> None:
        try:
            for header, payload in stashed:
                self._apply(state, header, payload)
        finally:
            self._unclaim(state)

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
            writing = {r for r in self._finished if self._writers(r)}  # reported once the write ends
            finished, failed = self._finished - writing, self._failed - writing
            self._finished, self._failed = writing, self._failed & writing
            for request_id in finished:
                transfer_id = self._by_request.pop(request_id, None)
                self._expected.pop(transfer_id, None)
        return finished, failed

    def _writers(self, request_id: str) -> int:
        state = self._expected.get(self._by_request.get(request_id, ""))
        return state.writers if state is not None else 0

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
            if state.done:
                return
            state.writers += 1
        try:
            self._apply(state, header, payload)
        finally:
            self._unclaim(state)

    def reserve(self, header: Header) -> Placement:
        """Receiver thread, a frame's header read and its payload not yet: where the payload goes.

        The caller fills every target, in order, then calls `commit`, or `release` if the bytes never
        came (a connection lost mid-frame). Raises ValueError for a header whose payload cannot be
        placed (unknown dtype, larger than the stash may hold, a layout this cache does not have)."""
        size = payload_bytes(header)
        with self._lock:
            state = self._expected.get(header.transfer_id)
            direct = (self._locate is not None and state is not None and not state.done
                      and header.token_start <= state.covered.get(header.layer_index, 0))
            if direct:
                state.writers += 1
        if direct:
            targets = self._claimed_targets(state, header, size)
            if targets is not None:
                return Placement(header, targets, state)
        if size > self._max_stash_bytes:
            raise ValueError(f"KV frame of transfer {header.transfer_id!r}: {size} bytes, more than the "
                             f"{self._max_stash_bytes} the receiver may hold (kv.max_stash_mib)")
        return Placement(header, [memoryview(np.empty(size, dtype=np.uint8))])

    def commit(self, placement: Placement) -> None:
        """Receiver thread: every target of `placement` is filled; apply the frame like `on_frame`."""
        state = placement.state
        if state is None:
            self.on_frame(placement.header, placement.targets[0])
            return
        try:
            with self._lock:
                self.counters.frames_total += 1
                self.counters.bytes_total += placement.nbytes
            with state.lock:
                digest = xxhash.xxh3_64()
                for target in placement.targets:  # just written: read back from the cache, hot
                    digest.update(target)
                if self._verified(state, placement.header, digest.intdigest()):
                    self._advance(state, placement.header, placement.nbytes)
        finally:
            self._unclaim(state)

    def release(self, placement: Placement, reason: str) -> None:
        """Receiver thread: the payload of `placement` did not fully arrive. A transfer whose blocks
        were being written fails (recompute); a buffer is just dropped."""
        if placement.state is not None:
            try:
                self._fail(placement.state, f"frame of layer {placement.header.layer_index} cut off: {reason}")
            finally:
                self._unclaim(placement.state)

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

    def _unclaim(self, state: _Expected) -> None:
        with self._lock:
            state.writers -= 1

    def _claimed_targets(self, state: _Expected, header: Header, size: int) -> list[memoryview] | None:
        """`_direct_targets` under the claim `reserve` took, which is kept only when they are returned."""
        try:
            targets = self._direct_targets(state, header, size)
        except ValueError as exc:  # this frame cannot go into these blocks: recompute now, not at the timeout
            self._fail(state, str(exc))
            self._unclaim(state)
            raise
        if targets is None:
            self._unclaim(state)
        return targets

    def _direct_targets(self, state: _Expected, header: Header, size: int) -> list[memoryview] | None:
        """The payload's destination: a scratch buffer for the rows the engine holds, then its blocks."""
        span = FrameSpan.of(header)
        skip = min(max(state.local_tokens // header.block_size - span.first_block, 0), span.num_blocks)
        dest = state.block_ids[span.first_block + skip: span.first_block + span.num_blocks]
        if len(dest) != span.num_blocks - skip or span.num_blocks != header.shape[0]:
            raise ValueError(f"transfer {state.transfer_id}: frame covers blocks {span.first_block}-"
                             f"{span.first_block + span.num_blocks} ({header.shape[0]} sent) but "
                             f"{len(state.block_ids)} were allocated")
        blocks = self._locate(header.layer_index, dest, header, skip) if dest else []
        if blocks is None:
            return None
        row_bytes = size // span.num_blocks if span.num_blocks else 0
        scratch = [memoryview(np.empty(skip * row_bytes, dtype=np.uint8))] if skip else []
        return scratch + blocks

    def _apply(self, state: _Expected, header: Header, payload: Payload) -> None:
        """Apply one frame held in memory (the caller holds a claim on `state`)."""
        with state.lock:
            self._apply_locked(state, header, payload)

    def _apply_locked(self, state: _Expected, header: Header, payload: Payload) -> None:
        if state.done:
            return
        if not self._verify_after_write and checksum(payload) != header.checksum:
            self._checksum_failed(state, header)
            return
        self._touch(state, header)
        if header.token_start > state.covered.get(header.layer_index, 0):
            state.out_of_order.append((header, payload))
            return
        if not self._write_frame(state, header, payload):
            return
        self._advance(state, header, payload_size(payload))

    def _touch(self, state: _Expected, header: Header) -> None:
        now = self._clock()
        state.first_frame_s = state.first_frame_s or now
        state.last_frame_s = now
        state.num_layers = header.num_layers

    def _advance(self, state: _Expected, header: Header, nbytes: int) -> None:
        """A frame is in its blocks (state lock held): move the layer's coverage on, apply what waited."""
        self._touch(state, header)
        state.bytes += nbytes
        state.covered[header.layer_index] = max(state.covered.get(header.layer_index, 0), header.token_end)
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
            self._fail(state, f"frame covers blocks up to {span.first_block + span.num_blocks} but "
                              f"{len(state.block_ids)} were allocated")
            return False
        try:
            written = self._write(header.layer_index, dest, header, payload, skip)
        except ValueError as exc:  # another layout (model, block size, TP): recompute rather than wait
            self._fail(state, str(exc))
            return False
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


class _Placer:
    """One daemon thread running the stash replays `expect()` hands it, in order."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="kv-placer", daemon=True)
        self._thread.start()

    def submit(self, job: Callable[[], None]) -> None:
        self._jobs.put(job)

    def close(self) -> None:
        self._jobs.put(None)
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            try:
                job()
            except Exception:  # noqa: BLE001 - one transfer's failure must not stop every later one
                log.exception("KV placer: replaying a stash failed")
