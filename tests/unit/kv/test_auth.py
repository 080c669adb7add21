"""KV plane authentication over real sockets (the direct ZMTP receiver, libzmq's PULL, gRPC Push and
AbortTransfer on 127.0.0.1): signed frames are taken; forged, unsigned, tampered and replayed ones are
refused and counted, and a legitimate transfer beside them completes intact."""

from __future__ import annotations

import secrets
import time

import grpc
import pytest
import torch
import zmq

from orchestrator.api.pb import kv_pb2, kv_pb2_grpc
from workers.kv.assembler import TransferAssembler
from workers.kv.auth import KVAuth, make_secret, peer_host, resolve_mode
from workers.kv.blocks import locate_blocks, write_blocks
from workers.kv.service import KVTransferService, serve_kv_service
from workers.kv.transport import KVSenders, ZmqReceiver
from workers.kv.wire import checksum
from workers.kv.zmtp import ZmtpReceiver

from kvframes import LAYERS, cache, frames, wait_finished

SECRET = secrets.token_bytes(32)


class Endpoint:
    """A decode side: an assembler over a fresh cache behind one real receiver, with `auth`."""

    def __init__(self, receiver: str, auth: KVAuth) -> None:
        self.destination = cache(fill=False)
        self.assembler = TransferAssembler(
            lambda layer, ids, header, payload, first: write_blocks(self.destination[layer], ids, header, payload, first),
            timeout_s=5.0, verify_after_write=True,
            locate=lambda layer, ids, header, first: locate_blocks(self.destination[layer], ids, header, first))
        self.auth = auth
        self.server, self.control = serve_kv_service(KVTransferService(self.assembler, auth=auth), "127.0.0.1", 0)
        self.receiver = None
        if receiver == "direct":
            self.receiver = ZmtpReceiver(self.assembler, "127.0.0.1", 0, stall_timeout_s=2.0, auth=auth)
        elif receiver == "libzmq":
            self.receiver = ZmqReceiver(self.assembler, "127.0.0.1", 0, auth=auth)
        self.endpoint = self.receiver.endpoint if self.receiver is not None else self.control
        self.channel = grpc.insecure_channel(self.control.removeprefix("grpc://"))
        self.stub = kv_pb2_grpc.KVTransferStub(self.channel)

    def send_raw(self, messages: list[tuple[kv_pb2.KVFrameHeader, bytes]]) -> None:
        """Frames as a rogue process would send them: hand-built, on a socket of its own."""
        if self.endpoint.startswith("grpc://"):
            self.stub.Push(iter([kv_pb2.KVFrame(header=h, payload=p) for h, p in messages]), timeout=10)
            return
        push = zmq.Context.instance().socket(zmq.PUSH)
        push.connect(f"tcp://{self.endpoint.removeprefix('zmq://')}")
        try:
            for header, payload in messages:
                push.send_multipart([header.SerializeToString(), payload])
        finally:
            push.close(linger=2000)

    def auth_failures(self) -> int:
        return self.stub.GetTransferStats(kv_pb2.GetTransferStatsRequest(), timeout=5).auth_failures

    def close(self) -> None:
        self.channel.close()
        if self.receiver is not None:
            self.receiver.close()
        self.server.stop(grace=0)


@pytest.fixture
def endpoints():
    made = []

    def make(receiver: str, mode: str = "hmac") -> Endpoint:
        made.append(Endpoint(receiver, KVAuth(mode, SECRET)))
        return made[-1]

    yield make
    for endpoint in made:
        endpoint.close()


def signed(source, transfer_id: str, block_ids: list[int], tokens: int, auth: KVAuth | None):
    """(header, payload bytes) of each layer's frame, as a sender with `auth` puts them on the wire."""
    result = []
    for frame in frames(source, transfer_id, block_ids, tokens):
        header, parts = frame.wire(auth)
        result.append((header, b"".join(bytes(p) for p in parts)))
    return result


def wait_failures(endpoint: Endpoint, count: int) -> int:
    deadline = time.monotonic() + 10
    while endpoint.auth.failures < count and time.monotonic() < deadline:
        time.sleep(0.01)
    return endpoint.auth_failures()


