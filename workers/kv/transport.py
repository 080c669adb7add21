"""Moving KV frames: senders (prefill side) and receivers (decode side).

Senders are called from the engine thread inside the forward pass (`save_kv_layer`), so `send()` only
enqueues: a background thread checksums the payload and puts it on the wire, while the engine computes
the next layer (and, with a `KVAuth`, signs it). Receivers run their own threads and hand every frame to
a `TransferAssembler` through an `auth.FrameGate`, which drops frames without a valid MAC.

- ZeroMQ (`zmq://host:port`): PUSH/PULL, multipart [header, payload part, ...], parts sent and received
  zero-copy. A part may be a view straight into the sender's KV cache: the frame's `on_done` runs only
  once ZeroMQ's I/O thread no longer needs the memory (a message tracker), so the engine frees those
  blocks after that, not before.
- gRPC (`grpc://host:port`): the same frames as `KVFrame` messages on one client-streaming `Push` call;
  for networks where only one port is open. Its server (`service.KVTransferService`) also answers the
  control calls (`AbortTransfer`, `GetTransferStats`), whichever data transport is in use.
- Loopback: an in-process twin for tests (`LoopbackSender` straight into an assembler).

A sender never blocks the engine and never raises into it: a frame that cannot be sent (peer gone,
queue full) is dropped and counted (its `on_done` runs too); the receiver's timeout turns that into a
recompute. A zero-copy part still queued in ZeroMQ `release_timeout_s` after it was sent is released
anyway: if its blocks are then reused, the receiver sees a checksum mismatch and recomputes, never
wrong KV. A ZeroMQ peer that is gone (its worker died) costs at most `send_wait_s` per frame: sockets
queue only on live connections (ZMQ_IMMEDIATE), so frames for a dead peer are refused rather than
queued for a reconnect that never comes (and holding the prefill engine's blocks until then).
"""

from __future__ import annotations

import abc
import logging
import queue
import threading
import time

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
import zmq

from orchestrator.api.pb import kv_pb2, kv_pb2_grpc
from workers.kv.assembler import TransferAssembler
from workers.kv.auth import FrameGate, KVAuth
from workers.kv.faults import HeldFrames
from workers.kv.wire import Header, make_header, payload_parts

log = logging.getLogger(__name__)

MAX_GRPC_MESSAGE_BYTES = 512 << 20


@dataclass(frozen=True)
class OutgoingFrame:
    """A frame before its checksum: header fields and its bytes (kept alive until sent)."""

    endpoint: str
    fields: dict[str, Any]
    buffer: Any  # a contiguous buffer (numpy array, ...), or a sequence of them: the payload's parts in order
    corrupt: bool = False  # fault injection: the bytes on the wire differ from the checksummed ones
    hold_until_s: float = 0.0  # fault injection (`stall`): the sender thread sends it no sooner (time.monotonic)
    on_done: Callable[[], None] | None = None  # runs once (sender thread) when the buffers are no longer used

    def parts(self) -> list[memoryview]:
        return payload_parts(self.buffer if isinstance(self.buffer, (list, tuple)) else memoryview(self.buffer))

    def header(self) -> Header:
        return make_header(payload=self.parts(), **self.fields)

    def wire(self, auth: KVAuth | None = None) -> tuple[Header, list[memoryview]]:
        """The header (checksum and, with `auth`, MACs of the true bytes) and the payload parts to send
        (sender thread)."""
        parts = self.parts()
        header = make_header(payload=parts, **self.fields)
        if auth is not None:
            auth.sign(header, parts)
        if self.corrupt and parts and len(parts[0]):
            damaged = bytearray(parts[0])
            damaged[len(damaged) // 2] ^= 0xFF
            parts = [memoryview(damaged), *parts[1:]]
        return header, parts

    def done(self) -> None:
        if self.on_done is not None:
            try:
                self.on_done()
            except Exception:  # noqa: BLE001 - a callback error must not stop the sender thread
                log.exception("KV frame completion callback failed")


@dataclass
class SenderCounters:
    bytes_sent: int = 0
    frames_sent: int = 0
    frames_dropped: int = 0


def split_endpoint(endpoint: str) -> tuple[str, str]:
    """'zmq://h:p' -> ('zmq', 'h:p'). Raises ValueError on an unknown scheme."""
    scheme, sep, address = endpoint.partition("://")
    if not sep or scheme not in ("zmq", "grpc"):
        raise ValueError(f"KV endpoint {endpoint!r} must look like zmq://HOST:PORT or grpc://HOST:PORT")
    return scheme, address


class BaseKVSender(abc.ABC):
    """Prefill side. `send` is called from the engine thread and must not block."""

    def __init__(self, max_queued_frames: int = 4096, auth: KVAuth | None = None) -> None:
        """`auth`: signs every frame on the sender thread (see `auth`); None: frames go unsigned."""
        self.counters = SenderCounters()
        self._auth = auth
        self._queue: queue.Queue[OutgoingFrame | None] = queue.Queue(maxsize=max_queued_frames)
        self._thread = threading.Thread(target=self._run, name=f"{type(self).__name__}", daemon=True)
        self._thread.start()

    def send(self, frame: OutgoingFrame) -> None:
        try:
            self._queue.put_nowait(frame)
        except queue.Full:
            self.counters.frames_dropped += 1
            frame.done()
            log.warning("KV send queue full: dropped a frame of transfer %s", frame.fields.get("transfer_id"))

    def flush(self, timeout_s: float = 30.0) -> bool:
        """Wait until every queued frame was handed to the wire; False on timeout."""
        done = threading.Event()
        self._queue.put(_Marker(done))  # type: ignore[arg-type]
        return done.wait(timeout_s)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=5)

    def _run(self) -> None:
        held = HeldFrames()
        while True:
            try:
                frame = self._queue.get(timeout=held.wait_s())
            except queue.Empty:
                frame = _NOTHING
            for due in held.due():
                self._deliver_or_drop(due)
            if frame is None:
                break
            if isinstance(frame, _Marker):
                self._release_all()
                frame.event.set()
            elif frame is _NOTHING or held.hold(frame):
                continue
            else:
                self._deliver_or_drop(frame)
        for frame in held.drain():  # closing: stalled frames are not sent
            frame.done()
        self._release_all()
        self._shutdown()

    def _deliver_or_drop(self, frame: OutgoingFrame) -> None:
        try:
            self._deliver(frame)
        except Exception as exc:  # noqa: BLE001 - the engine must never see a transport error
            self.counters.frames_dropped += 1
            frame.done()
            log.warning("KV frame of transfer %s to %s dropped: %s", frame.fields.get("transfer_id"),
                        frame.endpoint, exc)

    def _release_all(self) -> None:
        """Wait (bounded) for every frame handed to the wire, then release them."""

    @abc.abstractmethod
    def _deliver(self, frame: OutgoingFrame) -> None:
        """Put one frame on the wire (sender thread)."""

    def _shutdown(self) -> None:
        """Release sockets/channels (sender thread, at close)."""


