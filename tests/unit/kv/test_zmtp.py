"""The direct receive path: payloads placed straight into their blocks (`reserve`/`commit`), and the ZMTP
PULL endpoint that does it, against real libzmq PUSH sockets and hand-made peers on 127.0.0.1."""

from __future__ import annotations

import socket
import struct
import threading
import time

import numpy as np
import pytest
import torch
import zmq

from workers.kv.assembler import TransferAssembler
from workers.kv.blocks import as_bytes, block_parts, gather_blocks, locate_blocks, write_blocks
from workers.kv.receiving import start_receiving
from workers.kv.transport import KVSenders, OutgoingFrame
from workers.kv.wire import make_header
from workers.kv.zmtp import ZmtpReceiver, command, greeting, ready

from kvframes import BLOCK, LAYERS, cache, fields, frames, wait_finished


class Recorder:
    """An assembler over `destination` whose copying writes are counted (a direct placement makes none)."""

    def __init__(self, destination: list[torch.Tensor], **options) -> None:
        self.copies = 0

        def write(layer, ids, header, payload, first):
            self.copies += 1
            return write_blocks(destination[layer], ids, header, payload, first)

        self.assembler = TransferAssembler(write, timeout_s=options.pop("timeout_s", 5.0), verify_after_write=True,
                                           locate=lambda layer, ids, header, first: locate_blocks(destination[layer], ids,
                                                                                                 header, first),
                                           **options)


def fill(placement, data: bytes) -> None:
    at = 0
    for target in placement.targets:
        target[:] = data[at:at + target.nbytes]
        at += target.nbytes


def frame_bytes(frame: OutgoingFrame):
    header, parts = frame.wire()
    return header, b"".join(bytes(p) for p in parts)


# ---- reserve / commit, no sockets -------------------------------------------------------------------

def test_a_registered_frame_is_placed_in_its_blocks_without_a_copy():
    source, destination = cache(), cache(fill=False)
    recorder = Recorder(destination)
    recorder.assembler.expect("t", "req", [20, 21, 9], 0, 12)
    for frame in frames(source, "t", [3, 4, 5], 12):
        header, data = frame_bytes(frame)
        placement = recorder.assembler.reserve(header)
        assert placement.state is not None and placement.nbytes == len(data)
        fill(placement, data)
        recorder.assembler.commit(placement)
    assert recorder.assembler.poll() == ({"req"}, set())
    assert recorder.copies == 0
    for layer in range(LAYERS):
        assert torch.equal(destination[layer][20:22], source[layer][3:5]) and torch.equal(destination[layer][9], source[layer][5])


def test_rows_the_engine_holds_go_to_scratch_and_still_count_in_the_checksum():
    source, destination = cache(), cache(fill=False)
    recorder = Recorder(destination)
    recorder.assembler.expect("t", "req", [7, 8, 9], BLOCK, 12)  # block 7 comes from the local prefix cache
    for frame in frames(source, "t", [1, 2, 3], 12):
        header, data = frame_bytes(frame)
        placement = recorder.assembler.reserve(header)
        fill(placement, data)
        recorder.assembler.commit(placement)
    assert recorder.assembler.poll() == ({"req"}, set())
    assert not destination[0][7].any() and torch.equal(destination[0][8:10], source[0][2:4])


def test_a_frame_before_its_blocks_is_buffered_then_copied():
    source, destination = cache(), cache(fill=False)
    recorder = Recorder(destination)
    for frame in frames(source, "t", [1, 2], 8):
        header, data = frame_bytes(frame)
        placement = recorder.assembler.reserve(header)
        assert placement.state is None
        fill(placement, data)
        recorder.assembler.commit(placement)
    assert recorder.assembler.stash_bytes > 0
    recorder.assembler.expect("t", "req", [4, 5], 0, 8)
    assert recorder.assembler.poll() == ({"req"}, set())
    assert recorder.copies == LAYERS and torch.equal(destination[2][4:6], source[2][1:3])


def test_bytes_that_differ_from_the_checksum_fail_the_transfer():
    source, destination = cache(), cache(fill=False)
    recorder = Recorder(destination)
    recorder.assembler.expect("t", "req", [4], 0, 4)
    header, data = frame_bytes(frames(source, "t", [1], 4)[0])
    placement = recorder.assembler.reserve(header)
    fill(placement, bytes(len(data)))
    recorder.assembler.commit(placement)
    assert recorder.assembler.poll() == ({"req"}, {"req"})
    assert "checksum" in recorder.assembler.outcome("t").failure


