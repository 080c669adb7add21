"""A rogue process on another host that knows a decode worker's KV endpoints and the transfer ids of live
requests, but not the cluster's KV secret: it pushes forged KV frames (a made-up MAC, no MAC, a MAC copied
from nowhere) over ZeroMQ and gRPC, and asks to abort the transfers. Run by test_kv_auth.py in the prefill
host's namespace:

    python rogue.py ZMQ_ENDPOINT GRPC_ENDPOINT SECONDS TRANSFER_ID...

Prints one JSON line: frames sent per transport, and the gRPC status of each abort.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import grpc  # noqa: E402
import numpy as np  # noqa: E402
import zmq  # noqa: E402

from orchestrator.api.pb import kv_pb2, kv_pb2_grpc  # noqa: E402
from workers.kv.wire import checksum  # noqa: E402

NUM_LAYERS = 30  # the default model's; a forged frame looks like a real one in every field but its MAC
BLOCK_SIZE = 32


def forged(transfer_id: str, layer: int, mac: bytes) -> tuple[kv_pb2.KVFrameHeader, bytes]:
    payload = np.full((1, 2, BLOCK_SIZE, 3, 64), 7.0, dtype=np.float32).tobytes()  # one block of garbage KV
    header = kv_pb2.KVFrameHeader(transfer_id=transfer_id, layer_index=layer, num_layers=NUM_LAYERS, token_start=0,
                                  token_end=BLOCK_SIZE, num_prompt_tokens=BLOCK_SIZE, block_size=BLOCK_SIZE,
                                  dtype="float32", shape=[1, 2, BLOCK_SIZE, 3, 64], checksum=checksum(payload),
                                  sender="rogue", mac=mac, payload_mac=mac)
    return header, payload


def main(zmq_endpoint: str, grpc_endpoint: str, seconds: float, transfer_ids: list[str]) -> int:
    sent = {"zmq": 0, "grpc": 0}
    push = zmq.Context.instance().socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 2000)
    push.connect("tcp://" + zmq_endpoint.removeprefix("zmq://"))
    channel = grpc.insecure_channel(grpc_endpoint.removeprefix("grpc://"))
    stub = kv_pb2_grpc.KVTransferStub(channel)
    aborts = []
    for transfer_id in transfer_ids:
        try:
            stub.AbortTransfer(kv_pb2.AbortTransferRequest(transfer_id=transfer_id, reason="rogue", mac=os.urandom(32)),
                               timeout=10)
            aborts.append("OK")
        except grpc.RpcError as error:
            aborts.append(error.code().name)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        frames = []
        for i, transfer_id in enumerate(transfer_ids):
            for layer, mac in ((i % NUM_LAYERS, os.urandom(32)), ((i + 1) % NUM_LAYERS, b"")):
                header, payload = forged(transfer_id, layer, mac)
                push.send_multipart([header.SerializeToString(), payload])
                sent["zmq"] += 1
                frames.append(kv_pb2.KVFrame(header=header, payload=payload))
        try:
            stub.Push(iter(frames), timeout=10)
        except grpc.RpcError:
            pass  # refused: what it should be
        sent["grpc"] += len(frames)
        time.sleep(0.05)
    push.close()
    channel.close()
    print(json.dumps({"sent": sent, "aborts": aborts}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4:]))