@dataclass
class _Marker:
    event: threading.Event


_NOTHING = _Marker(threading.Event())  # the queue stayed empty until a held frame was due


class _DoneTracker:
    """A tracker that is already done (a marker in the release queue)."""

    def wait(self, timeout: float | None = None) -> None:
        return None


class PeerUnavailable(Exception):
    """No live connection to the receiver took a frame within the send wait."""


class ZmqSender(BaseKVSender):
    def __init__(self, max_queued_frames: int = 4096, sndhwm: int = 1024, release_timeout_s: float = 30.0,
                 send_wait_s: float = 2.0, auth: KVAuth | None = None) -> None:
        self._context = zmq.Context.instance()
        self._sockets: dict[str, zmq.Socket] = {}
        self._sndhwm = sndhwm
        self._release_timeout_s = release_timeout_s
        self._send_wait_ms = int(send_wait_s * 1000)
        # Sent frames, oldest first, whose buffers ZeroMQ may still read, with when they were sent; a thread
        # of their own waits on each message's tracker in turn and then runs the frame's `done()`.
        self._in_flight: queue.Queue[tuple[zmq.MessageTracker, OutgoingFrame, float] | None] = queue.Queue()
        self._releaser = threading.Thread(target=self._release_loop, name="ZmqSender-release", daemon=True)
        self._releaser.start()
        super().__init__(max_queued_frames, auth)

    def _socket(self, address: str) -> zmq.Socket:
        sock = self._sockets.get(address)
        if sock is None:
            sock = self._context.socket(zmq.PUSH)
            sock.setsockopt(zmq.SNDHWM, self._sndhwm)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.IMMEDIATE, 1)  # queue only on live connections: a dead peer refuses, not hoards
            sock.setsockopt(zmq.RECONNECT_IVL_MAX, 5000)
            sock.connect(f"tcp://{address}")
            self._sockets[address] = sock
        return sock

    def _deliver(self, frame: OutgoingFrame) -> None:
        _, address = split_endpoint(frame.endpoint)
        header, parts = frame.wire(self._auth)
        message = [header.SerializeToString(), *parts]
        sock = self._socket(address)
        # Counted before the send: once it returns the receiver may hold every byte and report the transfer
        # complete, and a reader of both counters must not see the sender behind.
        num_bytes = sum(part.nbytes for part in parts)
        self.counters.frames_sent += 1
        self.counters.bytes_sent += num_bytes
        try:
            tracker = self._send(sock, message, address, track=frame.on_done is not None)
        except BaseException:
            self.counters.frames_sent -= 1
            self.counters.bytes_sent -= num_bytes
            raise
        if tracker is not None:  # frames nobody waits for (no on_done) are not tracked
            self._in_flight.put((tracker, frame, time.monotonic()))

    def _send(self, sock: zmq.Socket, message: list[Any], address: str, *, track: bool) -> Any:
        """Send without blocking; with no room (no live connection yet, or the peer's queue full) wait up
        to the send wait for some, then give up with PeerUnavailable."""
        for attempt in range(2):
            try:
                return sock.send_multipart(message, flags=zmq.NOBLOCK, copy=False, track=track)
            except zmq.Again:
                if attempt or not sock.poll(self._send_wait_ms, zmq.POLLOUT):
                    break
        raise PeerUnavailable(f"no live connection to {address} took the frame within {self._send_wait_ms} ms")

    def _release_loop(self) -> None:
        while (item := self._in_flight.get()) is not None:
            tracker, frame, sent_s = item
            try:
                # From the send, not from now: one frame stuck for a dead peer must not delay the rest by
                # a full timeout each.
                tracker.wait(max(sent_s + self._release_timeout_s - time.monotonic(), 0.0))
            except zmq.NotDone:
                log.warning("KV frame of transfer %s not sent after %.0f s: releasing its buffers",
                            frame.fields.get("transfer_id"), self._release_timeout_s)
            frame.done()

    def _release_all(self) -> None:
        done = threading.Event()
        self._in_flight.put((_DoneTracker(), OutgoingFrame("", {}, b"", on_done=done.set), time.monotonic()))
        done.wait(self._release_timeout_s + 1)

    def _shutdown(self) -> None:
        self._in_flight.put(None)
        self._releaser.join(timeout=self._release_timeout_s + 1)
        for sock in self._sockets.values():
            sock.close(linger=0)


