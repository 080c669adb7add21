"""Routing: pick the (prefill, decode) pair for a request.

`pick(request, snapshot, prefix_matches, config)` is a pure function over a snapshot of worker load
and of how much of the prompt each decode worker already holds. `PrefixIndex` is the (approximate,
bounded) memory of which prompt blocks each decode worker has seen; the gateway updates it after each
dispatch and the simulator does the same, so both route with the same code.

The decode worker is chosen first: it holds the request for its whole generation (KV memory, batch
slot), and a prefix it already caches saves the transfer and possibly the whole prefill. Its cost is
Dynamo-style, in KV blocks: blocks it would have to receive (weighted by `prefix_weight`) plus the
blocks it already holds for running requests. The prefill worker is the one with the least queued
prompt work. When the decode worker holds at least `skip_prefill_min_fraction` of the prompt, the
prefill tier is skipped and the decode worker computes the short rest itself.

When no decode worker is ready (the pool's only worker failed and its replacement is starting), a
prefill worker serves the whole request, colocated-style: its engine can decode too. That keeps a
1P+1D cluster answering through a decode worker's restart, slower, instead of refusing everything.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from orchestrator.config import RouterConfig
from orchestrator.errors import Unavailable


@dataclass(frozen=True)
class WorkerLoad:
    """One worker as the router sees it."""

    worker_id: str
    tier: str  # "prefill" | "decode" | "colocated"
    ready: bool = True
    draining: bool = False
    num_running: int = 0
    num_waiting: int = 0
    num_active_blocks: int = 0  # KV blocks held by running requests
    num_total_blocks: int = 0
    pending_prefill_tokens: int = 0  # prompt tokens dispatched and not yet prefilled

    @property
    def routable(self) -> bool:
        return self.ready and not self.draining


@dataclass(frozen=True)
class ClusterSnapshot:
    prefill: tuple[WorkerLoad, ...] = ()
    decode: tuple[WorkerLoad, ...] = ()  # colocated workers are listed here


@dataclass(frozen=True)
class RouteRequest:
    num_prompt_tokens: int
    block_hashes: tuple[int, ...] = ()
    block_size: int = 32


@dataclass(frozen=True)
class RouteDecision:
    decode_worker: str
    prefill_worker: str | None  # None: the decode worker computes the prompt itself
    matched_tokens: int  # prompt tokens the decode worker already holds
    skip_prefill: bool
    reason: str
    degraded: bool = False  # no decode worker was ready: the "decode worker" is a prefill worker serving alone


def pick(request: RouteRequest, snapshot: ClusterSnapshot, prefix_matches: Mapping[str, int],
         config: RouterConfig) -> RouteDecision:
    """Choose the pair. `prefix_matches[worker_id]` is the number of leading prompt blocks that worker holds.

    Raises Unavailable when no worker can take the request (no decode worker, and no prefill worker to
    stand in for one).
    """
    decode = _pick_decode(request, snapshot.decode, prefix_matches, config)
    if decode is None:
        alone = _pick_prefill(snapshot.prefill)
        if alone is None:
            raise Unavailable("no worker is ready (starting, draining or failed); retry shortly")
        return RouteDecision(alone.worker_id, None, 0, False,
                             "no decode worker ready: a prefill worker serves the whole request", degraded=True)
    matched_tokens = min(prefix_matches.get(decode.worker_id, 0) * request.block_size, request.num_prompt_tokens)
    if decode.tier == "colocated":
        return RouteDecision(decode.worker_id, None, matched_tokens, False, "colocated worker with the lowest cost")
    if request.num_prompt_tokens > 0 and matched_tokens >= config.skip_prefill_min_fraction * request.num_prompt_tokens:
        return RouteDecision(decode.worker_id, None, matched_tokens, True,
                             f"decode worker holds {matched_tokens}/{request.num_prompt_tokens} prompt tokens: prefill skipped")
    prefill = _pick_prefill(snapshot.prefill)
    if prefill is None:
        return RouteDecision(decode.worker_id, None, matched_tokens, True,
                             "no prefill worker ready: the decode worker computes the prompt")
    return RouteDecision(decode.worker_id, prefill.worker_id, matched_tokens, False,
                         f"prefill on the least-loaded worker; decode cost {_decode_cost(request, decode, prefix_matches, config):.0f} blocks")


def _decode_cost(request: RouteRequest, worker: WorkerLoad, prefix_matches: Mapping[str, int],
                 config: RouterConfig) -> float:
    prompt_blocks = math.ceil(request.num_prompt_tokens / request.block_size)
    new_blocks = max(prompt_blocks - prefix_matches.get(worker.worker_id, 0), 0)
    queued_blocks = worker.num_waiting * prompt_blocks
    return config.prefix_weight * new_blocks + worker.num_active_blocks + queued_blocks + worker.num_running


def _pick_decode(request: RouteRequest, workers: Sequence[WorkerLoad], prefix_matches: Mapping[str, int],
                 config: RouterConfig) -> WorkerLoad | None:
    candidates = [w for w in workers if w.routable]
    if not candidates:
        return None
    return min(candidates, key=lambda w: (_decode_cost(request, w, prefix_matches, config), w.num_running, w.worker_id))


def _pick_prefill(workers: Sequence[WorkerLoad]) -> WorkerLoad | None:
    candidates = [w for w in workers if w.routable]
    if not candidates:
        return None
    return min(candidates, key=lambda w: (w.pending_prefill_tokens, w.num_running + w.num_waiting, w.worker_id))


class PrefixIndex:
    """Which prompt blocks each worker probably holds: an LRU set of block hashes per worker.

    Approximate by design (the engine may have evicted a block): a wrong guess costs a recompute of
    that part of the prompt, never a wrong answer.
    """

    def __init__(self, capacity_blocks: int) -> None:
        self._capacity = capacity_blocks
        self._blocks: dict[str, OrderedDict[int, None]] = {}

    def record(self, worker_id: str, hashes: Iterable[int]) -> None:
        """Remember that `worker_id` now holds these blocks (most recently used)."""
        if self._capacity <= 0:
            return
        blocks = self._blocks.setdefault(worker_id, OrderedDict())
        for h in hashes:
            blocks[h] = None
            blocks.move_to_end(h)
        while len(blocks) > self._capacity:
            blocks.popitem(last=False)

    def match(self, worker_id: str, hashes: Sequence[int]) -> int:
        """Number of leading blocks of `hashes` that `worker_id` holds."""
        blocks = self._blocks.get(worker_id)
        if not blocks:
            return 0
        count = 0
        for h in hashes:
            if h not in blocks:
                break
            count += 1
        return count

    def matches(self, worker_ids: Iterable[str], hashes: Sequence[int]) -> dict[str, int]:
        return {w: self.match(w, hashes) for w in worker_ids}

    def forget(self, worker_id: str) -> None:
        """Drop a worker (removed or restarted: its cache is gone)."""
        self._blocks.pop(worker_id, None)
