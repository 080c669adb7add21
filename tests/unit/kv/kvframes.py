"""Shared factories for the KV path tests: small caches in the CPU backend's layout, frames built as the
connector builds them, an assembler writing into a cache, and a poll loop."""

from __future__ import annotations

import time

import torch

from workers.kv.assembler import TransferAssembler
from workers.kv.blocks import as_bytes, block_parts, gather_blocks, write_blocks
from workers.kv.transport import OutgoingFrame

LAYERS, HEADS, BLOCK, WIDTH = 3, 2, 4, 8


def cache(num_blocks: int = 32, fill: bool = True) -> list[torch.Tensor]:
    if fill:
        return [torch.randn(num_blocks, HEADS, BLOCK, WIDTH).to(torch.bfloat16) for _ in range(LAYERS)]
    return [torch.zeros(num_blocks, HEADS, BLOCK, WIDTH, dtype=torch.bfloat16) for _ in range(LAYERS)]


def fields(transfer_id: str, layer: int, num_blocks: int, tokens: int, token_start: int = 0) -> dict:
    return dict(transfer_id=transfer_id, layer_index=layer, num_layers=LAYERS, token_start=token_start,
                token_end=tokens, num_prompt_tokens=tokens, block_size=BLOCK, dtype="bfloat16",
                shape=(num_blocks, HEADS, BLOCK, WIDTH))


def frames(source: list[torch.Tensor], transfer_id: str, block_ids: list[int], tokens: int, endpoint: str = "",
           **extra) -> list[OutgoingFrame]:
    """One frame per layer, as the connector builds them (in place when it can, else gathered)."""
    result = []
    for layer in range(LAYERS):
        payload = block_parts(source[layer], block_ids) or as_bytes(gather_blocks(source[layer], block_ids))
        result.append(OutgoingFrame(endpoint, fields(transfer_id, layer, len(block_ids), tokens), payload, **extra))
    return result


def assembler_for(destination: list[torch.Tensor], **options) -> TransferAssembler:
    return TransferAssembler(lambda layer, ids, header, payload, first: write_blocks(destination[layer], ids, header,
                                                                                     payload, first),
                             timeout_s=options.pop("timeout_s", 5.0), verify_after_write=True, **options)


def wait_finished(assembler: TransferAssembler, count: int = 1, timeout_s: float = 10.0) -> tuple[set, set]:
    finished, failed = set(), set()
    deadline = time.monotonic() + timeout_s
    while len(finished) < count and time.monotonic() < deadline:
        done, bad = assembler.poll()
        finished |= done
        failed |= bad
        time.sleep(0.005)
    return finished, failed