class GrpcSender(BaseKVSender):
    """One long-lived Push stream per endpoint; a broken stream is reopened on the next frame."""

    def __init__(self, max_queued_frames: int = 4096, auth: KVAuth | None = None) -> None:
        self._streams: dict[str, _GrpcStream] = {}
        super().__init__(max_queued_frames, auth)

    def _deliver(self, frame: OutgoingFrame) -> None:
        _, address = split_endpoint(frame.endpoint)
        stream = self._streams.get(address)
        if stream is None or stream.broken:
            stream = self._streams[address] = _GrpcStream(address)
        header, parts = frame.wire(self._auth)
        payload = b"".join(parts)  # one copy: the message owns its bytes, the frame's buffers are free now
        frame.done()
        stream.put(kv_pb2.KVFrame(header=header, payload=payload))
        self.counters.frames_sent += 1
        self.counters.bytes_sent += len(payload)

    def _shutdown(self) -> None:
        for stream in self._streams.values():
            stream.close()


class _GrpcStream:
    def __init__(self, address: str) -> None:
        self._channel = grpc.insecure_channel(address, options=grpc_options())
        self._queue: queue.Queue[kv_pb2.KVFrame | None] = queue.Queue(maxsize=256)
        self.broken = False
        self._thread = threading.Thread(target=self._run, name=f"kv-grpc-push-{address}", daemon=True)
        self._thread.start()

    def _frames(self):
        while (frame := self._queue.get()) is not None:
            yield frame

    def _run(self) -> None:
        try:
            kv_pb2_grpc.KVTransferStub(self._channel).Push(self._frames())
        except grpc.RpcError as exc:
            log.warning("KV gRPC stream broke (%s); it is reopened on the next frame", exc.code())
        finally:
            self.broken = True

    def put(self, frame: kv_pb2.KVFrame) -> None:
        if self.broken:
            raise ConnectionError("KV gRPC stream is broken")
        self._queue.put(frame, timeout=30)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=5)
        self._channel.close()


def grpc_options() -> list[tuple[str, int]]:
    return [("grpc.max_send_message_length", MAX_GRPC_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE_BYTES)]


class LoopbackSender(BaseKVSender):
    """In-process twin: frames go straight into an assembler (tests)."""

    def __init__(self, assembler: TransferAssembler | FrameGate, auth: KVAuth | None = None) -> None:
        self._assembler = assembler
        super().__init__(auth=auth)

    def _deliver(self, frame: OutgoingFrame) -> None:
        header, parts = frame.wire(self._auth)
        owned = [bytes(part) for part in parts]  # the assembler may keep them; the frame's buffers are reused
        self._assembler.on_frame(header, owned[0] if len(owned) == 1 else owned)
        frame.done()
        self.counters.frames_sent += 1
        self.counters.bytes_sent += sum(part.nbytes for part in parts)