@pytest.mark.parametrize("mode", ["hmac", "header"])
@pytest.mark.parametrize("receiver", ["direct", "libzmq", "grpc"])
def test_forged_frames_are_refused_and_counted_and_the_real_transfer_completes_intact(endpoints, receiver, mode):
    endpoint = endpoints(receiver, mode)
    source, forged_source = cache(), cache()
    endpoint.assembler.expect("good", "req-good", [20, 21, 22], 0, 12)
    wrong_key = signed(forged_source, "good", [1, 2, 3], 12, KVAuth(mode, secrets.token_bytes(32)))
    unsigned = signed(forged_source, "good", [1, 2, 3], 12, None)
    tampered, _ = signed(source, "good", [4, 5, 6], 12, KVAuth(mode, SECRET))[0]
    tampered.sender = "someone else"  # a signed header, changed after signing
    replayed, replayed_bytes = signed(source, "other", [4, 5, 6], 12, KVAuth(mode, SECRET))[1]
    replayed.transfer_id = "good"  # a real frame of another transfer, replayed into this one
    endpoint.send_raw(wrong_key + unsigned + [(tampered, b"\0" * len(unsigned[0][1])), (replayed, replayed_bytes)])
    forged = 2 * LAYERS + 2
    assert wait_failures(endpoint, forged) == forged

    assert _send_real(endpoint, source, KVAuth(mode, SECRET), [7, 8, 9], 12) == ({"req-good"}, set())
    for layer in range(LAYERS):
        assert torch.equal(endpoint.destination[layer][20:23], source[layer][7:10])
    assert endpoint.assembler.outcome("good").complete
    assert endpoint.auth_failures() == forged and endpoint.assembler.counters.checksum_failures == 0


def _send_real(endpoint, source, auth: KVAuth, blocks: list[int], num_tokens: int, expected: int = 1):
    """The real transfer "good" (`blocks` of `source`, signed by `auth`) sent over real senders; returns
    (finished, failed) once `expected` transfers ended."""
    senders = KVSenders(auth)
    try:
        for frame in frames(source, "good", blocks, num_tokens, endpoint.endpoint):
            senders.send(frame)
        return wait_finished(endpoint.assembler, expected)
    finally:
        senders.close()

@pytest.mark.parametrize("receiver", ["direct", "libzmq", "grpc"])
def test_a_payload_changed_under_a_real_header_fails_only_its_own_transfer(endpoints, receiver):
    """hmac mode: bytes that match the header's xxh3 (an on-path forger's) but not its MAC."""
    endpoint = endpoints(receiver, "hmac")
    source, forged_source = cache(), cache()
    endpoint.assembler.expect("victim", "req-victim", [10, 11], 0, 8)
    endpoint.assembler.expect("good", "req-good", [20, 21], 0, 8)
    header, _ = signed(source, "victim", [1, 2], 8, KVAuth("hmac", SECRET))[0]
    forged = signed(forged_source, "victim", [1, 2], 8, None)[0][1]
    header.checksum = checksum(forged)  # the forger fixes the checksum; the header's MAC no longer holds
    endpoint.send_raw([(header, forged)])
    finished, failed = _send_real(endpoint, source, KVAuth("hmac", SECRET), [3, 4], 8)
    assert finished == {"req-good"} and not failed  # the forged frame was dropped; the victim still waits
    assert wait_failures(endpoint, 1) == 1 and endpoint.assembler.outcome("victim") is None


@pytest.mark.parametrize("receiver", ["direct", "libzmq", "grpc"])
def test_a_payload_swapped_under_an_intact_header_is_refused_in_hmac_mode(endpoints, receiver):
    """A header whose MAC holds over other bytes with the same xxh3 (an xxh3 collision an on-path forger
    could craft): only the payload MAC catches it. Made here by re-signing the header for the forged
    bytes' checksum with the real key, its payload MAC left that of the real bytes."""
    endpoint = endpoints(receiver, "hmac")
    source, forged_source = cache(), cache()
    endpoint.assembler.expect("victim", "req-victim", [10, 11], 0, 8)
    endpoint.assembler.expect("good", "req-good", [20, 21], 0, 8)
    real = KVAuth("hmac", SECRET)
    header, real_bytes = signed(source, "victim", [1, 2], 8, real)[0]
    forged = signed(forged_source, "victim", [1, 2], 8, None)[0][1]
    header.checksum = checksum(forged)
    header.mac = _resign_header_only(real, header)
    endpoint.send_raw([(header, forged)])
    finished, failed = _send_real(endpoint, source, real, [3, 4], 8, expected=2)
    assert finished == {"req-good", "req-victim"} and failed == {"req-victim"}  # the victim recomputes
    assert "payload MAC" in endpoint.assembler.outcome("victim").failure
    assert endpoint.auth_failures() == 1 and endpoint.assembler.outcome("good").complete
    assert real_bytes != forged


