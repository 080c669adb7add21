"""The KV frame: a small protobuf header and the raw bytes of one layer's blocks.

A frame carries, for one transfer and one layer, the KV of prompt tokens [token_start, token_end) as
whole blocks (token_start is block-aligned; the last block may be partial and is sent again by the next
chunk). The payload is the blocks in prompt order, in the engine's per-block layout: one buffer, or
several parts (runs of blocks sent straight out of the KV cache as zero-copy ZeroMQ frames) that
together are those bytes. Its shape (blocks first) and dtype ride in the header, with an xxh3_64
checksum of the bytes, parts in order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import xxhash

from orchestrator.api.pb import kv_pb2

Header = kv_pb2.KVFrameHeader


Payload = memoryview | bytes | Sequence[memoryview | bytes]

# Bytes per element of the KV cache dtypes a frame may carry (torch's names, as in the header).
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float8_e4m3fn": 1, "float8_e5m2": 1, "uint8": 1, "int8": 1}


def checksum(payload: Payload) -> int:
    """xxh3_64 of the payload's bytes, parts in order (fast enough to verify every frame at memory speed)."""
    if isinstance(payload, (memoryview, bytes, bytearray)):
        return xxhash.xxh3_64_intdigest(payload)
    digest = xxhash.xxh3_64()
    for part in payload:
        digest.update(part)
    return digest.intdigest()


def payload_size(payload: Payload) -> int:
    """Bytes in the payload, all parts together."""
    if isinstance(payload, (memoryview, bytes, bytearray)):
        return memoryview(payload).nbytes
    return sum(memoryview(part).nbytes for part in payload)


def payload_bytes(header: Header) -> int:
    """The size its header promises for a frame's payload: shape times dtype size. Raises ValueError on
    a dtype no KV cache uses or an empty shape (a receiver must know the size before it reads the bytes)."""
    itemsize = DTYPE_BYTES.get(header.dtype)
    if itemsize is None:
        raise ValueError(f"KV frame of transfer {header.transfer_id!r}: unknown dtype {header.dtype!r}")
    if not header.shape or any(dim < 0 for dim in header.shape):
        raise ValueError(f"KV frame of transfer {header.transfer_id!r}: bad shape {list(header.shape)}")
    size = itemsize
    for dim in header.shape:
        size *= dim
    return size


def payload_parts(payload: Payload) -> list[memoryview]:
    """The payload as a list of byte views (one for a single buffer)."""
    if isinstance(payload, (memoryview, bytes, bytearray)):
        return [memoryview(payload).cast("B")]
    return [memoryview(part).cast("B") for part in payload]


@dataclass(frozen=True)
class FrameSpan:
    """Which prompt blocks a frame covers."""

    first_block: int
    num_blocks: int

    @classmethod
    def of(cls, header: Header) -> FrameSpan:
        first = header.token_start // header.block_size
        last = -(-header.token_end // header.block_size)
        return cls(first, last - first)


def make_header(*, transfer_id: str, layer_index: int, num_layers: int, token_start: int, token_end: int,
                num_prompt_tokens: int, block_size: int, dtype: str, shape: tuple[int, ...],
                payload: Payload, source_block_ids: list[int] | None = None, sender: str = "") -> Header:
    if token_start % block_size:
        raise ValueError(f"token_start {token_start} is not a multiple of block_size {block_size}")
    return Header(
        transfer_id=transfer_id, layer_index=layer_index, num_layers=num_layers, token_start=token_start,
        token_end=token_end, num_prompt_tokens=num_prompt_tokens, block_size=block_size, dtype=dtype,
        shape=list(shape), checksum=checksum(payload), source_block_ids=source_block_ids or [], sender=sender,
    )
