"""KV fault injection for chaos tests: which pushes get a fault, and the `stall` fault on a real sender."""

from __future__ import annotations

import time

import pytest
import torch

from workers.kv.faults import KVFault, KVFaultPlan
from workers.kv.transport import KVSenders, ZmqReceiver

from kvframes import LAYERS, assembler_for, cache, frames, wait_finished


def test_count_faults_the_next_pushes_and_every_faults_each_nth_until_cleared():
    plan = KVFaultPlan(default_stall_s=15.0)
    plan.inject("drop", count=2)
    assert [plan.next_push() for _ in range(3)] == [KVFault("drop"), KVFault("drop"), None]
    plan.inject("stall", every=3)
    assert [plan.next_push() for _ in range(7)] == [None, None, KVFault("stall", 15.0), None, None,
                                                    KVFault("stall", 15.0), None]
    plan.inject("corrupt")  # a one-off goes first, the periodic fault stays armed
    assert plan.next_push() == KVFault("corrupt")
    plan.clear()
    assert all(plan.next_push() is None for _ in range(10))
    plan.inject("stall", stall_s=0.5)
    assert plan.next_push() == KVFault("stall", 0.5)


@pytest.mark.parametrize("arguments, message", [
    ({"kind": "melt"}, "unknown KV fault"), ({"kind": "drop", "count": 0}, "at least 1"),
    ({"kind": "drop", "count": 2, "every": 2}, "not both"), ({"kind": "drop", "stall_s": 1.0}, "stall fault only"),
    ({"kind": "stall", "stall_s": -1.0}, "cannot be negative"),
])
def test_bad_faults_are_refused(arguments, message):
    with pytest.raises(ValueError, match=message):
        KVFaultPlan(default_stall_s=15.0).inject(**arguments)


def test_a_stalled_transfer_is_held_on_the_sender_thread_while_others_go_then_sent():
    source, destination = cache(), cache(fill=False)
    assembler = assembler_for(destination)
    receiver = ZmqReceiver(assembler, "127.0.0.1", 0)
    senders = KVSenders()
    try:
        assembler.expect("stalled", "req-stalled", [1, 2], 0, 8)
        assembler.expect("other", "req-other", [5, 6], 0, 8)
        sent_s = time.monotonic()
        for frame in frames(source, "stalled", [10, 11], 8, receiver.endpoint, hold_until_s=sent_s + 1.5):
            senders.send(frame)  # returns at once: the engine is not held
        assert time.monotonic() - sent_s < 0.5
        for frame in frames(source, "other", [12, 13], 8, receiver.endpoint):
            senders.send(frame)
        assert wait_finished(assembler) == ({"req-other"}, set())
        assert time.monotonic() - sent_s < 1.5 and assembler.counters.frames_total == LAYERS  # held back
        assert wait_finished(assembler) == ({"req-stalled"}, set())
        assert time.monotonic() - sent_s >= 1.5
        assert all(torch.equal(destination[layer][1:3], source[layer][10:12]) for layer in range(LAYERS))
    finally:
        senders.close()
        receiver.close()
