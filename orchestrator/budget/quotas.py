"""Tenant quotas (token buckets per tenant, per tier) and the fair order of a saturated queue.

Quotas: each tenant has its own buckets, so one tenant's burst only drains its own:
- prefill tier: prompt tokens and prefill USD, taken at admission (`admit`, or `try_acquire`);
- decode tier: generated tokens and decode USD, recorded as they are generated (`record`, may go into
  debt); a tenant in debt on the decode tier is refused at admission until its buckets refill.
A bucket holds up to `burst` and refills at `rate_per_s`. A request larger than the burst is let
through when the bucket is full (it then owes the rest), so a big request is slowed, never refused
forever. Over quota raises `QuotaExceeded` with `retry_after_s`: when the bucket will hold enough.

Fair order: when workers are saturated the gateway dispatches higher priority first; within a
priority, deficit round robin over tenants in tokens (each tenant gets a quantum proportional to its
weight per round), so a tenant that queued a thousand requests does not go ahead of one that queued
one. `FairOrder.next(pending)` is the dispatcher's form: it keeps the round robin's position and
deficits from one pick to the next (a slot frees one request at a time, and a fresh round each time
would always start with the same tenant). `order(queue)` is the one-shot form (a whole queue's order).
Pure: no I/O, the clock is passed in.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from orchestrator.config.budget import BudgetConfig
from orchestrator.errors import QuotaExceeded

TIERS = ("prefill", "decode")


class TokenBucket:
    """A token bucket: up to `burst` units, refilled at `rate_per_s`; the level may go below zero (debt)."""

    def __init__(self, rate_per_s: float, burst: float, now_s: float) -> None:
        if rate_per_s <= 0 or burst <= 0:
            raise ValueError("a token bucket needs a positive rate and burst")
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.level = burst
        self._last_s = now_s

    def refill(self, now_s: float) -> None:
        if now_s > self._last_s:
            self.level = min(self.burst, self.level + (now_s - self._last_s) * self.rate_per_s)
            self._last_s = now_s

    def wait_s(self, amount: float, now_s: float) -> float:
        """Seconds until `amount` can be taken (0: now). More than the burst needs a full bucket."""
        self.refill(now_s)
        needed = min(amount, self.burst) if amount > 0 else 0.0
        missing = needed - self.level
        return 0.0 if missing <= 1e-9 * self.burst else missing / self.rate_per_s  # tolerance: float refill

    def take(self, amount: float, now_s: float) -> None:
        """Take `amount` unconditionally (the level may go negative)."""
        self.refill(now_s)
        self.level -= amount


@dataclass(frozen=True)
class _Demand:
    tier: str
    unit: str  # "tokens" | "usd"
    amount: float


class TenantQuotas:
    """All tenants' buckets. One instance per gateway; not thread-safe (call it from one loop)."""

    def __init__(self, config: BudgetConfig) -> None:
        self.config = config
        self._buckets: dict[tuple[str, str, str], TokenBucket | None] = {}

    def _bucket(self, tenant: str, tier: str, unit: str, now_s: float) -> TokenBucket | None:
        key = (tenant, tier, unit)
        if key not in self._buckets:
            quota = self.config.tenant(tenant).quota
            rate = getattr(quota, f"{tier}_{unit}_per_s")
            burst = getattr(quota, f"{tier}_{unit}_burst")
            self._buckets[key] = None if rate is None else TokenBucket(rate, burst, now_s)
        return self._buckets[key]

    def try_acquire(self, tenant: str, tier: str, *, num_tokens: float, cost_usd: float, now_s: float) -> None:
        """Take `num_tokens` and `cost_usd` from the tenant's `tier` buckets, both or neither.

        Raises QuotaExceeded (retryable, HTTP 429 / RESOURCE_EXHAUSTED) with `retry_after_s` when either
        bucket cannot give its share now. With zero amounts it checks the tenant is not in debt there.
        """
        self._acquire(tenant, [_Demand(tier, "tokens", num_tokens), _Demand(tier, "usd", cost_usd)], now_s)

    def admit(self, tenant: str, *, num_prompt_tokens: int, prefill_cost_usd: float, now_s: float) -> None:
        """Admission-time quota check: take the prompt from the prefill buckets, and refuse a tenant in
        debt on the decode tier. Raises QuotaExceeded; takes nothing when it raises."""
        self._acquire(tenant, [
            _Demand("prefill", "tokens", num_prompt_tokens),
            _Demand("prefill", "usd", prefill_cost_usd),
            _Demand("decode", "tokens", 0.0),
            _Demand("decode", "usd", 0.0),
        ], now_s)

    def record(self, tenant: str, tier: str, *, num_tokens: float, cost_usd: float, now_s: float) -> None:
        """Take what a running request consumed (generated tokens: decode tier); never raises."""
        _check_tier(tier)
        for unit, amount in (("tokens", num_tokens), ("usd", cost_usd)):
            bucket = self._bucket(tenant, tier, unit, now_s)
            if bucket is not None:
                bucket.take(amount, now_s)

    def level(self, tenant: str, tier: str, unit: str, now_s: float) -> float:
        """What the tenant's bucket holds now (math.inf when unlimited); for status pages and tests."""
        bucket = self._bucket(tenant, tier, unit, now_s)
        if bucket is None:
            return math.inf
        bucket.refill(now_s)
        return bucket.level

    def _acquire(self, tenant: str, demands: Sequence[_Demand], now_s: float) -> None:
        waits = []
        for demand in demands:
            _check_tier(demand.tier)
            bucket = self._bucket(tenant, demand.tier, demand.unit, now_s)
            if bucket is not None:
                waits.append((bucket.wait_s(demand.amount, now_s), demand))
        blocked = [(wait, demand) for wait, demand in waits if wait > 0]
        if blocked:
            wait, demand = max(blocked, key=lambda item: item[0])
            what = "tokens" if demand.unit == "tokens" else "USD"
            raise QuotaExceeded(
                f"tenant {tenant!r} is over its {demand.tier} {what} quota: retry in {wait:.3g} s "
                "or ask for a higher quota",
                retry_after_s=wait,
            )
        for demand in demands:
            bucket = self._bucket(tenant, demand.tier, demand.unit, now_s)
            if bucket is not None:
                bucket.take(demand.amount, now_s)


