"""Scale-down under load on real vLLM workers: the drained workers finish what they hold (a prefill
worker until its KV handoffs are acknowledged), get nothing new, and only then leave. No request fails.
"""

from __future__ import annotations

import asyncio
import time

import pytest
import ray

from pdserve import AsyncClient, FinishReason

pytestmark = [pytest.mark.ray, pytest.mark.vllm, pytest.mark.slow]


def _wait_replicas(serving, want: dict[str, int], timeout_s: float = 600) -> dict[str, int]:
    deadline = time.monotonic() + timeout_s
    while True:
        replicas = ray.get(serving.cluster.controller.replicas.remote())
        alive = {tier: sum(1 for w in serving.workers() if w["state"] != "failed"
                           and (w["tier"] == tier or (tier == "decode" and w["tier"] == "colocated")))
                 for tier in want}
        if replicas == want and alive == want or time.monotonic() > deadline:
            return replicas
        time.sleep(1)


def test_draining_both_tiers_under_load_fails_no_request(serving):
    controller = serving.cluster.controller
    ray.get([controller.scale_to.remote("prefill", 2), controller.scale_to.remote("decode", 2)])
    assert _wait_replicas(serving, {"prefill": 2, "decode": 2}) == {"prefill": 2, "decode": 2}
    before = {w["worker_id"] for w in serving.workers()}

    async def load() -> list:
        async with AsyncClient(serving.grpc_target, timeout_s=600) as client:
            async def one(i: int):
                await asyncio.sleep(0.15 * i)
                return await client.generate(f"Drain check {i}: once upon a time", max_tokens=48, ignore_eos=True)

            tasks = [asyncio.ensure_future(one(i)) for i in range(24)]
            await asyncio.sleep(1.5)  # requests are in flight on all four workers: now shrink both tiers
            await asyncio.gather(controller.scale_to.remote("prefill", 1), controller.scale_to.remote("decode", 1))
            return await asyncio.gather(*tasks)

    answers = asyncio.run(load())
    assert all(a.finish_reason is FinishReason.LENGTH and a.usage.output_tokens == 48 for a in answers)
    assert _wait_replicas(serving, {"prefill": 1, "decode": 1}) == {"prefill": 1, "decode": 1}
    after = {w["worker_id"] for w in serving.workers()}
    assert len(before - after) == 2  # one worker of each tier drained and removed
    used = {a.usage.decode_worker for a in answers} | {a.usage.prefill_worker for a in answers}
    assert used & (before - after), "the drained workers served part of the load before they left"