def test_a_cancelled_transfer_is_reported_only_once_its_write_ended():
    source, destination = cache(), cache(fill=False)
    recorder = Recorder(destination)
    recorder.assembler.expect("t", "req", [4], 0, 4)
    header, data = frame_bytes(frames(source, "t", [1], 4)[0])
    placement = recorder.assembler.reserve(header)  # a receiver is reading into block 4 now
    recorder.assembler.cancel("req")
    assert recorder.assembler.poll() == (set(), set())  # block 4 must not change hands yet
    recorder.assembler.release(placement, "connection lost")
    assert recorder.assembler.poll() == ({"req"}, set())


def test_headers_that_cannot_be_placed_are_refused():
    recorder = Recorder(cache(fill=False), max_stash_bytes=1024)
    payload = bytes(2048)
    big = make_header(payload=payload, **{**fields("t", 0, 8, 32), "shape": (8, 256)})
    big.dtype = "uint8"
    with pytest.raises(ValueError, match="more than the 1024"):
        recorder.assembler.reserve(big)
    odd = make_header(payload=payload, **fields("t", 0, 4, 16))
    odd.dtype = "complex32"
    with pytest.raises(ValueError, match="unknown dtype"):
        recorder.assembler.reserve(odd)
    recorder.assembler.expect("u", "req", [1, 2], 0, 8)
    other = make_header(payload=payload, **{**fields("u", 0, 2, 8), "shape": (2, 2, BLOCK * 2, 8)})
    with pytest.raises(ValueError, match="layout mismatch"):
        recorder.assembler.reserve(other)
    assert recorder.assembler.poll() == ({"req"}, {"req"})  # recomputed now, not at the timeout; claim let go
    assert "layout mismatch" in recorder.assembler.outcome("u").failure


def test_the_stash_is_placed_off_the_engine_thread():
    source, destination = cache(), cache(fill=False)
    entered, gate = threading.Event(), threading.Event()
    placed_on = []

    def write(layer, ids, header, payload, first):
        entered.set()
        gate.wait(10)
        placed_on.append(threading.current_thread().name)
        return write_blocks(destination[layer], ids, header, payload, first)

    assembler = TransferAssembler(write, timeout_s=5.0, verify_after_write=True, place_in_background=True)
    try:
        for transfer_id in ("t", "u"):
            for frame in frames(source, transfer_id, [1, 2], 8):
                header, data = frame_bytes(frame)
                assembler.on_frame(header, data)
        assembler.expect("t", "req-t", [4, 5], 0, 8)  # returns at once: the copies wait on the gate
        assembler.expect("u", "req-u", [6, 7], 0, 8)
        assert entered.wait(5)
        assembler.cancel("req-t")  # ended while a copy into its blocks is under way: held back
        assert assembler.poll() == (set(), set())
        gate.set()
        assert wait_finished(assembler, count=2) == ({"req-t", "req-u"}, set())
        assert set(placed_on) == {"kv-placer"} and len(placed_on) == 1 + LAYERS  # t: the copy under way only
        assert torch.equal(destination[1][6:8], source[1][1:3])
    finally:
        assembler.close()


def test_a_stashed_frame_of_another_layout_fails_the_transfer_not_the_engine():
    source = cache()
    recorder = Recorder([torch.zeros(32, 2, BLOCK * 2, 8, dtype=torch.bfloat16) for _ in range(LAYERS)])
    header, data = frame_bytes(frames(source, "t", [1, 2], 8)[0])
    recorder.assembler.on_frame(header, data)
    recorder.assembler.expect("t", "req", [4, 5], 0, 8)  # the engine thread: must not raise
    assert recorder.assembler.poll() == ({"req"}, {"req"})
    assert "layout mismatch" in recorder.assembler.outcome("t").failure


# ---- the ZMTP endpoint with real libzmq senders -----------------------------------------------------

@pytest.fixture
def receiving():
    source, destination = cache(), cache(fill=False)
    recorder = Recorder(destination)
    receiver = ZmtpReceiver(recorder.assembler, "127.0.0.1", 0, stall_timeout_s=1.0)
    senders = KVSenders()
    yield source, destination, recorder, receiver, senders
    senders.close()
    receiver.close()