def _check_tier(tier: str) -> None:
    if tier not in TIERS:
        raise ValueError(f"unknown tier {tier!r}; expected one of {TIERS}")


@dataclass(frozen=True)
class QueueEntry:
    """A request waiting for a worker, as the fair order sees it."""

    request_id: str
    tenant: str
    priority: int = 0
    num_tokens: int = 1  # its weight in the round robin (prompt + expected output tokens)


def order(queue: Sequence[QueueEntry], weights: dict[str, float] | None = None) -> list[QueueEntry]:
    """The dispatch order of `queue` (given in arrival order): priority first, then per-tenant deficit
    round robin in tokens. `weights[tenant]` (default 1) scales a tenant's quantum. Pure."""
    by_priority: dict[int, list[QueueEntry]] = {}
    for entry in queue:
        by_priority.setdefault(entry.priority, []).append(entry)
    result: list[QueueEntry] = []
    for priority in sorted(by_priority, reverse=True):
        result.extend(_deficit_round_robin(by_priority[priority], weights or {}))
    return result


def _deficit_round_robin(entries: Sequence[QueueEntry], weights: dict[str, float]) -> list[QueueEntry]:
    lanes: OrderedDict[str, list[QueueEntry]] = OrderedDict()
    for entry in entries:
        lanes.setdefault(entry.tenant, []).append(entry)
    quantum = max(max(entry.num_tokens for entry in entries), 1)
    deficit = dict.fromkeys(lanes, 0.0)
    result: list[QueueEntry] = []
    while lanes:
        for tenant in list(lanes):
            lane = lanes[tenant]
            deficit[tenant] += quantum * weights.get(tenant, 1.0)
            while lane and lane[0].num_tokens <= deficit[tenant]:
                deficit[tenant] -= lane[0].num_tokens
                result.append(lane.pop(0))
            if not lane:
                del lanes[tenant]
    return result


class FairOrder:
    """Stateful deficit round robin over tenants, within the highest priority pending (see the module
    docstring). `weight(tenant)` scales a tenant's quantum. Not thread-safe; pure otherwise."""

    def __init__(self, weight: Callable[[str], float] = lambda tenant: 1.0) -> None:
        self._weight = weight
        self._rotation: deque[str] = deque()
        self._deficit: dict[str, float] = {}
        self._credited = False  # the tenant at the head of the rotation got its quantum this visit

    def next(self, pending: Sequence[QueueEntry]) -> QueueEntry:
        """The entry to dispatch now (`pending` in arrival order, not empty)."""
        if not pending:
            raise ValueError("FairOrder.next needs at least one pending entry")
        self._forget_idle({entry.tenant for entry in pending})
        top = max(entry.priority for entry in pending)
        lanes: dict[str, list[QueueEntry]] = {}
        for entry in pending:
            if entry.priority == top:
                lanes.setdefault(entry.tenant, []).append(entry)
        for tenant in lanes:
            if tenant not in self._deficit:
                self._rotation.append(tenant)
                self._deficit[tenant] = 0.0
        quantum = max(max(entry.num_tokens for lane in lanes.values() for entry in lane), 1)
        while True:
            tenant = self._rotation[0]
            if tenant in lanes:
                if not self._credited:
                    self._deficit[tenant] += quantum * self._weight(tenant)
                    self._credited = True
                head = lanes[tenant][0]
                if head.num_tokens <= self._deficit[tenant]:
                    self._deficit[tenant] -= head.num_tokens
                    return head
            self._rotation.rotate(-1)
            self._credited = False

    def _forget_idle(self, waiting: set[str]) -> None:
        """A tenant with nothing queued leaves the round (and its credit with it)."""
        for tenant in [t for t in self._rotation if t not in waiting]:
            if self._rotation[0] == tenant:
                self._credited = False
            self._rotation.remove(tenant)
            del self._deficit[tenant]


def order_with_config(queue: Sequence[QueueEntry], config: BudgetConfig) -> list[QueueEntry]:
    """`order` with each tenant's weight from the config."""
    return order(queue, {entry.tenant: config.tenant(entry.tenant).weight for entry in queue})
