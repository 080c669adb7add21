"""Conditional disaggregation end to end on timing-engine workers (real Ray actors, real KV bytes): with the
prefill worker backed up by a burst of long prompts, the router prefills some of them on the decode worker
itself, from the costs the gateway measured; each such decision and its reason reach the usage, the
metric and the answer is the one the prefill pool gives."""

from __future__ import annotations

import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from clusters import start_serving
from pdserve import Client

pytestmark = [pytest.mark.ray]

PROFILE = Path(__file__).resolve().parents[2] / "orchestrator" / "data" / "profiles" / "smollm2-135m-cpu-synthetic.yaml"
PROMPT_TOKENS, OUTPUT_TOKENS = 256, 8


@pytest.fixture(scope="module")
def conditional_serving(ray_session, loop_thread):
    serving = start_serving(loop_thread, "smollm2-135m-instruct", **{
        "engine.kind": "timing", "engine.profile": str(PROFILE), "pools.cpus_per_worker": 0.1,
        "router.conditional_prefill": True, "router.max_local_prefill_stall_ms": 100.0})
    try:
        yield serving
    finally:
        serving.stop()


def _prompts(count: int, seed: int) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(256, 8192, PROMPT_TOKENS).tolist() for _ in range(count)]


def _placements(serving) -> dict[str, float]:
    with urllib.request.urlopen(f"{serving.http_url}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {line.split('where="')[1].split('"')[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines() if line.startswith("pdserve_prefill_placement_total{")}


def test_a_backed_up_prefill_pool_hands_prompts_to_the_decode_worker(conditional_serving):
    with Client(conditional_serving.grpc_target) as client:
        for prompt in _prompts(3, seed=1):  # one at a time: the pool is free, so this measures its cost
            answer = client.generate(prompt, max_tokens=OUTPUT_TOKENS, temperature=0, ignore_eos=True)
            assert answer.usage.prefill_worker and not answer.usage.prefill_skipped
            assert answer.usage.prefill_reason.startswith("prefill on the least-loaded worker")
        burst = _prompts(8, seed=2)
        with ThreadPoolExecutor(len(burst)) as pool:
            answers = list(pool.map(lambda p: client.generate(p, max_tokens=OUTPUT_TOKENS, temperature=0,
                                                              ignore_eos=True), burst))
        local = [a for a in answers if a.usage.prefill_skipped]
        assert local, [a.usage.prefill_reason for a in answers]  # the queue made some of them cheaper at home
        assert len(local) < len(answers)  # and not all: the first ones found the pool free
        for answer in local:
            assert not answer.usage.prefill_worker
            assert answer.usage.prefill_reason.startswith("prefill on the decode worker: first token in ~")
            assert "from the prefill pool" in answer.usage.prefill_reason
        # The answers are the ones the pool's prefills give: every burst answer against its pool-served twin
        # (the same prompt, served when nothing else ran; the router may then skip the prefill for the prefix).
        for prompt, answer in zip(burst, answers):
            again = client.generate(prompt, max_tokens=OUTPUT_TOKENS, temperature=0, ignore_eos=True)
            assert again.token_ids == answer.token_ids and len(answer.token_ids) == OUTPUT_TOKENS
    placements = _placements(conditional_serving)
    assert placements.get("decode_worker", 0) >= len(local) and placements.get("prefill_pool", 0) >= 3
