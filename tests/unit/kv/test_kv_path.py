"""The KV data path without engines: frames, block copies, the receiving assembler, the transports.

Real sockets on 127.0.0.1 (ZeroMQ and gRPC); caches are small torch tensors in the CPU backend's layout.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest
import torch

from workers.kv.assembler import TransferAssembler
from workers.kv.blocks import as_bytes, block_parts, gather_blocks, runs, write_blocks
from workers.kv.service import KVTransferService, serve_kv_service
from workers.kv.transport import KVSenders, LoopbackSender, OutgoingFrame, ZmqReceiver, ZmqSender
from workers.kv.wire import checksum, make_header, payload_size

from kvframes import BLOCK, HEADS, LAYERS, WIDTH, assembler_for, cache, fields, frames, wait_finished

# ---- frames and blocks ----------------------------------------------------------------------------

def test_a_checksum_over_parts_equals_the_checksum_of_the_joined_bytes():
    parts = [b"abc", b"", b"defgh"]
    assert checksum(parts) == checksum(b"abcdefgh") and payload_size(parts) == 8


def test_runs_and_in_place_parts():
    assert runs([4, 5, 6, 9, 10, 2]) == [(4, 3), (9, 2), (2, 1)]
    source = cache()
    parts = block_parts(source[0], [3, 4, 5, 9])
    assert parts is not None and len(parts) == 2
    assert parts[0].base is not None  # views into the cache: nothing copied
    assert block_parts(source[0], [1, 3, 5, 7]) is None  # too scattered: gathered instead
    assert block_parts(source[0].transpose(1, 2), [1, 2]) is None  # blocks not contiguous


@pytest.mark.parametrize("source_ids", [[3, 4, 5, 6], [7, 2, 11, 3]])
def test_write_blocks_places_every_block_and_returns_the_frame_checksum(source_ids):
    source, destination = cache(), cache(fill=False)
    payload = block_parts(source[0], source_ids) or as_bytes(gather_blocks(source[0], source_ids))
    header = make_header(payload=payload, **fields("t", 0, 4, 16))
    digest = write_blocks(destination[0], [20, 21, 10, 11], header, payload, 0)
    assert digest == header.checksum
    for src, dst in zip(source_ids, [20, 21, 10, 11]):
        assert torch.equal(destination[0][dst], source[0][src])


def test_write_blocks_skips_rows_the_receiver_holds_and_still_checks_them():
    source, destination = cache(), cache(fill=False)
    payload = as_bytes(gather_blocks(source[0], [1, 2, 3]))
    header = make_header(payload=payload, **fields("t", 0, 3, 12))
    assert write_blocks(destination[0], [8, 9], header, payload, 1) == header.checksum
    assert torch.equal(destination[0][8], source[0][2]) and not destination[0][7].any()


def test_write_blocks_refuses_another_layout():
    source, other = cache(), torch.zeros(8, HEADS, BLOCK * 2, WIDTH, dtype=torch.bfloat16)
    payload = as_bytes(gather_blocks(source[0], [1]))
    with pytest.raises(ValueError, match="layout mismatch"):
        write_blocks(other, [1], make_header(payload=payload, **fields("t", 0, 1, 4)), payload, 0)


# ---- the assembler --------------------------------------------------------------------------------

def _deliver(assembler: TransferAssembler, outgoing: list[OutgoingFrame]) -> None:
    for frame in outgoing:
        header, parts = frame.wire()
        assembler.on_frame(header, [bytes(p) for p in parts])


def test_frames_before_and_after_expect_complete_the_transfer():
    source, destination = cache(), cache(fill=False)
    assembler = assembler_for(destination)
    outgoing = frames(source, "early", [1, 2], 8)
    _deliver(assembler, outgoing[:2])  # stashed: the decode engine has not allocated yet
    assert assembler.stash_bytes > 0
    assembler.expect("early", "req-early", [5, 6], 0, 8)
    _deliver(assembler, outgoing[2:])
    finished, failed = assembler.poll()
    assert finished == {"req-early"} and not failed
    assert all(torch.equal(destination[layer][5:7], source[layer][1:3]) for layer in range(LAYERS))
    assert assembler.outcome("early").complete and assembler.stash_bytes == 0


def test_a_corrupt_frame_fails_the_transfer_for_recompute():
    source, destination = cache(), cache(fill=False)
    assembler = assembler_for(destination)
    assembler.expect("bad", "req-bad", [5, 6], 0, 8)
    outgoing = frames(source, "bad", [1, 2], 8)
    outgoing[1] = OutgoingFrame("", outgoing[1].fields, outgoing[1].buffer, corrupt=True)
    _deliver(assembler, outgoing)
    finished, failed = assembler.poll()
    assert finished == failed == {"req-bad"}
    assert "checksum" in assembler.outcome("bad").failure and assembler.counters.checksum_failures == 1


def test_a_missing_transfer_times_out_and_an_unclaimed_stash_expires():
    now = [0.0]
    assembler = assembler_for(cache(fill=False), timeout_s=2.0, clock=lambda: now[0])
    assembler.expect("never", "req-never", [1], 0, 4)
    _deliver(assembler, frames(cache(), "orphan", [1], 4)[:1])  # a request that never reaches decode
    now[0] = 3.0
    finished, failed = assembler.poll()
    assert finished == failed == {"req-never"}
    assert "timeout" in assembler.outcome("never").failure
    assert assembler.stash_bytes == 0 and assembler.counters.timeouts == 1


def test_abort_and_cancel_end_a_waiting_transfer():
    assembler = assembler_for(cache(fill=False))
    assembler.abort("gone", "prefill worker lost")  # before expect: remembered
    assembler.expect("gone", "req-gone", [1], 0, 4)
    assembler.expect("late", "req-late", [2], 0, 4)
    assembler.cancel("req-late")  # the request ended (deadline) while waiting
    finished, failed = assembler.poll()
    assert finished == {"req-gone", "req-late"} and failed == {"req-gone"}


def test_frames_out_of_order_within_a_layer_are_applied_in_order():
    source, destination = cache(), cache(fill=False)
    assembler = assembler_for(destination)
    assembler.expect("chunks", "req-chunks", [10, 11, 12], 0, 12)
    chunk_frames = []
    for layer in range(LAYERS):
        for start, ids in ((0, [1, 2]), (8, [3])):
            payload = as_bytes(gather_blocks(source[layer], ids))
            f = fields("chunks", layer, len(ids), 8 if start == 0 else 12, token_start=start)
            chunk_frames.append(OutgoingFrame("", f, payload))
    _deliver(assembler, list(reversed(chunk_frames)))
    finished, failed = assembler.poll()
    assert finished == {"req-chunks"} and not failed
    assert all(torch.equal(destination[layer][10:13], source[layer][1:4]) for layer in range(LAYERS))


# ---- transports -----------------------------------------------------------------------------------

@pytest.mark.parametrize("transport", ["zmq", "grpc"])
def test_frames_travel_over_real_sockets_and_buffers_are_released(transport):
    source, destination = cache(), cache(fill=False)
    assembler = assembler_for(destination)
    if transport == "zmq":
        receiver = ZmqReceiver(assembler, "127.0.0.1", 0)
        endpoint, stop = receiver.endpoint, receiver.close
    else:
        server, endpoint = serve_kv_service(KVTransferService(assembler), "127.0.0.1", 0)
        stop = lambda: server.stop(0)  # noqa: E731
    released = threading.Semaphore(0)
    senders = KVSenders()
    try:
        assembler.expect("t1", "req-1", [20, 21, 22], 0, 12)
        for frame in frames(source, "t1", [3, 4, 5], 12, endpoint, on_done=released.release):
            senders.send(frame)
        finished, failed = wait_finished(assembler)
        assert finished == {"req-1"} and not failed
        assert all(released.acquire(timeout=10) for _ in range(LAYERS))  # every frame's buffers let go
        assert all(torch.equal(destination[layer][20:23], source[layer][3:6]) for layer in range(LAYERS))
        assert senders.counters.frames_sent == LAYERS and senders.counters.bytes_sent == assembler.counters.bytes_total
    finally:
        senders.close()
        stop()


def test_a_frame_to_a_dead_endpoint_is_dropped_and_released_never_raised():
    released = threading.Event()
    senders = KVSenders()
    try:
        frame = frames(cache(), "t", [1], 4, "grpc://127.0.0.1:1", on_done=released.set)[0]
        senders.send(frame)  # nothing listens there: the engine thread must not notice
        assert released.wait(30)
    finally:
        senders.close()


def test_zmq_frames_for_a_dead_peer_are_dropped_within_the_send_wait_and_live_peers_still_get_theirs():
    """A decode worker that died leaves its endpoint dead: frames for it must not queue for a reconnect
    that never comes (holding the prefill engine's blocks), nor delay frames to a live receiver."""
    source, destination = cache(), cache(fill=False)
    assembler = assembler_for(destination)
    receiver = ZmqReceiver(assembler, "127.0.0.1", 0)
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        dead = f"zmq://127.0.0.1:{probe.getsockname()[1]}"
    sender = ZmqSender(send_wait_s=0.2, release_timeout_s=30.0)
    released = threading.Semaphore(0)
    try:
        started = time.monotonic()
        for frame in frames(source, "t-dead", [1], 4, dead, on_done=released.release):
            sender.send(frame)
        assert all(released.acquire(timeout=10) for _ in range(LAYERS))
        assert time.monotonic() - started < 5 and sender.counters.frames_dropped == LAYERS
        assembler.expect("t-live", "req-live", [20], 0, 4)
        for frame in frames(source, "t-live", [3], 4, receiver.endpoint, on_done=released.release):
            sender.send(frame)
        finished, failed = wait_finished(assembler)
        assert finished == {"req-live"} and not failed
        assert all(released.acquire(timeout=10) for _ in range(LAYERS))
    finally:
        sender.close()
        receiver.close()


def test_loopback_twin_delivers_into_an_assembler():
    source, destination = cache(), cache(fill=False)
    assembler = assembler_for(destination)
    assembler.expect("loop", "req-loop", [7, 8], 0, 8)
    sender = LoopbackSender(assembler)
    for frame in frames(source, "loop", [1, 2], 8):
        sender.send(frame)
    assert sender.flush(10)
    assert assembler.poll()[0] == {"req-loop"}
    sender.close()


def test_pending_sends_report_a_request_once_finished_and_sent():
    from workers.kv.transport import PendingSends

    sends = PendingSends()
    sends.track("a")
    sends.add("a")
    sends.add("a")
    sends.track("b")  # a request whose frames were all gathered (nothing in flight)
    assert sends.finished({"a", "b", "other"}) == {"b"}
    sends.done("a")
    assert sends.finished(set()) == set()
    sends.done("a")
    assert sends.finished(set()) == {"a"}
    assert sends.finished({"a"}) == set()  # reported once
