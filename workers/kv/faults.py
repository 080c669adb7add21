"""KV transfer fault injection for chaos tests: documented, off unless a test turns it on.

A prefill worker's `inject_kv_fault(kind, count=1, every=1, stall_s=None)` arms a `KVFaultPlan`; each
push the worker makes asks it for its fault (`next_push`), which rides in `KVPush.fault` to the engine:
- `corrupt`: one frame's bytes differ from its checksum (the receiver recomputes);
- `drop`: no frame of the transfer is sent (the receiver times out and recomputes);
- `stall`: the sender thread holds the transfer's frames for `stall_s` seconds (`HeldFrames`; the
  engine is not blocked, other transfers go on), then sends them; past `kv.timeout_s` the receiver
  has already recomputed and ignores them.
`count` pushes get it (the next ones), or with `every=N` every Nth push until `clear()`.
"""

from __future__ import annotations

import heapq
import time
from dataclasses import dataclass
from typing import Any

KINDS = ("corrupt", "drop", "stall")
STALL_PAST_TIMEOUT_S = 5.0  # the default stall: this much longer than kv.timeout_s


@dataclass(frozen=True)
class KVFault:
    kind: str
    stall_s: float = 0.0


class KVFaultPlan:
    """Which of a worker's pushes get a fault (the worker's event loop only)."""

    def __init__(self, default_stall_s: float) -> None:
        self._default_stall_s = default_stall_s
        self._next: list[KVFault] = []  # for the next pushes, in order
        self._every: tuple[int, KVFault] | None = None  # every Nth push, until cleared
        self._num_pushes = 0

    def inject(self, kind: str, count: int = 1, every: int = 1, stall_s: float | None = None) -> None:
        """Arm a fault: the next `count` pushes, or (every > 1) every `every`th push from now on.
        Raises ValueError for an unknown kind, a count or every below 1, both set, or a negative stall."""
        if kind not in KINDS:
            raise ValueError(f"unknown KV fault {kind!r}: use one of {', '.join(KINDS)}")
        if count < 1 or every < 1:
            raise ValueError(f"KV fault count ({count}) and every ({every}) must be at least 1")
        if count > 1 and every > 1:
            raise ValueError("a KV fault takes count (the next pushes) or every (every Nth push until cleared), not both")
        if stall_s is not None and (kind != "stall" or stall_s < 0):
            raise ValueError(f"stall_s ({stall_s}) applies to the stall fault only, and cannot be negative")
        fault = KVFault(kind, (self._default_stall_s if stall_s is None else stall_s) if kind == "stall" else 0.0)
        if every > 1:
            self._every = (every, fault)
            self._num_pushes = 0
        else:
            self._next.extend([fault] * count)

    def clear(self) -> None:
        """Disarm every fault."""
        self._next.clear()
        self._every = None

    def next_push(self) -> KVFault | None:
        """The fault of the push being made now, if any."""
        self._num_pushes += 1
        if self._next:
            return self._next.pop(0)
        if self._every is not None and self._num_pushes % self._every[0] == 0:
            return self._every[1]
        return None


class HeldFrames:
    """Frames a `stall` holds back (`OutgoingFrame.hold_until_s`), in due order (one sender thread)."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Any]] = []
        self._count = 0

    def hold(self, frame: Any) -> bool:
        """Keep `frame` until its `hold_until_s`, if that is still to come; False: send it now."""
        if frame.hold_until_s <= time.monotonic():
            return False
        self._count += 1
        heapq.heappush(self._heap, (frame.hold_until_s, self._count, frame))
        return True

    def wait_s(self) -> float | None:
        """How long the sender may wait for new frames before a held one is due (None: none held)."""
        return max(self._heap[0][0] - time.monotonic(), 0.0) if self._heap else None

    def due(self) -> list[Any]:
        now, frames = time.monotonic(), []
        while self._heap and self._heap[0][0] <= now:
            frames.append(heapq.heappop(self._heap)[2])
        return frames

    def drain(self) -> list[Any]:
        """Every frame still held (the sender is closing)."""
        frames = [item[2] for item in sorted(self._heap, key=lambda item: item[:2])]
        self._heap.clear()
        return frames
