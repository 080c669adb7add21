"""Concurrent requests through the disaggregated path are token-identical to one plain vLLM engine.

Run on the session's cluster in the default dtype (float32 on the CPU). In bfloat16, vLLM's CPU kernels
are not batch-invariant, so one plain engine alone already answers some prompts differently when they
run concurrently instead of one by one (measured here: 1 of these 8 prompts, at its third token; in
float32, none). In float32 the only thing left that could change a token is pdserve itself: KV blocks
written to the wrong request or place, a token lost or repeated between the tiers, a stream crossed
with another.
"""

from __future__ import annotations

import asyncio

import pytest

from identity_prompts import build_prompts
from pdserve import AsyncClient

pytestmark = [pytest.mark.ray, pytest.mark.vllm, pytest.mark.slow]

MAX_TOKENS = 12
LENGTHS = [1, 31, 32, 33, 64, 65, 129, 257, 385, 513, 600]



@pytest.fixture(scope="module")
def prompts(model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return tokenizer, build_prompts(tokenizer)


def _concurrent(target: str, prompts: list[list[int]]) -> list[list[int]]:
    async def run() -> list[list[int]]:
        async with AsyncClient(target) as client:
            answers = await asyncio.gather(*(client.generate(p, max_tokens=MAX_TOKENS, temperature=0) for p in prompts))
        assert all(a.usage.prefill_worker and not a.usage.kv_recomputed for a in answers)
        return [list(a.token_ids) for a in answers]

    return asyncio.run(run())


@pytest.mark.parametrize("transport", ["zmq", "grpc"])
def test_concurrent_requests_are_token_identical_to_one_engine_running_each_alone(
        serving, reference_engine, prompts, transport):
    tokenizer, by_length = prompts
    marker = tokenizer.encode(f" ({transport})")  # fresh prompts for each transport: nothing cached yet
    batch = [marker + by_length[n] for n in LENGTHS]
    target = serving.grpc_target if transport == "zmq" else _grpc_gateway(serving)
    got = _concurrent(target, batch)
    expected = [reference_engine.greedy(p, MAX_TOKENS) for p in batch]
    mismatches = [f"{len(p)} tokens: got {g}, expected {e}" for p, g, e in zip(batch, got, expected) if g != e]
    assert not mismatches


def _grpc_gateway(serving) -> str:
    """A second gateway on the same workers whose requests move their KV over gRPC streams."""
    from orchestrator.api.servers import start_servers
    from orchestrator.config import with_overrides
    from orchestrator.gateway.service import Gateway

    async def start():
        cluster = serving.cluster
        config = with_overrides(cluster.config, {"kv.transport": "grpc"})
        gateway = Gateway(cluster.controller, config, cluster.gateway.tokenizer, cluster.gateway.model_id)
        await gateway.start()
        servers = await start_servers(gateway, config.server)
        serving.extra_stops.append(servers.stop)
        serving.extra_stops.append(gateway.stop)
        return servers.grpc_target

    return serving.loop.run(start())
