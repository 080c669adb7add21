"""Prompt block hashes: the identity of a prompt prefix, block by block.

Block i's hash covers tokens [0, (i+1)*block_size): it chains the previous block's hash with this
block's tokens, so equal hashes mean equal prefixes. Only full blocks are hashed (a partial last block
cannot be shared). Used by the router's prefix index and by the simulator (which may feed trace hash
ids instead). Pure, stdlib only.
"""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Sequence


def block_hashes(token_ids: Sequence[int], block_size: int) -> tuple[int, ...]:
    """Chained 64-bit hashes of each full block of `token_ids`."""
    if block_size <= 0:
        raise ValueError(f"block_size must be positive, got {block_size}")
    hashes = []
    previous = b""
    for start in range(0, len(token_ids) - block_size + 1, block_size):
        block = array("q", token_ids[start:start + block_size]).tobytes()
        digest = hashlib.blake2b(previous + block, digest_size=8).digest()
        hashes.append(int.from_bytes(digest, "little"))
        previous = digest
    return tuple(hashes)
