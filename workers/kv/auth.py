"""Authentication of the KV plane: who may write into a decode worker's KV cache, or abort its transfers.

The KV receivers listen on ports any process on the network can reach. Every frame therefore carries a
MAC (HMAC-SHA256, `hmac`/`hashlib` only) under a key derived per transfer from the cluster's KV secret:
the gateway makes 32 random bytes at startup (or reads `kv.auth_key_file`) and hands them to the
workers over Ray, never in the config, the logs or the status document. Modes (`kv.auth`):
- `auto` (default): `hmac` when the worker's KV endpoints are on a network address, `header` on loopback
  (the embedded one-machine cluster: there only root is on the path, and root reads the KV in memory anyway;
  `hmac` would cost the loopback KV rate most of its speed); resolved per worker by `resolve_mode`;
- `hmac`: `mac` over the header and `payload_mac` over the payload (bound by `mac`);
- `header`: `mac` over the header only, which binds the payload through its xxh3 checksum: stops
  off-path senders, not an on-path attacker able to craft xxh3 collisions;
- `none`: a trusted network; nothing is signed or checked.
The per-transfer key (HMAC(secret, transfer id)) binds every MAC to its transfer, so a frame replayed
into another transfer fails. Confidentiality is not covered: KV crosses the wire in clear.

Life of a frame:
1. Sender thread (`BaseKVSender`, where the checksum is computed): `KVAuth.sign(header, parts)`.
2. Receiver thread: a `FrameGate` stands between the receiver and the `TransferAssembler`. A header
   whose MAC is wrong or missing is refused before its payload goes anywhere (`reserve` raises
   `AuthError`; `on_frame` drops it); in `hmac` mode the payload's MAC is checked before the bytes
   reach the stash or, for the direct receiver that reads a payload into its blocks, before the frame
   counts (a bad one then fails its transfer: recompute, as for a checksum mismatch). Each refusal is
   counted (`KVAuth.failures`, reported as `auth_failures` in the transfer stats) and logged at most
   once per peer per LOG_INTERVAL_S.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from workers.kv.assembler import Placement, TransferAssembler
from workers.kv.wire import Header, Payload, checksum, payload_parts

log = logging.getLogger(__name__)

MODES = ("hmac", "header", "none")  # what a worker runs; `kv.auth: auto` resolves to one (resolve_mode)
SECRET_BYTES = 32
MIN_KEY_FILE_BYTES = 16
LOG_INTERVAL_S = 60.0
MAX_PEERS_REMEMBERED = 1024
_DOMAIN = b"pdserve-kv-transfer\x00"
_HEADER, _PAYLOAD, _ABORT = b"H", b"P", b"A"


class AuthError(ValueError):
    """A frame or an abort without a valid MAC (never the caller's fault to retry: it is dropped)."""


def make_secret(key_file: Path | str | None = None) -> bytes:
    """The cluster's KV secret: the bytes of `key_file` (at least MIN_KEY_FILE_BYTES), or fresh random
    ones. Raises ValueError for an unreadable or short file."""
    if key_file is None:
        return secrets.token_bytes(SECRET_BYTES)
    try:
        secret = Path(key_file).read_bytes()
    except OSError as exc:
        raise ValueError(f"kv.auth_key_file {str(key_file)!r} cannot be read: {exc.strerror}") from None
    if len(secret) < MIN_KEY_FILE_BYTES:
        raise ValueError(f"kv.auth_key_file {str(key_file)!r} holds {len(secret)} bytes; a KV key needs at least "
                         f"{MIN_KEY_FILE_BYTES} (make one with: head -c 32 /dev/urandom > FILE)")
    return secret


def resolve_mode(configured: str, kv_host: str) -> str:
    """`kv.auth` made concrete for a worker whose KV receivers are on `kv_host`: `auto` is `header` on a
    loopback address (or `localhost`) and `hmac` on any other; the other modes stay as they are. Every
    worker of a cluster resolves alike: a loopback endpoint is reachable only from its own machine."""
    if configured != "auto":
        return configured
    try:
        loopback = ipaddress.ip_address(kv_host).is_loopback
    except ValueError:
        loopback = kv_host == "localhost"
    return "header" if loopback else "hmac"


class KVAuth:
    """One engine's signer and verifier (shared by its senders, receivers and gRPC service; thread-safe)."""

    def __init__(self, mode: str = "none", secret: bytes | None = None) -> None:
        """Raises ValueError for an unknown mode, or for `hmac`/`header` without a secret."""
        if mode not in MODES:
            raise ValueError(f"unknown kv.auth {mode!r} (use one of {', '.join(MODES)})")
        if mode != "none" and not secret:
            raise ValueError(f"kv.auth={mode} needs the cluster's KV secret (the gateway hands it to the workers)")
        self.mode = mode
        self._secret = secret or b""
        self._lock = threading.Lock()
        self._logged: OrderedDict[str, tuple[float, int]] = OrderedDict()  # peer -> (last warning, refused since)
        self.failures = 0

    def __repr__(self) -> str:  # never the secret
        return f"KVAuth(mode={self.mode!r})"

    @property
    def enabled(self) -> bool:
        return self.mode != "none"

    def _key(self, transfer_id: str) -> bytes:
        return hmac.digest(self._secret, _DOMAIN + transfer_id.encode(), "sha256")

    # ---- sender thread ---------------------------------------------------------------------------
    def sign(self, header: Header, parts: Sequence[memoryview]) -> None:
        """Set `header.payload_mac` (hmac mode) and `header.mac` over the true bytes."""
        if not self.enabled:
            return
        key = self._key(header.transfer_id)
        if self.mode == "hmac":
            header.payload_mac = _payload_mac(key, parts)
        header.mac = _header_mac(key, header)

    def sign_abort(self, transfer_id: str, reason: str) -> bytes:
        """The `mac` of an AbortTransferRequest (empty with `none`)."""
        if not self.enabled:
            return b""
        return hmac.digest(self._key(transfer_id), _ABORT + reason.encode(), "sha256")

    # ---- receiver threads ------------------------------------------------------------------------
    def header_ok(self, header: Header) -> bool:
        """Whether the header's MAC is right (and, in hmac mode, it carries a payload MAC)."""
        if not self.enabled:
            return True
        if not header.mac or (self.mode == "hmac" and not header.payload_mac):
            return False
        return hmac.compare_digest(header.mac, _header_mac(self._key(header.transfer_id), header))

    def payload_ok(self, header: Header, payload: Payload | Sequence[memoryview]) -> bool:
        """Whether the payload's bytes are those the sender signed (always true outside hmac mode)."""
        if self.mode != "hmac":
            return True
        return hmac.compare_digest(header.payload_mac, _payload_mac(self._key(header.transfer_id), payload_parts(payload)))

    def abort_ok(self, transfer_id: str, reason: str, mac: bytes) -> bool:
        return not self.enabled or (bool(mac) and hmac.compare_digest(mac, self.sign_abort(transfer_id, reason)))

    def refuse(self, peer: str, what: str) -> None:
        """Count one refused frame or abort; warn about `peer` at most once per LOG_INTERVAL_S."""
        now = time.monotonic()
        with self._lock:
            self.failures += 1
            last, since = self._logged.get(peer, (-LOG_INTERVAL_S, 0))
            if now - last < LOG_INTERVAL_S:
                self._logged[peer] = (last, since + 1)
                return
            self._logged[peer] = (now, 0)
            self._logged.move_to_end(peer)
            while len(self._logged) > MAX_PEERS_REMEMBERED:
                self._logged.popitem(last=False)
        more = f" ({since} more refused since the last warning)" if since else ""
        log.warning("KV plane: refused %s from %s: missing or wrong MAC (kv.auth=%s)%s", what, peer or "an unknown peer",
                    self.mode, more)


def _header_mac(key: bytes, header: Header) -> bytes:
    """HMAC of the header's canonical bytes with `mac` empty (the header is left as it was)."""
    mac = header.mac
    header.ClearField("mac")
    try:
        data = header.SerializeToString(deterministic=True)
    finally:
        if mac:
            header.mac = mac
    return hmac.digest(key, _HEADER + data, "sha256")


def _payload_mac(key: bytes, parts: Sequence[memoryview]) -> bytes:
    digest = hmac.new(key, _PAYLOAD, hashlib.sha256)
    for part in parts:
        digest.update(part)
    return digest.digest()


class FrameGate:
    """What a receiver feeds instead of the assembler (same `on_frame`/`reserve`/`commit`/`release`,
    each with the sending `peer` for the log): only authenticated frames get through. `auth=None` or
    mode `none` passes every frame."""

    def __init__(self, assembler: TransferAssembler, auth: KVAuth | None) -> None:
        self.assembler = assembler
        self.auth = auth if auth is not None else KVAuth()

    def on_frame(self, header: Header, payload: Payload, peer: str = "") -> None:
        """A frame held in memory: checked whole before the assembler (and its stash) sees it."""
        if not self.auth.header_ok(header):
            self.auth.refuse(peer, f"a KV frame of transfer {header.transfer_id!r}")
        elif not self.auth.payload_ok(header, payload):
            self._payload_refused(header, payload, peer)
        else:
            self.assembler.on_frame(header, payload)

    def reserve(self, header: Header, peer: str = "") -> Placement:
        """Where the payload goes, for an authenticated header only; raises AuthError (counted) otherwise."""
        if not self.auth.header_ok(header):
            self.auth.refuse(peer, f"a KV frame of transfer {header.transfer_id!r}")
            raise AuthError(f"KV frame of transfer {header.transfer_id!r}: missing or wrong MAC")
        return self.assembler.reserve(header)

    def commit(self, placement: Placement, peer: str = "") -> None:
        """The payload is in the placement's targets: checked (hmac mode) before the frame counts."""
        if self.auth.payload_ok(placement.header, placement.targets):
            self.assembler.commit(placement)
        elif checksum(placement.targets) != placement.header.checksum:
            self.assembler.commit(placement)  # damaged in transit: the assembler's checksum failure handles it
        else:
            self.auth.refuse(peer, f"a KV payload of transfer {placement.header.transfer_id!r}")
            self.assembler.release(placement, "payload MAC mismatch")

    def release(self, placement: Placement, reason: str) -> None:
        self.assembler.release(placement, reason)

    def abort(self, transfer_id: str, reason: str, mac: bytes, peer: str = "") -> bool:
        """An AbortTransfer: applied when its MAC is right; raises AuthError (counted) otherwise."""
        if not self.auth.abort_ok(transfer_id, reason, mac):
            self.auth.refuse(peer, f"an abort of transfer {transfer_id!r}")
            raise AuthError(f"abort of transfer {transfer_id!r}: missing or wrong MAC")
        return self.assembler.abort(transfer_id, reason or "sender gave up")

    def _payload_refused(self, header: Header, payload: Payload, peer: str) -> None:
        """A signed header with other bytes. Bytes damaged in transit (their checksum differs too) go on
        to fail as a checksum mismatch; bytes that match the checksum but not the MAC were forged by
        someone who saw the header: refused, and the transfer fails now rather than at its timeout."""
        if checksum(payload) != header.checksum:
            self.assembler.on_frame(header, payload)
            return
        self.auth.refuse(peer, f"a KV payload of transfer {header.transfer_id!r}")
        self.assembler.abort(header.transfer_id, "payload MAC mismatch")


def peer_host(peer: Any) -> str:
    """The host part of a peer for the log: ('10.0.0.2', 5555), 'ipv4:10.0.0.2:5555' or '10.0.0.2'."""
    if isinstance(peer, tuple):
        return str(peer[0])
    text = str(peer or "")
    for prefix in ("ipv4:", "ipv6:"):
        text = text.removeprefix(prefix)
    host, sep, port = text.rpartition(":")
    return host.strip("[]") if sep and port.isdigit() else text
