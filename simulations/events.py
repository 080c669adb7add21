"""The discrete-event loop: a clock and a heap of events; each event returns its follow-up events.

An event is `(time_s, handler, payload)`. The loop pops the earliest, calls `handler(time_s, payload)`
and pushes whatever (time_s, handler, payload) triples the handler returns. Ties run in the order they
were scheduled. Handlers decide nothing about time other than what they return (Vidur's split:
scheduling in the handlers, timing from the step-time model they call).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable
from typing import Any

Handler = Callable[[float, Any], "Iterable[Event] | None"]
Event = tuple[float, Handler, Any]


class EventLoop:
    """Runs events in time order until none are left or `until_s` passes."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Handler, Any]] = []
        self._seq = 0
        self.now_s = 0.0
        self.num_events = 0

    def schedule(self, events: Iterable[Event] | None) -> None:
        """Add events; an event in the past runs at the current time."""
        if not events:
            return
        for time_s, handler, payload in events:
            self._seq += 1
            heapq.heappush(self._heap, (max(time_s, self.now_s), self._seq, handler, payload))

    def run(self, until_s: float = float("inf"), on_progress: Callable[[float], None] | None = None) -> float:
        """Process events in order; returns the time of the last one processed."""
        heap, push, pop = self._heap, heapq.heappush, heapq.heappop
        while heap and heap[0][0] <= until_s:
            time_s, _, handler, payload = pop(heap)
            self.now_s = time_s
            self.num_events += 1
            follow = handler(time_s, payload)
            if follow:
                for event in follow:
                    self._seq += 1
                    push(heap, (max(event[0], time_s), self._seq, event[1], event[2]))
            if on_progress is not None and not self.num_events & 0x3FFF:
                on_progress(time_s)
        return self.now_s

    def __len__(self) -> int:
        return len(self._heap)
