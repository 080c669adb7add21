"""Moving KV blocks between an engine's cache and the wire.

Sender, inside the forward pass, per layer:
- `block_parts(layer_view, block_ids)`: when the cache is in host memory, each block is one contiguous
  range of bytes (the CPU backend's layout) and the request's blocks lie in one or two runs of
  consecutive ids (as a fresh or lightly loaded engine allocates them), they are sent straight out of
  the cache as zero-copy parts, no copy at all. The engine then keeps those blocks until ZeroMQ has
  sent them (the connector delays their free).
- otherwise `gather_blocks(layer_view, block_ids)`: one gather into a new host tensor (device memory, a
  layout whose blocks are not contiguous, or blocks scattered over many runs), which the sender owns.
Receiver, two ways:
- `locate_blocks(layer_view, dest_block_ids, header, first_row)`: writable byte views of the destination
  blocks, one per run of consecutive ids, for a receiver that reads the frame off the socket straight
  into the cache (`zmtp.ZmtpReceiver`): the kernel's copy out of the socket is then the only one.
- `write_blocks(layer_view, dest_block_ids, header, payload, first_row)` views a frame already in memory
  (stashed before the engine allocated its blocks, or from a transport that buffers) as the sender's
  blocks and copies them into the blocks the receiving engine allocated: one slice copy per run.
`layer_view` is one layer's cache with the block dimension first (`connector.block_first_view`).
Torch and numpy only: the KV benchmark drives these same functions without an engine.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
import xxhash

from workers.kv.wire import Header, Payload, payload_parts


MAX_ZERO_COPY_PARTS = 2
MAX_LAYOUTS = 4096


def runs(block_ids: Sequence[int]) -> list[tuple[int, int]]:
    """Consecutive runs of `block_ids` as (first id, count): [4, 5, 6, 9] -> [(4, 3), (9, 1)]."""
    result: list[tuple[int, int]] = []
    for block in block_ids:
        if result and block == result[-1][0] + result[-1][1]:
            result[-1] = (result[-1][0], result[-1][1] + 1)
        else:
            result.append((block, 1))
    return result


def block_parts(layer_view: torch.Tensor, block_ids: Sequence[int],
                max_parts: int = MAX_ZERO_COPY_PARTS) -> list[np.ndarray] | None:
    """Zero-copy views of the blocks, one per run of consecutive ids; None when they cannot be sent
    in place (not in host memory, or a block is not one contiguous range of bytes) or when they lie in
    more than `max_parts` runs: each zero-copy part costs pyzmq a release notification, which for many
    small parts costs more than one gather copy."""
    if not _in_place_ok(layer_view) or len(runs(block_ids)) > max_parts:
        return None
    return [as_bytes(layer_view[first:first + count]) for first, count in runs(block_ids)]


def gather_blocks(layer_view: torch.Tensor, block_ids: Sequence[int]) -> torch.Tensor:
    """The blocks `block_ids` of one layer, in that order, contiguous on the host (a copy)."""
    index = torch.tensor(list(block_ids), dtype=torch.long, device=layer_view.device)
    return layer_view.index_select(0, index).cpu().contiguous()


def locate_blocks(layer_view: torch.Tensor, dest_block_ids: Sequence[int], header: Header,
                  first_row: int) -> list[memoryview] | None:
    """Writable views of the blocks `dest_block_ids`, one per run of consecutive ids, in order: where
    rows [first_row:] of the frame's payload go. None when the cache is not in host memory (device
    memory cannot be a socket's destination). Raises ValueError as `write_blocks` does."""
    return _layout(layer_view).targets(dest_block_ids, header, first_row)


def write_blocks(layer_view: torch.Tensor, dest_block_ids: Sequence[int], header: Header, payload: Payload,
                 first_row: int) -> int | None:
    """Copy blocks [first_row:] of the frame into `dest_block_ids`; return the frame's checksum as
    written, when that could be computed from what was just written (host memory).

    Verifying the copy instead of the received bytes reads the data once while it is cold (the copy)
    and once while it is hot in cache (the checksum), not twice cold: a copy that does not match its
    header fails the transfer, and the engine recomputes into fresh blocks. Raises ValueError when the
    sender's per-block layout or dtype differs from this cache's (another model, block size or TP)."""
    return _layout(layer_view).write(dest_block_ids, header, payload, first_row)