def test_libzmq_push_frames_land_in_the_blocks_and_buffers_are_released(receiving):
    source, destination, recorder, receiver, senders = receiving
    recorder.assembler.expect("t1", "req-1", [20, 21, 22, 25], 0, 16)
    released = threading.Semaphore(0)
    outgoing = frames(source, "t1", [3, 4, 10, 11], 16, receiver.endpoint, on_done=released.release)
    assert len(outgoing[0].parts()) == 2  # two runs of blocks: a payload of two ZeroMQ frames
    for frame in outgoing:
        senders.send(frame)
    assert wait_finished(recorder.assembler) == ({"req-1"}, set())
    assert all(released.acquire(timeout=10) for _ in range(LAYERS))
    assert recorder.copies == 0
    for layer in range(LAYERS):
        assert torch.equal(destination[layer][20:22], source[layer][3:5])
        assert torch.equal(destination[layer][22], source[layer][10]) and torch.equal(destination[layer][25], source[layer][11])


def test_frames_that_come_first_wait_for_their_blocks(receiving):
    source, destination, recorder, receiver, senders = receiving
    for frame in frames(source, "t2", [7, 8], 8, receiver.endpoint):
        senders.send(frame)
    assert senders.flush(10)
    deadline = time.monotonic() + 10
    while recorder.assembler.counters.frames_total < LAYERS and time.monotonic() < deadline:
        time.sleep(0.01)
    recorder.assembler.expect("t2", "req-2", [1, 2], 0, 8)
    assert wait_finished(recorder.assembler) == ({"req-2"}, set())
    assert all(torch.equal(destination[layer][1:3], source[layer][7:9]) for layer in range(LAYERS))


def test_a_bad_header_costs_its_frame_not_the_connection(receiving):
    source, destination, recorder, receiver, _ = receiving
    push = zmq.Context.instance().socket(zmq.PUSH)
    push.connect(f"tcp://{receiver.endpoint.removeprefix('zmq://')}")
    try:
        recorder.assembler.expect("t3", "req-3", [5], 0, 4)
        push.send_multipart([b"\xff\xffnot a header", b"x" * 1000])
        wrong_size = frames(source, "t3", [1], 4)[0]
        header, data = frame_bytes(wrong_size)
        push.send_multipart([header.SerializeToString(), data + b"extra"])  # more bytes than its header says
        for frame in frames(source, "t3", [1], 4):
            header, data = frame_bytes(frame)
            push.send_multipart([header.SerializeToString(), data])
        finished, failed = wait_finished(recorder.assembler)
    finally:
        push.close(linger=0)
    assert finished == failed == {"req-3"}  # the oversized frame had already been written: recompute
    assert receiver.frames_rejected == 2
    assert "payload size" in recorder.assembler.outcome("t3").failure


# ---- hand-made peers: the protocol's edges ---------------------------------------------------------

def connect(receiver: ZmtpReceiver, socket_type: bytes = b"PUSH") -> socket.socket:
    host, port = receiver.endpoint.removeprefix("zmq://").split(":")
    peer = socket.create_connection((host, int(port)), timeout=5)
    peer.sendall(greeting() + ready(socket_type))
    theirs = recv_exact(peer, 64)
    assert theirs[0] == 0xFF and theirs[10] == 3 and theirs[12:16] == b"NULL"
    flags, size = recv_exact(peer, 2)
    assert flags == 0x04 and recv_exact(peer, size) == b"\x05READY\x0bSocket-Type\x00\x00\x00\x04PULL"
    return peer


