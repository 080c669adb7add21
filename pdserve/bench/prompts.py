"""Prompts as exact token-id lists.

Prompts are built from random token ids, never from text, so a prompt of N tokens is N tokens on the
server whatever its tokenizer. Ids come from a "safe" range (default 256..8191: clear of the special
tokens at the bottom of common vocabularies and inside small ones). Every random choice is seeded:
the same seed, request index and hash ids give the same prompt in every run and in every process.

Trace requests with prefix hash ids (Mooncake) get one fixed block of `block_tokens` ids per hash id,
so two requests that share their first k hash ids share their first k blocks of tokens: the server's
prefix reuse is real. Tokens past the hashed blocks are unique to the request.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np

DEFAULT_TOKEN_ID_LOW = 256
DEFAULT_TOKEN_ID_HIGH = 8192  # exclusive
MOONCAKE_BLOCK_TOKENS = 512

# Stream tags keep block contents and per-request tails drawn from unrelated random streams.
_BLOCK_STREAM = 1
_REQUEST_STREAM = 2


@dataclass
class PromptBuilder:
    """Builds token-id prompts; caches one array per prefix hash id it has seen.

    seed: base seed of every random stream. id_low/id_high: token ids are drawn in [id_low, id_high).
    block_tokens: tokens per prefix hash block.
    """

    seed: int = 0
    id_low: int = DEFAULT_TOKEN_ID_LOW
    id_high: int = DEFAULT_TOKEN_ID_HIGH
    block_tokens: int = MOONCAKE_BLOCK_TOKENS
    _blocks: dict[int, np.ndarray] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if not 0 <= self.id_low < self.id_high:
            raise ValueError(f"token id range [{self.id_low}, {self.id_high}) is empty or negative")
        if self.block_tokens < 1:
            raise ValueError(f"block_tokens must be >= 1, got {self.block_tokens}")

    def build(self, index: int, num_tokens: int, prefix_hash_ids: tuple = ()) -> list[int]:
        """The prompt of request `index`: exactly `num_tokens` ids, hashed blocks first.

        Only the blocks needed to reach `num_tokens` are made (a clipped prompt uses few of its hashes).
        """
        if num_tokens < 1:
            raise ValueError(f"a prompt needs at least 1 token, got {num_tokens}")
        num_blocks = min(len(prefix_hash_ids), -(-num_tokens // self.block_tokens))
        parts = [self._block(hash_id) for hash_id in prefix_hash_ids[:num_blocks]]
        covered = num_blocks * self.block_tokens
        if covered < num_tokens:
            parts.append(self._random(num_tokens - covered, _REQUEST_STREAM, index))
        return np.concatenate(parts)[:num_tokens].tolist()

    def _block(self, hash_id: object) -> np.ndarray:
        key = _hash_key(hash_id)
        block = self._blocks.get(key)
        if block is None:
            block = self._blocks[key] = self._random(self.block_tokens, _BLOCK_STREAM, key)
        return block

    def _random(self, num_tokens: int, stream: int, key: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, stream, key])
        return rng.integers(self.id_low, self.id_high, size=num_tokens, dtype=np.int64)


def _hash_key(hash_id: object) -> int:
    """A non-negative int seed for a trace's hash id (ints as they are, anything else by CRC32)."""
    if isinstance(hash_id, (int, np.integer)) and hash_id >= 0:
        return int(hash_id)
    return zlib.crc32(repr(hash_id).encode()) + (1 << 63)
