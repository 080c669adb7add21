"""A ZeroMQ PULL endpoint that reads each KV payload off the socket straight into its destination.

libzmq hands a receiver every message in a buffer of its own, so a frame bound for the KV cache is
copied twice on the decode side: by the kernel into that buffer, and from it into the cache. Here the
receiving side speaks ZMTP 3.1 (https://rfc.zeromq.org/spec/37/, NULL security) itself: it reads a
message's first frame, the header, asks the assembler where the payload goes (`reserve`), and has the
kernel copy the payload into those views, the engine's own blocks when they are allocated. The senders
are unchanged libzmq PUSH sockets (`transport.ZmqSender`) and see an ordinary PULL peer; the wire
carries ordinary ZeroMQ frames.

Life of a connection (a thread each; one more accepts them):
1. accept; send our greeting (signature, version 3.1, mechanism NULL) and read the peer's;
2. NULL handshake: send READY with Socket-Type PULL, read the peer's READY and check it is a PUSH;
3. per message: read the header frame (at most MAX_HEADER_BYTES), `reserve` its payload (through the
   `auth.FrameGate`: a header without a valid MAC is refused here), read the payload's frames (one or
   several parts, as the sender split them) into the placement's views, `commit`. A PING command is answered with a PONG; other commands are skipped.
A frame whose header is bad or whose parts do not add up to the size the header promises is read into
scratch and dropped (the stream stays in step; the transfer times out and is recomputed). A protocol
error, or a peer silent for `stall_timeout_s` in the middle of a message, closes the connection (a
placement then cut off fails its transfer); the sender's libzmq reconnects by itself.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import socket
import struct
import sys
import threading
from dataclasses import dataclass

from workers.kv.assembler import Placement, TransferAssembler
from workers.kv.auth import AuthError, FrameGate, KVAuth, peer_host
from workers.kv.wire import Header

log = logging.getLogger(__name__)

MAX_HEADER_BYTES = 1 << 20  # a header lists the prompt's block ids: kilobytes, even for long prompts
MAX_COMMAND_BYTES = 1 << 16
MAX_PART_BYTES = 1 << 34  # one layer's KV of one prompt is far smaller; a larger size is a broken stream
READ_BUFFER_BYTES = 1 << 16  # control bytes are read ahead into this; payloads bypass it
SCRATCH_BYTES = 1 << 20
POLL_S = 0.5  # how often a blocked read looks for close()

FLAG_MORE, FLAG_LONG, FLAG_COMMAND = 0x01, 0x02, 0x04


class _Iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


class _Msghdr(ctypes.Structure):
    _fields_ = [("name", ctypes.c_void_p), ("namelen", ctypes.c_uint32), ("iov", ctypes.POINTER(_Iovec)),
                ("iovlen", ctypes.c_size_t), ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
                ("flags", ctypes.c_int)]


def _load_held_recvmsg():
    """libc's recvmsg called with the GIL held (ctypes.PyDLL), or None where libc cannot be loaded so or
    `struct msghdr` is laid out otherwise (the fields above are Linux's; elsewhere Python's calls serve)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.PyDLL(None, use_errno=True).recvmsg
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.POINTER(_Msghdr), ctypes.c_int]
    function.restype = ctypes.c_ssize_t
    return function


_HELD_RECVMSG = _load_held_recvmsg()


def recv_queued(fd: int, buffers: list[memoryview]) -> int | None:
    """Read what the kernel already holds for `fd` into `buffers` (in order) without releasing the GIL:
    the byte count, 0 when the peer closed, None when nothing is queued (or this platform cannot).

    Python's socket calls release the GIL around every syscall, and in a process whose Python keeps it
    busy (an engine's worker polling its queue) taking it back waits a switch interval, 5 ms: one such
    wait per read capped the receiver at a fifth of libzmq's rate, whose I/O thread never needs the GIL.
    A non-blocking read of bytes already queued is a kernel copy of microseconds, so it is made holding
    the GIL; only a read that must wait for the network releases it."""
    if _HELD_RECVMSG is None:
        return None
    vectors = (_Iovec * len(buffers))()
    anchors = []  # keep each buffer exported while the kernel writes into it
    for vector, buffer in zip(vectors, buffers):
        if buffer.nbytes:
            anchor = (ctypes.c_char * buffer.nbytes).from_buffer(buffer)
            anchors.append(anchor)
            vector.base, vector.len = ctypes.addressof(anchor), buffer.nbytes
    header = _Msghdr(iov=vectors, iovlen=len(buffers))
    count = _HELD_RECVMSG(fd, ctypes.byref(header), socket.MSG_DONTWAIT)
    if count >= 0:
        return count
    error = ctypes.get_errno()
    if error in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR):
        return None
    raise OSError(error, f"recvmsg: {errno.errorcode.get(error, error)}")