def recv_exact(peer: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = peer.recv(size - len(data))
        if not chunk:
            return data
        data += chunk
    return data


def message_frame(data: bytes, more: bool) -> bytes:
    return bytes([0x03 if more else 0x02]) + struct.pack(">Q", len(data)) + data


def test_a_peer_lost_mid_payload_fails_the_transfer_it_was_writing(receiving):
    source, destination, recorder, receiver, _ = receiving
    recorder.assembler.expect("t4", "req-4", [3], 0, 4)
    header, data = frame_bytes(frames(source, "t4", [1], 4)[0])
    peer = connect(receiver)
    peer.sendall(message_frame(header.SerializeToString(), True) + bytes([0x02]) + struct.pack(">Q", len(data))
                 + data[:len(data) // 2])
    time.sleep(0.3)
    recorder.assembler.cancel("req-4")  # the request ended meanwhile: its block stays claimed
    assert recorder.assembler.poll() == (set(), set())
    peer.close()
    finished, _ = wait_finished(recorder.assembler)
    assert finished == {"req-4"}


def test_a_peer_silent_mid_payload_is_cut_off_after_the_stall_timeout(receiving):
    source, destination, recorder, receiver, _ = receiving
    recorder.assembler.expect("t5", "req-5", [3], 0, 4)
    header, data = frame_bytes(frames(source, "t5", [1], 4)[0])
    peer = connect(receiver)
    try:
        peer.sendall(message_frame(header.SerializeToString(), True) + bytes([0x02]) + struct.pack(">Q", len(data)))
        finished, failed = wait_finished(recorder.assembler, timeout_s=5)
        assert finished == failed == {"req-5"}
        assert "cut off" in recorder.assembler.outcome("t5").failure
        assert recv_exact(peer, 1) == b""  # the receiver closed the connection
    finally:
        peer.close()


def test_ping_is_answered_and_a_peer_that_is_not_push_is_refused(receiving):
    receiver = receiving[3]
    peer = connect(receiver)
    try:
        peer.sendall(command(b"PING", b"\x00\x0a" + b"ctx"))
        assert recv_exact(peer, 2 + 5 + 3) == command(b"PONG", b"ctx")
    finally:
        peer.close()
    stranger = connect(receiver, socket_type=b"PUB")
    try:
        assert recv_exact(stranger, 1) == b""
    finally:
        stranger.close()


def test_a_peer_that_connects_and_says_nothing_is_dropped(receiving):
    host, port = receiving[3].endpoint.removeprefix("zmq://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as peer:
        assert len(recv_exact(peer, 64)) == 64  # our greeting
        assert recv_exact(peer, 1) == b""  # closed after the stall timeout (1 s here)


def test_start_receiving_builds_either_receiver_and_refuses_others():
    views = cache(fill=False)
    for kind in ("direct", "libzmq"):
        assembler, receiver = start_receiving(kind, views, "127.0.0.1", 0, timeout_s=1.0, max_stash_bytes=1 << 20)
        try:
            assert receiver.endpoint.startswith("zmq://127.0.0.1:")
        finally:
            receiver.close()
    with pytest.raises(ValueError, match="unknown KV receiver"):
        start_receiving("carrier-pigeon", views, "127.0.0.1", 0, timeout_s=1.0, max_stash_bytes=1)


def test_close_ends_open_connections_promptly():
    receiver = ZmtpReceiver(TransferAssembler(lambda *a: None, timeout_s=1.0), "127.0.0.1", 0)
    peer = connect(receiver)
    started = time.monotonic()
    receiver.close()
    assert time.monotonic() - started < 3
    assert recv_exact(peer, 1) == b""
    peer.close()


def test_gathered_payload_round_trips_through_placement():
    """A frame gathered from scattered blocks (one buffer) is placed like a zero-copy one."""
    source, destination = cache(), cache(fill=False)
    recorder = Recorder(destination)
    recorder.assembler.expect("g", "req", [12, 13, 14], 0, 12)
    for layer in range(LAYERS):
        ids = [9, 1, 5]
        payload = block_parts(source[layer], ids) or as_bytes(gather_blocks(source[layer], ids))
        header = make_header(payload=payload, **fields("g", layer, 3, 12))
        placement = recorder.assembler.reserve(header)
        fill(placement, np.ascontiguousarray(payload).tobytes())
        recorder.assembler.commit(placement)
    assert recorder.assembler.poll() == ({"req"}, set())
    assert torch.equal(destination[1][12], source[1][9]) and torch.equal(destination[1][14], source[1][5])


# ---- reads of queued bytes (made holding the GIL; its effect shows in the KV benchmark's busy rows) ----


def test_queued_bytes_are_read_in_order_into_the_buffers_and_an_empty_socket_says_none():
    from workers.kv.zmtp import recv_queued

    ours, theirs = socket.socketpair()
    first, second = memoryview(bytearray(3)), memoryview(bytearray(8))
    assert recv_queued(ours.fileno(), [first, second]) is None  # nothing queued: no wait, no bytes
    theirs.sendall(b"abcdefg")
    assert recv_queued(ours.fileno(), [first, second]) == 7
    assert bytes(first) == b"abc" and bytes(second[:4]) == b"defg"
    theirs.close()
    assert recv_queued(ours.fileno(), [first]) == 0  # the peer closed
    ours.close()

