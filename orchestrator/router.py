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

Conditional disaggregation (`conditional_prefill`): otherwise the prompt may still be prefilled on the
chosen decode worker itself, when the measured costs say its first token comes sooner there and the
streams it runs can afford the wait. With `prefill_ms_per_token` (measured per worker by the gateway)
and the prefill worker's queued prompt tokens, the first token comes from the prefill pool after
`(queued + new tokens) x its ms/token`, and from the decode worker after `new tokens x its ms/token`
plus, when it is decoding, one step (`step_ms`, its engine's own inter-token gap). Each stream the
decode worker runs waits for a local prefill once: allowed when it runs none, or when the prefill takes
at most `max_local_prefill_stall_ms`. Until both costs are measured, the prefill pool is used.

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
    prefill_ms_per_token: float = 0.0  # measured cost of prefilling one prompt token here (0: not measured yet)
    step_ms: float = 0.0  # measured decode step (its engine's gap between a request's tokens; 0: not measured)

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
    local_prefill: bool = False  # conditional disaggregation chose the decode worker to prefill (see the module doc)


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
    if config.conditional_prefill:
        local = _local_prefill_reason(request.num_prompt_tokens - matched_tokens, prefill, decode, config)
        if local is not None:
            return RouteDecision(decode.worker_id, None, matched_tokens, True, local, local_prefill=True)
    return RouteDecision(decode.worker_id, prefill.worker_id, matched_tokens, False,
                         f"prefill on the least-loaded worker; decode cost {_decode_cost(request, decode, prefix_matches, config):.0f} blocks")


def _local_prefill_reason(new_tokens: int, prefill: WorkerLoad, decode: WorkerLoad, config: RouterConfig) -> str | None:
    """Why the decode worker should prefill these `new_tokens` itself, or None (the prefill pool)."""
    remote_rate = prefill.prefill_ms_per_token
    local_rate = decode.prefill_ms_per_token or remote_rate  # same hardware until its own is measured
    if remote_rate <= 0 or local_rate <= 0 or new_tokens <= 0:
        return None
    remote_ms = (prefill.pending_prefill_tokens + new_tokens) * remote_rate
    local_ms = new_tokens * local_rate
    wait_ms = local_ms + (decode.step_ms if decode.num_running else 0.0)
    if wait_ms >= remote_ms:
        return None
    if decode.num_running and local_ms > config.max_local_prefill_stall_ms:
        return None
    return (f"prefill on the decode worker: first token in ~{wait_ms:.0f} ms there against ~{remote_ms:.0f} ms "
            f"from the prefill pool ({prefill.pending_prefill_tokens} tokens queued); "
            + (f"its {decode.num_running} streams wait ~{local_ms:.0f} ms once" if decode.num_running else "it was idle"))


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