def _resign_header_only(auth: KVAuth, header: kv_pb2.KVFrameHeader) -> bytes:
    """The header MAC a holder of the key would compute for this header (keeping its payload MAC)."""
    from workers.kv import auth as auth_module

    return auth_module._header_mac(auth._key(header.transfer_id), header)


def test_abort_needs_the_transfers_mac(endpoints):
    endpoint = endpoints("direct")
    endpoint.assembler.expect("t", "req", [1], 0, 4)
    for mac in (b"", KVAuth("hmac", secrets.token_bytes(32)).sign_abort("t", "rogue")):
        with pytest.raises(grpc.RpcError) as refused:
            endpoint.stub.AbortTransfer(kv_pb2.AbortTransferRequest(transfer_id="t", reason="rogue", mac=mac), timeout=5)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert endpoint.assembler.outcome("t") is None and endpoint.auth_failures() == 2
    replayed = KVAuth("hmac", SECRET).sign_abort("other", "gave up")  # another transfer's real abort
    with pytest.raises(grpc.RpcError):
        endpoint.stub.AbortTransfer(kv_pb2.AbortTransferRequest(transfer_id="t", reason="gave up", mac=replayed), timeout=5)
    reply = endpoint.stub.AbortTransfer(kv_pb2.AbortTransferRequest(
        transfer_id="t", reason="gave up", mac=KVAuth("hmac", SECRET).sign_abort("t", "gave up")), timeout=5)
    assert reply.known and wait_finished(endpoint.assembler) == ({"req"}, {"req"})
    assert endpoint.assembler.outcome("t").failure == "aborted: gave up" and endpoint.auth_failures() == 3


def test_with_auth_none_unsigned_frames_pass(endpoints):
    endpoint = endpoints("libzmq", "none")
    source = cache()
    endpoint.assembler.expect("t", "req", [5, 6], 0, 8)
    endpoint.send_raw(signed(source, "t", [1, 2], 8, None))
    assert wait_finished(endpoint.assembler) == ({"req"}, set()) and endpoint.auth_failures() == 0


def test_modes_secrets_and_peers_are_checked(tmp_path):
    with pytest.raises(ValueError, match="needs the cluster's KV secret"):
        KVAuth("hmac", None)
    with pytest.raises(ValueError, match="unknown kv.auth"):
        KVAuth("curve", SECRET)
    assert SECRET.hex() not in repr(KVAuth("hmac", SECRET))
    assert len(make_secret()) == 32 and make_secret() != make_secret()
    (tmp_path / "short").write_bytes(b"x" * 8)
    with pytest.raises(ValueError, match="at least 16"):
        make_secret(tmp_path / "short")
    with pytest.raises(ValueError, match="cannot be read"):
        make_secret(tmp_path / "missing")
    (tmp_path / "key").write_bytes(b"k" * 32)
    assert make_secret(tmp_path / "key") == b"k" * 32
    assert peer_host("ipv4:10.0.0.2:5555") == "10.0.0.2" and peer_host(("10.0.0.3", 1)) == "10.0.0.3"
    assert peer_host("ipv6:[::1]:80") == "::1" and peer_host("10.0.0.4") == "10.0.0.4"


@pytest.mark.parametrize("configured, host, mode", [
    ("auto", "127.0.0.1", "header"), ("auto", "::1", "header"), ("auto", "localhost", "header"),
    ("auto", "10.88.0.3", "hmac"), ("auto", "kv-decode-0.pdserve.svc", "hmac"),
    ("hmac", "127.0.0.1", "hmac"), ("header", "10.0.0.3", "header"), ("none", "10.0.0.3", "none")])
def test_auto_signs_payloads_across_hosts_and_headers_on_loopback(configured, host, mode):
    assert resolve_mode(configured, host) == mode


def test_a_worker_resolves_auto_from_its_kv_host():
    from orchestrator.config import PdserveConfig
    from workers.actor import build_engine

    for host, mode in (("127.0.0.1", "header"), ("10.88.0.3", "hmac")):
        config = PdserveConfig.model_validate({"engine": {"kind": "timing", "profile": "p.yaml"}, "kv": {"host": host}})
        assert config.kv.auth == "auto"
        engine = build_engine(config, "model", "decode", "decode-0", make_secret())
        assert engine._kv["auth"] == mode, engine._kv
