"""The gateway's dispatch queue: who runs next when every decode slot is taken.

A request takes one slot for as long as it runs on a decode worker. While slots are free it goes at
once; when none is, it waits here, and each freed slot goes to the request `orchestrator.budget.FairOrder`
picks (higher priority first, then deficit round robin over tenants, weighted by the tenants' config),
so one tenant's burst cannot starve another's trickle. A wait ends early when the caller gives up
(deadline, cancel: the caller cancels `acquire`). Used from one event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from orchestrator.budget import FairOrder, QueueEntry
from orchestrator.config import BudgetConfig
from orchestrator.metrics import queue_depth


class DispatchQueue:
    def __init__(self, capacity: Callable[[], int], config: BudgetConfig) -> None:
        """`capacity()`: slots the routable decode workers offer now (re-read at every decision)."""
        self._capacity = capacity
        self._order = FairOrder(lambda tenant: config.tenant(tenant).weight)
        self.in_use = 0
        self._waiting: dict[str, tuple[QueueEntry, asyncio.Future]] = {}

    @property
    def depth(self) -> int:
        return len(self._waiting)

    async def acquire(self, entry: QueueEntry) -> None:
        """Take a slot, waiting in fair order if none is free. Cancel the call to give up waiting."""
        if not self._waiting and self.in_use < self._capacity():
            self.in_use += 1
            return
        future = asyncio.get_running_loop().create_future()
        self._waiting[entry.request_id] = (entry, future)
        queue_depth.set(len(self._waiting))
        try:
            self._grant()
            await future
        except BaseException:
            if future.done() and not future.cancelled():
                self.release()  # granted while being cancelled: hand the slot on
            raise
        finally:
            self._waiting.pop(entry.request_id, None)
            queue_depth.set(len(self._waiting))

    def release(self) -> None:
        """Give a slot back (once per successful `acquire`)."""
        self.in_use = max(self.in_use - 1, 0)
        self._grant()

    def poke(self) -> None:
        """Capacity may have grown (a worker became ready): grant what it allows."""
        self._grant()

    def _grant(self) -> None:
        while self.in_use < self._capacity():
            pending = [entry for entry, future in self._waiting.values() if not future.done()]
            if not pending:
                return
            entry = self._order.next(pending)
            self.in_use += 1
            self._waiting[entry.request_id][1].set_result(None)