class KVSenders:
    """One sender per transport, created on first use: a frame goes by its endpoint's scheme, so one
    engine can push to `zmq://` and `grpc://` receivers alike. Same `send`/`flush`/`close` as a sender."""

    def __init__(self, auth: KVAuth | None = None) -> None:
        self._senders: dict[str, BaseKVSender] = {}
        self._lock = threading.Lock()
        self._auth = auth

    def send(self, frame: OutgoingFrame) -> None:
        scheme, _ = split_endpoint(frame.endpoint)
        with self._lock:
            sender = self._senders.get(scheme)
            if sender is None:
                sender = self._senders[scheme] = make_sender(scheme, self._auth)
        sender.send(frame)

    @property
    def counters(self) -> SenderCounters:
        total = SenderCounters()
        for sender in list(self._senders.values()):
            total.bytes_sent += sender.counters.bytes_sent
            total.frames_sent += sender.counters.frames_sent
            total.frames_dropped += sender.counters.frames_dropped
        return total

    def flush(self, timeout_s: float = 30.0) -> bool:
        return all(sender.flush(timeout_s) for sender in list(self._senders.values()))

    def close(self) -> None:
        for sender in list(self._senders.values()):
            sender.close()


class PendingSends:
    """Worker side: which pushed requests still have zero-copy frames in flight (sender thread and
    engine thread both touch it). A request is reported sent once vLLM finished it and none is left."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._in_flight: dict[str, int] = {}  # request id -> frames not yet sent
        self._finished: set[str] = set()  # finished in the engine, frames still in flight

    def track(self, request_id: str) -> None:
        with self._lock:
            self._in_flight.setdefault(request_id, 0)

    def add(self, request_id: str) -> None:
        with self._lock:
            self._in_flight[request_id] = self._in_flight.get(request_id, 0) + 1

    def done(self, request_id: str) -> None:
        with self._lock:
            self._in_flight[request_id] = self._in_flight.get(request_id, 1) - 1

    def finished(self, finished_req_ids: set[str]) -> set[str]:
        """Pushed requests finished in the engine (now or before) whose frames are all sent."""
        with self._lock:
            self._finished.update(r for r in finished_req_ids if r in self._in_flight)
            sent = {r for r in self._finished if self._in_flight.get(r, 0) <= 0}
            for request_id in sent:
                self._finished.discard(request_id)
                self._in_flight.pop(request_id, None)
        return sent


def make_sender(transport: str, auth: KVAuth | None = None) -> BaseKVSender:
    if transport == "zmq":
        return ZmqSender(auth=auth)
    if transport == "grpc":
        return GrpcSender(auth=auth)
    raise ValueError(f"unknown KV transport {transport!r} (use zmq or grpc)")


class ZmqReceiver:
    """PULL socket bound on host:port; a thread feeds the assembler, through a `FrameGate` that drops
    frames without a valid MAC (`auth`; None: no checks)."""

    def __init__(self, assembler: TransferAssembler, host: str, port: int, rcvhwm: int = 4096,
                 auth: KVAuth | None = None) -> None:
        self._gate = FrameGate(assembler, auth)
        self._context = zmq.Context.instance()
        self._socket = self._context.socket(zmq.PULL)
        self._socket.setsockopt(zmq.RCVHWM, rcvhwm)
        self._socket.setsockopt(zmq.LINGER, 0)
        if port:
            self._socket.bind(f"tcp://{host}:{port}")
        else:
            port = self._socket.bind_to_random_port(f"tcp://{host}")
        self.endpoint = f"zmq://{host}:{port}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kv-zmq-receiver", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        self._socket.setsockopt(zmq.RCVTIMEO, 100)  # wake up to notice close(), without a poll per message
        while not self._stop.is_set():
            try:
                parts = self._socket.recv_multipart(copy=False)
            except zmq.Again:
                continue
            if len(parts) < 2:
                log.warning("KV receiver: dropped a message of %d parts (expected a header and a payload)", len(parts))
                continue
            try:
                header = Header.FromString(parts[0].bytes)
                payload = parts[1].buffer if len(parts) == 2 else [part.buffer for part in parts[1:]]
                self._gate.on_frame(header, payload, peer=_peer_address(parts[0]))
            except Exception as exc:  # noqa: BLE001 - one bad frame must not kill the receiver
                log.warning("KV receiver: frame rejected: %s", exc)
        self._socket.close(linger=0)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def _peer_address(part: zmq.Frame) -> str:
    """The sender's address of a received message (libzmq's Peer-Address), for the log."""
    try:
        return part.get("Peer-Address")
    except zmq.ZMQError:
        return ""