class _Layout:
    """What `write_blocks` needs to know about one layer's cache, computed once per cache tensor."""

    def __init__(self, layer_view: torch.Tensor) -> None:
        self.view = layer_view
        self.per_block = tuple(layer_view.shape[1:])
        self.dtype = str(layer_view.dtype).removeprefix("torch.")
        self.host = _in_place_ok(layer_view)
        self.target = layer_view.view(torch.uint8).numpy().reshape(layer_view.shape[0], -1) if self.host else None

    def check(self, dest_block_ids: Sequence[int], header: Header, first_row: int) -> tuple[int, ...]:
        """The frame's shape, after checking that it fits this cache and its destinations."""
        shape = tuple(header.shape)
        if shape[1:] != self.per_block or header.dtype != self.dtype:
            raise ValueError(f"KV layout mismatch: sender {header.dtype}{list(shape[1:])} per block, "
                             f"receiver {self.dtype}{list(self.per_block)} (same model, block size and TP needed)")
        if len(dest_block_ids) != shape[0] - first_row:
            raise ValueError(f"frame has {shape[0] - first_row} blocks past row {first_row}, "
                             f"{len(dest_block_ids)} destinations")
        return shape

    def targets(self, dest_block_ids: Sequence[int], header: Header, first_row: int) -> list[memoryview] | None:
        self.check(dest_block_ids, header, first_row)
        if not self.host:
            return None
        return [memoryview(self.target[first:first + count]).cast("B") for first, count in runs(dest_block_ids)]

    def write(self, dest_block_ids: Sequence[int], header: Header, payload: Payload, first_row: int) -> int | None:
        shape = self.check(dest_block_ids, header, first_row)
        if not self.host:
            chunks = [c.to(self.view.device) for c in _block_chunks(payload, self.view.dtype, shape)]
            _copy_rows(self.view, chunks, dest_block_ids, first_row)
            if self.view.device.type == "cuda":  # done before the transfer is reported complete to the engine
                torch.cuda.current_stream(self.view.device).synchronize()
            return None
        chunks = _byte_chunks(payload, self.target.shape[1], shape[0])
        destination = runs(dest_block_ids)
        digest = xxhash.xxh3_64()
        remaining = first_row  # rows the receiver already holds count in the checksum too
        for chunk in chunks:
            if not remaining:
                break
            take = min(remaining, chunk.shape[0])
            digest.update(chunk[:take])
            remaining -= take
        if len(chunks) == 1 and len(destination) == 1:  # the usual frame: one memcpy
            first, count = destination[0]
            self.target[first:first + count] = chunks[0][first_row:]
        else:
            _copy_rows(self.target, chunks, dest_block_ids, first_row)
        for first, count in destination:
            digest.update(self.target[first:first + count])
        return digest.intdigest()


_LAYOUTS: dict[tuple[int, tuple[int, ...], tuple[int, ...]], _Layout] = {}


def _layout(layer_view: torch.Tensor) -> _Layout:
    key = (layer_view.data_ptr(), tuple(layer_view.shape), tuple(layer_view.stride()))
    layout = _LAYOUTS.get(key)
    if layout is None:
        if len(_LAYOUTS) >= MAX_LAYOUTS:  # an engine has one per layer; only tests make many caches
            _LAYOUTS.clear()
        layout = _LAYOUTS[key] = _Layout(layer_view)
    return layout


def _copy_rows(target: Any, chunks: list[Any], dest_block_ids: Sequence[int], first_row: int) -> None:
    """Copy the chunks' rows from `first_row` on into `dest_block_ids` of `target`, run by run."""
    sources = _rows(chunks, first_row)
    for first, count in runs(dest_block_ids):
        while count:
            chunk, start, available = next(sources)
            take = min(count, available)
            target[first:first + take] = chunk[start:start + take]
            if take < available:
                sources = itertools.chain([(chunk, start + take, available - take)], sources)
            first, count = first + take, count - take


def _in_place_ok(layer_view: torch.Tensor) -> bool:
    """Host memory, and each block one contiguous range of bytes, blocks one after the other."""
    return layer_view.device.type == "cpu" and layer_view[0].is_contiguous() and \
        layer_view.stride(0) == layer_view[0].numel()


def _byte_chunks(payload: Payload, block_bytes: int, num_blocks: int) -> list[np.ndarray]:
    """The payload's parts as (blocks, block_bytes) uint8 arrays viewing the received bytes."""
    chunks = [np.frombuffer(part, dtype=np.uint8).reshape(-1, block_bytes) for part in payload_parts(payload)]
    if sum(c.shape[0] for c in chunks) != num_blocks:
        raise ValueError(f"payload holds {sum(c.shape[0] for c in chunks)} blocks, its header says {num_blocks}")
    return chunks


def _block_chunks(payload: Payload, dtype: torch.dtype, shape: tuple[int, ...]) -> list[torch.Tensor]:
    """The payload's parts as (blocks, ...) tensors viewing the received bytes (no copy)."""
    chunks = []
    for part in payload_parts(payload):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # a read-only buffer: it is only read
            raw = torch.from_numpy(np.frombuffer(part, dtype=np.uint8))
        chunks.append(raw.view(dtype).reshape(-1, *shape[1:]))
    if sum(c.shape[0] for c in chunks) != shape[0]:
        raise ValueError(f"payload holds {sum(c.shape[0] for c in chunks)} blocks, its header says {shape[0]}")
    return chunks


def _rows(chunks: list[Any], skip: int) -> Iterator[tuple[Any, int, int]]:
    """(chunk, first row, rows) segments covering the blocks from row `skip` on, in order."""
    for chunk in chunks:
        if skip >= chunk.shape[0]:
            skip -= chunk.shape[0]
            continue
        yield chunk, skip, chunk.shape[0] - skip
        skip = 0


def as_bytes(blocks: torch.Tensor) -> np.ndarray:
    """The blocks' bytes as a numpy array sharing their memory (what a frame's payload is)."""
    return blocks.view(torch.uint8).numpy()
