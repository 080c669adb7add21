"""Tenant quotas and fair ordering under two competing tenants."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.budget import QueueEntry, TenantQuotas, TokenBucket, order, order_with_config
from orchestrator.config.budget import BudgetConfig, TenantConfig, TenantQuotaConfig
from orchestrator.errors import QuotaExceeded

QUOTA = TenantQuotaConfig(prefill_tokens_per_s=1000, prefill_tokens_burst=4000, decode_tokens_per_s=100,
                          decode_tokens_burst=500, decode_usd_per_s=1e-3, decode_usd_burst=5e-3)
CONFIG = BudgetConfig(tenant_defaults=TenantConfig(quota=QUOTA))


def test_bucket_refills_at_its_rate_up_to_its_burst():
    bucket = TokenBucket(rate_per_s=10, burst=20, now_s=0.0)
    bucket.take(20, 0.0)
    assert bucket.wait_s(5, 0.0) == pytest.approx(0.5)
    assert bucket.wait_s(5, 0.5) == 0.0
    bucket.refill(100.0)
    assert bucket.level == 20


def test_over_quota_is_429_with_the_time_until_it_fits():
    quotas = TenantQuotas(CONFIG)
    quotas.admit("a", num_prompt_tokens=3000, prefill_cost_usd=0.0, now_s=0.0)
    with pytest.raises(QuotaExceeded) as info:
        quotas.admit("a", num_prompt_tokens=3000, prefill_cost_usd=0.0, now_s=0.0)
    assert info.value.retry_after_s == pytest.approx(2.0)  # 1000 left, 2000 missing at 1000/s
    assert info.value.http_status == 429 and info.value.grpc_code == "RESOURCE_EXHAUSTED" and info.value.retryable
    quotas.admit("a", num_prompt_tokens=3000, prefill_cost_usd=0.0, now_s=2.0)  # it did fit then


def test_a_refused_admission_takes_nothing():
    quotas = TenantQuotas(CONFIG)
    quotas.record("a", "decode", num_tokens=600, cost_usd=0.0, now_s=0.0)  # 100 tokens in debt
    with pytest.raises(QuotaExceeded, match="decode tokens"):
        quotas.admit("a", num_prompt_tokens=10, prefill_cost_usd=0.0, now_s=0.0)
    assert quotas.level("a", "prefill", "tokens", 0.0) == 4000
    quotas.admit("a", num_prompt_tokens=10, prefill_cost_usd=0.0, now_s=1.0)  # debt repaid at 100/s


def test_cost_rate_is_limited_like_tokens():
    quotas = TenantQuotas(CONFIG)
    quotas.record("a", "decode", num_tokens=0, cost_usd=6e-3, now_s=0.0)
    with pytest.raises(QuotaExceeded, match="decode USD") as info:
        quotas.try_acquire("a", "decode", num_tokens=0, cost_usd=0.0, now_s=0.0)
    assert info.value.retry_after_s == pytest.approx(1.0)


def test_a_request_larger_than_the_burst_waits_for_a_full_bucket_instead_of_failing_forever():
    quotas = TenantQuotas(CONFIG)
    quotas.admit("a", num_prompt_tokens=10_000, prefill_cost_usd=0.0, now_s=0.0)  # full bucket: let through
    with pytest.raises(QuotaExceeded) as info:
        quotas.admit("a", num_prompt_tokens=10_000, prefill_cost_usd=0.0, now_s=0.0)
    assert info.value.retry_after_s == pytest.approx(10.0)  # from -6000 back to a full 4000


def test_unlisted_and_unlimited_tenants():
    config = BudgetConfig(tenants={"paid": TenantConfig()}, tenant_defaults=TenantConfig(quota=QUOTA))
    quotas = TenantQuotas(config)
    for _ in range(100):
        quotas.admit("paid", num_prompt_tokens=10_000, prefill_cost_usd=1.0, now_s=0.0)
    with pytest.raises(QuotaExceeded):
        for _ in range(3):
            quotas.admit("free", num_prompt_tokens=2000, prefill_cost_usd=0.0, now_s=0.0)


def test_a_bursty_tenant_cannot_starve_a_steady_one():
    """Tenant "bursty" fires 50 requests of 1000 prompt tokens every 100 ms; tenant "steady" sends one
    of 50 tokens every 100 ms (within its own rate). Every steady request is admitted; the bursty
    tenant gets its own rate and burst, no more."""
    quotas = TenantQuotas(CONFIG)
    admitted = {"bursty": 0, "steady": 0}
    refused = {"bursty": 0, "steady": 0}
    for tick in range(100):  # 10 s
        now = tick * 0.1
        for tenant, count, tokens in (("bursty", 50, 1000), ("steady", 1, 50)):
            for _ in range(count):
                try:
                    quotas.admit(tenant, num_prompt_tokens=tokens, prefill_cost_usd=0.0, now_s=now)
                    admitted[tenant] += 1
                except QuotaExceeded as exc:
                    assert exc.retry_after_s > 0
                    refused[tenant] += 1
    assert admitted["steady"] == 100 and refused["steady"] == 0
    # burst 4000 + 10 s x 1000/s ~ 14 requests of 1000 tokens; none beyond the rate.
    assert 13 <= admitted["bursty"] <= 14


def test_fair_order_interleaves_tenants_and_respects_priority():
    queue = [QueueEntry(f"a{i}", "a") for i in range(6)] + [QueueEntry("b0", "b"), QueueEntry("b1", "b")]
    queue.append(QueueEntry("urgent", "c", priority=5))
    ids = [entry.request_id for entry in order(queue)]
    assert ids[0] == "urgent"
    assert ids[1:6] == ["a0", "b0", "a1", "b1", "a2"]


def test_fair_order_shares_tokens_not_requests():
    queue = [QueueEntry(f"big{i}", "a", num_tokens=400) for i in range(3)] + [QueueEntry(f"s{i}", "b", num_tokens=100) for i in range(8)]
    ids = [entry.request_id for entry in order(queue)]
    assert ids[:6] == ["big0", "s0", "s1", "s2", "s3", "big1"]


def test_weights_from_config_scale_the_share():
    config = BudgetConfig(tenants={"gold": TenantConfig(weight=3.0)})
    queue = [QueueEntry(f"g{i}", "gold") for i in range(6)] + [QueueEntry(f"f{i}", "free") for i in range(6)]
    ids = [entry.request_id for entry in order_with_config(queue, config)]
    assert ids[:8] == ["g0", "g1", "g2", "f0", "g3", "g4", "g5", "f1"]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("abc"), st.integers(0, 2), st.integers(1, 500)), max_size=60))
def test_order_is_a_permutation_fifo_per_tenant_and_no_tenant_waits_behind_a_flood(entries):
    queue = [QueueEntry(str(i), tenant, priority, tokens) for i, (tenant, priority, tokens) in enumerate(entries)]
    result = order(queue)
    assert sorted(e.request_id for e in result) == sorted(e.request_id for e in queue)
    priorities = [e.priority for e in result]
    assert priorities == sorted(priorities, reverse=True)
    for tenant in "abc":
        for priority in range(3):
            lane = [int(e.request_id) for e in result if e.tenant == tenant and e.priority == priority]
            assert lane == sorted(lane)
    # Within a priority, a tenant's first request is served after at most one round of the others:
    # each other tenant sends at most quantum/min_size + 1 requests first.
    for priority in range(3):
        level = [e for e in result if e.priority == priority]
        if not level:
            continue
        tenants = {e.tenant for e in level}
        quantum = max(e.num_tokens for e in level)
        for tenant in tenants:
            first = next(i for i, e in enumerate(level) if e.tenant == tenant)
            ahead = level[:first]
            for other in tenants - {tenant}:
                assert sum(e.num_tokens for e in ahead if e.tenant == other) <= 2 * quantum


def test_fair_order_alternates_tenants_one_pick_at_a_time():
    from orchestrator.budget import FairOrder

    fair = FairOrder()
    pending = [QueueEntry(f"a{i}", "a", num_tokens=10) for i in range(6)] + [QueueEntry(f"b{i}", "b", num_tokens=10)
                                                                               for i in range(2)]
    picked = []
    while pending:
        entry = fair.next(pending)
        picked.append(entry.request_id)
        pending.remove(entry)
    assert picked[:4] == ["a0", "b0", "a1", "b1"] and picked[4:] == ["a2", "a3", "a4", "a5"]


def test_fair_order_weights_and_priority():
    from orchestrator.budget import FairOrder

    fair = FairOrder(lambda tenant: 2.0 if tenant == "heavy" else 1.0)
    pending = [QueueEntry(f"h{i}", "heavy", num_tokens=10) for i in range(6)] + \
              [QueueEntry(f"l{i}", "light", num_tokens=10) for i in range(6)]
    picked = []
    for _ in range(6):
        entry = fair.next(pending)
        picked.append(entry.tenant)
        pending.remove(entry)
    assert picked.count("heavy") == 4 and picked.count("light") == 2  # twice the share
    urgent = QueueEntry("u", "light", priority=3, num_tokens=10)
    assert fair.next(pending + [urgent]) is urgent