class ProtocolError(Exception):
    """The peer broke ZMTP, closed the connection, or stalled mid-message: the connection ends."""


@dataclass(frozen=True)
class FrameHead:
    more: bool
    command: bool
    size: int


def greeting() -> bytes:
    """Our 64-byte ZMTP 3.1 greeting: signature, version, mechanism NULL, as-server, filler."""
    return b"\xff" + bytes(8) + b"\x7f" + bytes([3, 1]) + b"NULL".ljust(20, b"\x00") + b"\x01" + bytes(31)


def command(name: bytes, body: bytes) -> bytes:
    """A command frame (flags, size, length-prefixed name, body)."""
    data = bytes([len(name)]) + name + body
    if len(data) > 255:
        return bytes([FLAG_COMMAND | FLAG_LONG]) + struct.pack(">Q", len(data)) + data
    return bytes([FLAG_COMMAND, len(data)]) + data


def ready(socket_type: bytes) -> bytes:
    """READY with one property, Socket-Type."""
    return command(b"READY", bytes([11]) + b"Socket-Type" + struct.pack(">I", len(socket_type)) + socket_type)


def parse_properties(data: bytes) -> dict[str, bytes]:
    """ZMTP metadata: (1-byte name length, name, 4-byte value length, value) repeated."""
    properties, at = {}, 0
    while at < len(data):
        name_size = data[at]
        name = data[at + 1:at + 1 + name_size]
        at += 1 + name_size
        if at + 4 > len(data):
            raise ProtocolError("truncated metadata in the peer's READY")
        (value_size,) = struct.unpack_from(">I", data, at)
        value = data[at + 4:at + 4 + value_size]
        if len(value) != value_size:
            raise ProtocolError("truncated metadata in the peer's READY")
        properties[name.decode("ascii", "replace").lower()] = value
        at += 4 + value_size
    return properties


class _Reader:
    """Buffered reads from one connection: small control reads are batched, payloads go straight into
    their targets (only what the batch already holds is copied)."""

    def __init__(self, sock: socket.socket, stop: threading.Event, stall_timeout_s: float) -> None:
        self._sock = sock
        self._stop = stop
        self._stall_timeout_s = stall_timeout_s
        self._buffer = bytearray(READ_BUFFER_BYTES)
        self._view = memoryview(self._buffer)
        self._start = self._end = 0

    def exact(self, size: int, idle: bool = False) -> bytes:
        """`size` bytes (size <= READ_BUFFER_BYTES). `idle`: the peer may take its time (between messages)."""
        while self._end - self._start < size:
            if len(self._buffer) - self._start < size:  # move what is left to the front
                self._buffer[:self._end - self._start] = self._buffer[self._start:self._end]
                self._end -= self._start
                self._start = 0
            self._end += self._recv([self._view[self._end:]], idle)
        data = bytes(self._view[self._start:self._start + size])
        self._start += size
        return data

    def into(self, target: memoryview) -> None:
        """Fill `target` (any size): buffered bytes first, then straight from the socket.

        A read that has to wait costs this thread the GIL, and in an engine process whose Python holds
        it most of the time, taking it back can wait a switch interval (5 ms); bytes already queued are
        read holding it (`recv_queued`). So the first read also reads ahead into the (then empty) buffer,
        usually picking up the next message's header frames with the end of this payload, and a payload
        the socket does not hold yet is waited for whole (MSG_WAITALL): at most one wait per message."""
        have = min(self._end - self._start, target.nbytes)
        target[:have] = self._view[self._start:self._start + have]
        self._start += have
        filled = have
        if filled < target.nbytes:
            self._start = self._end = 0  # everything buffered was taken
            count = self._recv([target[filled:], self._view], idle=False)
            taken = min(count, target.nbytes - filled)
            filled += taken
            self._end = count - taken
        while filled < target.nbytes:
            filled += self._recv([target[filled:]], idle=False, flags=socket.MSG_WAITALL)

    def _recv(self, buffers: list[memoryview], idle: bool, flags: int = 0) -> int:
        """One recv into `buffers`, in order (a scatter read): what the kernel holds, without letting go
        of the GIL (`recv_queued`); when it holds nothing, a blocking read (`flags`) that does. The
        socket's SO_RCVTIMEO (POLL_S) bounds every blocking call: a timed-out call returns what it has,
        or raises BlockingIOError when it has nothing, and is retried until the stall timeout (`idle`:
        forever) or close()."""
        try:
            queued = recv_queued(self._sock.fileno(), buffers)
        except OSError as exc:
            raise ProtocolError(f"connection lost: {exc}") from None
        if queued == 0:
            raise ProtocolError("peer closed the connection")
        if queued is not None:
            return queued
        waited = 0.0
        while True:
            try:
                count = (self._sock.recv_into(buffers[0], 0, flags) if len(buffers) == 1
                         else self._sock.recvmsg_into(buffers, 0, flags)[0])
            except BlockingIOError:
                if self._stop.is_set():
                    raise ProtocolError("receiver closed") from None
                waited += POLL_S
                if not idle and waited >= self._stall_timeout_s:
                    raise ProtocolError(f"peer silent for {waited:.0f} s in the middle of a message") from None
                continue
            except OSError as exc:
                raise ProtocolError(f"connection lost: {exc}") from None
            if count == 0:
                raise ProtocolError("peer closed the connection")
            return count

    def frame_head(self, idle: bool = False) -> FrameHead:
        flags = self.exact(1, idle)[0]
        if flags & ~(FLAG_MORE | FLAG_LONG | FLAG_COMMAND):
            raise ProtocolError(f"bad frame flags {flags:#x}")
        size = struct.unpack(">Q", self.exact(8))[0] if flags & FLAG_LONG else self.exact(1)[0]
        return FrameHead(bool(flags & FLAG_MORE), bool(flags & FLAG_COMMAND), size)


