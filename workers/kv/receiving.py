"""The decode side's receiving stack for one engine: its assembler and its ZeroMQ receiver.

Two receivers speak ZeroMQ to the prefill side's libzmq PUSH sockets (`kv.zmq_receiver`):
- `direct` (default, `zmtp.ZmtpReceiver`): reads each payload off the socket straight into the blocks
  the engine allocated for it (frames that come before the blocks go to the stash, as with libzmq);
- `libzmq` (`transport.ZmqReceiver`): libzmq's own PULL socket; every frame arrives in a message of its
  own and is copied into the blocks. The conservative choice, and the baseline the benchmark shows.
Either way the assembler verifies each frame's checksum over the bytes as written into the cache, and
copies a stash into its blocks on a thread of its own, not in the engine's step.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from workers.kv.assembler import TransferAssembler
from workers.kv.auth import KVAuth
from workers.kv.blocks import locate_blocks, write_blocks
from workers.kv.transport import ZmqReceiver
from workers.kv.zmtp import ZmtpReceiver

RECEIVERS = ("direct", "libzmq")


def start_receiving(kind: str, layer_views: Sequence[torch.Tensor], host: str, port: int, *, timeout_s: float,
                    max_stash_bytes: int, auth: KVAuth | None = None) -> tuple[TransferAssembler, Any]:
    """An assembler writing into `layer_views` (block-first views, one per layer) and a running ZeroMQ
    receiver of `kind` bound on host:port feeding it, refusing frames without a valid MAC (`auth`).
    Raises ValueError for an unknown kind."""
    if kind not in RECEIVERS:
        raise ValueError(f"unknown KV receiver {kind!r} (use one of {', '.join(RECEIVERS)})")

    def write(layer: int, ids: list[int], header: Any, payload: Any, first_row: int) -> int | None:
        return write_blocks(layer_views[layer], ids, header, payload, first_row)

    def locate(layer: int, ids: list[int], header: Any, first_row: int) -> list[memoryview] | None:
        return locate_blocks(layer_views[layer], ids, header, first_row)

    assembler = TransferAssembler(write, timeout_s=timeout_s, max_stash_bytes=max_stash_bytes, verify_after_write=True,
                                  locate=locate if kind == "direct" else None, place_in_background=True)
    if kind == "direct":
        return assembler, ZmtpReceiver(assembler, host, port, stall_timeout_s=timeout_s, auth=auth)
    return assembler, ZmqReceiver(assembler, host, port, auth=auth)
