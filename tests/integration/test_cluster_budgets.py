"""Test-time-compute budgets on the real cluster: thinking caps inside vLLM, deadlines wherever the request
is (prefill, transfer, decode) freeing the blocks on both tiers, cost and total-token caps, admission
refusals, tenant quotas, and fair order between two competing tenants.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from clusters import wait_all_blocks_free
from pdserve import AsyncClient, Client, FinishReason, InvalidRequest, QuotaExceeded

pytestmark = [pytest.mark.ray, pytest.mark.vllm, pytest.mark.slow]

QUESTION = [{"role": "user", "content": "What is 17 times 23?"}]


@pytest.fixture(scope="module")
def tokenizer(model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


def _split_thinking(token_ids: list[int], end_ids: list[int]) -> tuple[list[int] | None, list[int]]:
    for i in range(len(token_ids) - len(end_ids) + 1):
        if token_ids[i:i + len(end_ids)] == end_ids:
            return token_ids[:i], token_ids[i + len(end_ids):]
    return None, token_ids


def test_a_thinking_budget_of_8_is_forced_closed_inside_the_engine(serving, tokenizer):
    end_ids = tokenizer.encode("</think>", add_special_tokens=False)
    with Client(serving.grpc_target, timeout_s=120) as client:
        free = client.chat(QUESTION, max_tokens=40, temperature=0, budget={"start_thinking": True})
        capped = client.chat(QUESTION, max_tokens=40, temperature=0,
                             budget={"start_thinking": True, "max_thinking_tokens": 8})
    free_thinking, _ = _split_thinking(list(free.token_ids), end_ids)
    assert free_thinking is None or len(free_thinking) > 8  # without the cap the model thinks longer
    thinking, answer = _split_thinking(list(capped.token_ids), end_ids)
    assert thinking is not None, capped.text
    assert len(thinking) <= 8 and answer  # the end delimiter was forced; the answer continues
    assert capped.usage.thinking_tokens == len(thinking)
    assert capped.finish_reason in (FinishReason.LENGTH, FinishReason.STOP)


def test_a_deadline_during_decode_stops_there_with_what_was_produced(serving):
    with Client(serving.grpc_target, timeout_s=120) as client:
        answer = client.generate("Once upon a time", max_tokens=1500, ignore_eos=True, temperature=0,
                                 budget={"deadline_ms": 2000})
    assert answer.finish_reason is FinishReason.DEADLINE
    assert 1 < answer.usage.output_tokens < 1500 and answer.text
    assert answer.usage.decode_ms > 0
    assert _all_free(serving)


def test_a_deadline_during_prefill_stops_it_and_frees_both_tiers(serving, tokenizer):
    prompt = tokenizer.encode(" ".join(["The quick brown fox jumps over the lazy dog."] * 170))[:1900]
    with Client(serving.grpc_target, timeout_s=120) as client:
        answer = client.generate(prompt, max_tokens=16, temperature=0, budget={"deadline_ms": 150})
    assert answer.finish_reason is FinishReason.DEADLINE
    assert answer.usage.output_tokens == 0 and answer.usage.prefill_ms > 0 and answer.usage.decode_ms == 0
    assert _all_free(serving)


def test_a_deadline_during_the_kv_transfer_frees_both_tiers(serving):
    import ray

    from clusters import KV_TIMEOUT_S, wait_idle

    prompt = "Deadline in transfer: the river wound through the valley"
    wait_idle(serving)  # an earlier test's aborted prefill may still hold the prefill engine's step
    with Client(serving.grpc_target, timeout_s=120) as client:
        # The prefill time of such a prompt on an idle engine (the first probe may still queue behind an
        # earlier test's aborted step, which the engine finishes before it takes the next).
        probe = [client.generate(f"{prompt} {i}", max_tokens=2, temperature=0) for i in range(2)][-1]
        # Past the prefill and its first token, well before the decode worker would give up on the KV.
        deadline_ms = probe.usage.queue_ms + probe.usage.prefill_ms + 0.4 * KV_TIMEOUT_S * 1000
        assert deadline_ms < 0.8 * KV_TIMEOUT_S * 1000, probe.usage
        ray.get(serving.worker("prefill")["handle"].inject_kv_fault.remote("drop"))  # the decode worker waits for KV
        answer = client.generate(prompt + " again", max_tokens=16, temperature=0, budget={"deadline_ms": deadline_ms})
    assert answer.finish_reason is FinishReason.DEADLINE
    assert answer.usage.output_tokens == 1, answer.usage  # the prefill's first token; the rest never came
    assert answer.usage.transfer_ms > 0 and answer.usage.decode_ms == 0
    assert _all_free(serving)


def test_cost_and_total_token_budgets_stop_the_request_within_them(serving):
    from orchestrator.config.budget import PricingConfig

    pricing = PricingConfig()
    with Client(serving.grpc_target, timeout_s=120) as client:
        total = client.generate("Count: one, two, three", max_tokens=100, ignore_eos=True,
                                budget={"max_total_tokens": 20})
        cap = total.usage.prompt_tokens * pricing.prefill_usd_per_token + 5.5 * pricing.decode_usd_per_token
        cost = client.generate("Count: one, two, three", max_tokens=100, ignore_eos=True,
                               budget={"max_cost_usd": cap})
    assert total.finish_reason is FinishReason.TOTAL_BUDGET
    assert total.usage.prompt_tokens + total.usage.output_tokens == 20
    assert cost.finish_reason is FinishReason.COST_BUDGET and cost.usage.cost_usd <= cap
    assert cost.usage.output_tokens == 5


def test_admission_refuses_what_cannot_fit_before_any_compute(serving):
    with Client(serving.grpc_target, timeout_s=60) as client:
        with pytest.raises(InvalidRequest, match="max_total_tokens"):
            client.generate("a prompt of several tokens here", max_tokens=8, budget={"max_total_tokens": 3})
        with pytest.raises(InvalidRequest, match="max_cost_usd"):
            client.generate("a prompt of several tokens here", max_tokens=8, budget={"max_cost_usd": 1e-12})


@pytest.fixture(scope="module")
def tenants_gateway(serving):
    """A second gateway on the same workers with two API-key tenants, a tight prompt-token quota for a
    third, and room for one request at a time (so requests queue and the fair order decides)."""
    from orchestrator.api.auth import ApiKeys
    from orchestrator.api.servers import start_servers
    from orchestrator.config import with_overrides
    from orchestrator.gateway.service import Gateway

    async def start():
        cluster = serving.cluster
        config = with_overrides(cluster.config, {
            "engine.max_num_seqs": 1,
            "budget.tenants": {"burst": {}, "trickle": {"max_priority": 10},
                               "metered": {"quota": {"prefill_tokens_per_s": 0.5, "prefill_tokens_burst": 12.0}}},
        })
        gateway = Gateway(cluster.controller, config, cluster.gateway.tokenizer, cluster.gateway.model_id)
        await gateway.start()
        keys = ApiKeys({"key-burst": "burst", "key-trickle": "trickle", "key-metered": "metered"})
        servers = await start_servers(gateway, config.server, api_keys=keys)
        serving.extra_stops += [gateway.stop, servers.stop]
        return servers.grpc_target

    return serving.loop.run(start())


def test_one_tenants_burst_does_not_starve_another(tenants_gateway):
    finished: list[str] = []

    async def one(client: AsyncClient, name: str, delay_s: float) -> None:
        await asyncio.sleep(delay_s)
        await client.generate(f"Request {name}: tell me about rivers", max_tokens=12, ignore_eos=True)
        finished.append(name)

    async def run() -> None:
        async with AsyncClient(tenants_gateway, api_key="key-burst", timeout_s=300) as burst, \
                AsyncClient(tenants_gateway, api_key="key-trickle", timeout_s=300) as trickle:
            await asyncio.gather(*(one(burst, f"burst-{i}", 0.0) for i in range(8)),
                                 one(trickle, "trickle-0", 0.5), one(trickle, "trickle-1", 0.6))

    asyncio.run(run())
    # One slot, eight burst requests queued first: the fair order still serves the trickle tenant early.
    assert max(finished.index("trickle-0"), finished.index("trickle-1")) < 6, finished


def test_priority_orders_the_queue(tenants_gateway):
    finished: list[str] = []

    async def one(client: AsyncClient, name: str, delay_s: float, priority: int = 0) -> None:
        await asyncio.sleep(delay_s)
        await client.generate(f"Priority {name}: tell me about rivers", max_tokens=12, ignore_eos=True,
                              budget={"priority": priority})
        finished.append(name)

    async def run() -> None:
        async with AsyncClient(tenants_gateway, api_key="key-trickle", timeout_s=300) as client:
            await asyncio.gather(*(one(client, f"normal-{i}", 0.0) for i in range(5)),
                                 one(client, "urgent", 0.5, priority=5))

    asyncio.run(run())
    assert finished.index("urgent") <= 2, finished


def test_over_quota_is_refused_with_a_retry_hint(tenants_gateway):
    with Client(tenants_gateway, api_key="key-metered", timeout_s=60) as client:
        client.generate("One two three four five six seven eight", max_tokens=2)  # 8 of the 12-token burst
        started = time.monotonic()
        with pytest.raises(QuotaExceeded) as refused:
            client.generate("One two three four five six seven eight", max_tokens=2)
        assert time.monotonic() - started < 10  # refused at once, not queued
    assert refused.value.retry_after_s and refused.value.retry_after_s > 0
    assert "quota" in str(refused.value)


def _all_free(serving) -> bool:
    counts = wait_all_blocks_free(serving)
    assert all(free == total for free, total in counts.values()), counts
    return True