class ZmtpReceiver:
    """PULL endpoint bound on host:port (0: any free port) feeding `assembler`. Same surface as
    `transport.ZmqReceiver`: `endpoint` (`zmq://host:port`) and `close()`."""

    def __init__(self, assembler: TransferAssembler, host: str, port: int, stall_timeout_s: float = 10.0,
                 auth: KVAuth | None = None) -> None:
        """`auth`: frames whose header MAC is wrong are refused before their payload is placed (`FrameGate`)."""
        self._assembler = FrameGate(assembler, auth)
        self._stall_timeout_s = stall_timeout_s
        self._stop = threading.Event()
        self._listener = socket.create_server((host, port), reuse_port=False)
        self._listener.settimeout(POLL_S)
        self.endpoint = f"zmq://{host}:{self._listener.getsockname()[1]}"
        self._lock = threading.Lock()
        self._connections: dict[socket.socket, threading.Thread] = {}
        self.frames_rejected = 0
        self._acceptor = threading.Thread(target=self._accept_loop, name="kv-zmtp-accept", daemon=True)
        self._acceptor.start()

    def close(self) -> None:
        """Stop accepting, end every connection, wait for their threads (a few POLL_S at most)."""
        self._stop.set()
        try:
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept() at once
        except OSError:
            pass
        self._acceptor.join(timeout=5)
        with self._lock:
            connections = dict(self._connections)
        for sock in connections:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for thread in connections.values():
            thread.join(timeout=5)
        self._listener.close()

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                sock, peer = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            sock.settimeout(None)  # blocking; the kernel's receive timeout wakes a read every POLL_S
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", int(POLL_S), int(POLL_S % 1 * 1e6)))
            thread = threading.Thread(target=self._serve, args=(sock, peer), name=f"kv-zmtp-{peer[1]}", daemon=True)
            with self._lock:
                self._connections[sock] = thread
            thread.start()

    def _serve(self, sock: socket.socket, peer: tuple) -> None:
        reader = _Reader(sock, self._stop, self._stall_timeout_s)
        try:
            self._handshake(sock, reader)
            while True:
                self._receive_message(sock, reader, peer_host(peer))
        except ProtocolError as exc:
            if not self._stop.is_set():
                log.info("KV receiver: connection from %s:%s ended: %s", peer[0], peer[1], exc)
        finally:
            with self._lock:
                self._connections.pop(sock, None)
            sock.close()

    def _handshake(self, sock: socket.socket, reader: _Reader) -> None:
        sock.sendall(greeting())
        theirs = reader.exact(64)  # within the stall timeout: a peer that connects and says nothing is dropped
        if theirs[0] != 0xFF or not theirs[9] & 0x01 or theirs[10] < 3:
            raise ProtocolError("the peer does not speak ZMTP 3 (is it a ZeroMQ PUSH socket?)")
        if theirs[12:32].rstrip(b"\x00") != b"NULL":
            raise ProtocolError(f"the peer asks for security mechanism {theirs[12:32].rstrip(bytes(1))!r}; "
                                "the KV receiver speaks NULL only")
        sock.sendall(ready(b"PULL"))
        head = reader.frame_head()
        name, body = self._command(reader, head)
        if name != b"READY":
            raise ProtocolError(f"expected READY from the peer, got {name!r}")
        socket_type = parse_properties(body).get("socket-type", b"")
        if socket_type != b"PUSH":
            raise ProtocolError(f"the peer is a {socket_type.decode(errors='replace') or 'socket of no type'}, "
                                "a KV receiver takes PUSH")

    def _command(self, reader: _Reader, head: FrameHead) -> tuple[bytes, bytes]:
        if not head.command or head.size > MAX_COMMAND_BYTES or head.size < 1:
            raise ProtocolError(f"expected a command frame, got flags command={head.command} size={head.size}")
        data = reader.exact(head.size)
        name_size = data[0]
        return data[1:1 + name_size], data[1 + name_size:]

    def _receive_message(self, sock: socket.socket, reader: _Reader, peer: str) -> None:
        """One message: the header frame, then its payload's parts."""
        head = reader.frame_head(idle=True)
        if head.command:
            self._on_command(sock, reader, head)
            return
        if head.size > MAX_HEADER_BYTES:
            raise ProtocolError(f"a {head.size}-byte first frame is not a KV header")
        raw = reader.exact(head.size) if head.size <= READ_BUFFER_BYTES else self._read_large(reader, head.size)
        if not head.more:
            self._reject(f"a message of one frame ({head.size} bytes): expected a header and a payload")
            return
        placement = self._place(raw, peer)
        self._read_payload(reader, placement, peer)

    def _on_command(self, sock: socket.socket, reader: _Reader, head: FrameHead) -> None:
        name, body = self._command(reader, head)
        if name == b"PING" and len(body) >= 2:
            sock.sendall(command(b"PONG", body[2:]))

    def _read_large(self, reader: _Reader, size: int) -> bytes:
        data = bytearray(size)
        reader.into(memoryview(data))
        return bytes(data)

    def _place(self, raw: bytes, peer: str) -> Placement | None:
        """Where the payload goes; None: the header is bad, the payload is read and dropped."""
        try:
            return self._assembler.reserve(Header.FromString(raw), peer=peer)
        except AuthError:  # counted and logged (rate-limited) by the gate
            self.frames_rejected += 1
            return None
        except Exception as exc:  # noqa: BLE001 - a bad header costs its frame, not the connection
            self._reject(str(exc))
            return None

    def _read_payload(self, reader: _Reader, placement: Placement | None, peer: str) -> None:
        """Read the payload's parts into the placement's targets (or scratch), then commit or drop."""
        cursor = _Cursor(placement.targets if placement is not None else [])
        more = True
        try:
            while more:
                head = reader.frame_head()
                if head.command or head.size > MAX_PART_BYTES:
                    raise ProtocolError(f"a {'command' if head.command else f'{head.size}-byte'} frame inside a message")
                cursor.fill(reader, head.size)
                more = head.more
        except ProtocolError as exc:
            if placement is not None:
                self._assembler.release(placement, str(exc))
            raise
        if placement is None:
            return
        if cursor.overflow or cursor.filled != placement.nbytes:
            self._assembler.release(placement, "payload size differs from its header's")
            self._reject(f"payload of {cursor.filled + cursor.overflow} bytes, its header says {placement.nbytes}")
            return
        self._assembler.commit(placement, peer=peer)

    def _reject(self, reason: str) -> None:
        self.frames_rejected += 1
        log.warning("KV receiver: frame rejected: %s", reason)


class _Cursor:
    """Fills a sequence of target views in order; bytes past their end go to scratch (counted)."""

    def __init__(self, targets: list[memoryview]) -> None:
        self._targets = targets
        self._index = 0
        self._offset = 0
        self.filled = 0
        self.overflow = 0
        self._scratch: memoryview | None = None

    def fill(self, reader: _Reader, size: int) -> None:
        while size:
            if self._index < len(self._targets):
                target = self._targets[self._index]
                take = min(size, target.nbytes - self._offset)
                reader.into(target[self._offset:self._offset + take])
                self._offset += take
                self.filled += take
                if self._offset == target.nbytes:
                    self._index, self._offset = self._index + 1, 0
            else:
                if self._scratch is None:
                    self._scratch = memoryview(bytearray(SCRATCH_BYTES))
                take = min(size, SCRATCH_BYTES)
                reader.into(self._scratch[:take])
                self.overflow += take
            size -= take
