"""The gateway's dispatch queue: slots while there are any, then the fair order (priority, then deficit
round robin over tenants), cancellation while waiting, capacity that grows."""

from __future__ import annotations

import asyncio

import pytest

from orchestrator.budget import QueueEntry
from orchestrator.config import BudgetConfig
from orchestrator.gateway.queue import DispatchQueue


async def _run_in_order(queue: DispatchQueue, entries: list[tuple[float, QueueEntry]]) -> list[str]:
    """Each entry acquires at its delay, holds its slot for a moment, releases; the grant order comes back."""
    granted: list[str] = []

    async def one(delay: float, entry: QueueEntry) -> None:
        await asyncio.sleep(delay)
        await queue.acquire(entry)
        granted.append(entry.request_id)
        await asyncio.sleep(0.01)
        queue.release()

    await asyncio.gather(*(one(delay, entry) for delay, entry in entries))
    return granted


def test_free_slots_are_taken_at_once_then_requests_wait():
    async def run():
        queue = DispatchQueue(lambda: 2, BudgetConfig())
        await queue.acquire(QueueEntry("a", "t"))
        await queue.acquire(QueueEntry("b", "t"))
        waiter = asyncio.ensure_future(queue.acquire(QueueEntry("c", "t")))
        await asyncio.sleep(0.01)
        assert not waiter.done() and queue.depth == 1
        queue.release()
        await asyncio.wait_for(waiter, 1)
        assert queue.in_use == 2 and queue.depth == 0

    asyncio.run(run())


def test_a_burst_of_one_tenant_does_not_starve_another():
    burst = [(0.0, QueueEntry(f"burst-{i}", "burst", num_tokens=20)) for i in range(8)]
    trickle = [(0.002, QueueEntry("trickle-0", "trickle", num_tokens=20)),
               (0.003, QueueEntry("trickle-1", "trickle", num_tokens=20))]
    order = asyncio.run(_run_in_order(DispatchQueue(lambda: 1, BudgetConfig()), burst + trickle))
    assert max(order.index("trickle-0"), order.index("trickle-1")) <= 4, order


def test_priority_goes_first():
    entries = [(0.0, QueueEntry(f"n{i}", "t", num_tokens=10)) for i in range(5)]
    entries.append((0.002, QueueEntry("urgent", "t", priority=5, num_tokens=10)))
    order = asyncio.run(_run_in_order(DispatchQueue(lambda: 1, BudgetConfig()), entries))
    assert order.index("urgent") == 1, order  # right after the one already running


def test_a_waiter_that_gives_up_leaves_no_slot_taken():
    async def run():
        queue = DispatchQueue(lambda: 1, BudgetConfig())
        await queue.acquire(QueueEntry("a", "t"))
        waiter = asyncio.ensure_future(queue.acquire(QueueEntry("b", "t")))
        await asyncio.sleep(0.01)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        queue.release()
        assert queue.in_use == 0 and queue.depth == 0

    asyncio.run(run())


def test_growing_capacity_lets_waiters_in():
    async def run():
        capacity = {"n": 1}
        queue = DispatchQueue(lambda: capacity["n"], BudgetConfig())
        await queue.acquire(QueueEntry("a", "t"))
        waiter = asyncio.ensure_future(queue.acquire(QueueEntry("b", "t")))
        await asyncio.sleep(0.01)
        capacity["n"] = 2
        queue.poke()
        await asyncio.wait_for(waiter, 1)

    asyncio.run(run())
