"""No request ever exceeds any dimension of its budget: a property test through the whole system.

Random prompts and budgets (thinking caps with start-in-thinking, output and total tokens, deadlines,
cost and energy caps, any subset of them) go through the gRPC API to a cluster; each answer is either an
admission refusal that says why (before any compute) or a stream whose usage stays within every limit
it set: thinking tokens, output tokens, prompt + output, cost, energy, and wall time (the deadline,
within one decode step). Many examples on timing-engine workers (fast), a sample on real vLLM.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clusters import start_serving
from orchestrator.config.budget import PricingConfig
from pdserve import Client, FinishReason, InvalidRequest

pytestmark = [pytest.mark.ray, pytest.mark.slow]

PROFILE = Path(__file__).resolve().parents[2] / "orchestrator" / "data" / "profiles" / "smollm2-135m-cpu.yaml"
PRICING = PricingConfig()
SLACK_MS = 150.0  # the gateway's own time around the last engine step (RPC, scheduling on a loaded CI machine)


@pytest.fixture(scope="module")
def timing_target(ray_session, loop_thread):
    serving = start_serving(loop_thread, "smollm2-135m-instruct", **{
        "engine.kind": "timing", "engine.profile": str(PROFILE), "pools.cpus_per_worker": 0.1})
    try:
        yield serving.grpc_target
    finally:
        serving.stop()


@st.composite
def cases(draw, max_prompt: int = 300):
    prompt = draw(st.lists(st.integers(256, 8191), min_size=1, max_size=max_prompt))
    max_tokens = draw(st.integers(1, 120))
    budget = {}
    if draw(st.booleans()):
        budget["max_output_tokens"] = draw(st.integers(1, 120))
    if draw(st.booleans()):
        budget["max_total_tokens"] = len(prompt) + draw(st.integers(-3, 120))
    if draw(st.booleans()):
        budget["deadline_ms"] = draw(st.floats(20, 3000))
    if draw(st.booleans()):  # room for the prompt's prefill (or not) and a few decode tokens
        budget["max_cost_usd"] = (len(prompt) * PRICING.prefill_usd_per_token
                                  + draw(st.floats(-2, 60)) * PRICING.decode_usd_per_token)
    if draw(st.booleans()):
        budget["max_energy_j"] = len(prompt) * PRICING.prefill_j_per_token + draw(st.floats(-2, 60)) * PRICING.decode_j_per_token
    if draw(st.booleans()):
        budget["start_thinking"] = True
        budget["max_thinking_tokens"] = draw(st.integers(0, 40))
    return prompt, max_tokens, budget


def check_within_budget(client: Client, prompt: list[int], max_tokens: int, budget: dict) -> None:
    started = time.monotonic()
    try:
        answer = client.generate(prompt, max_tokens=max_tokens, budget=budget, ignore_eos=True)
    except InvalidRequest as refused:  # admission: justified, before any compute
        reason = str(refused)
        assert any(name in reason for name in ("max_total_tokens", "max_cost_usd", "max_energy_j", "deadline_ms")), reason
        return
    wall_ms = (time.monotonic() - started) * 1000
    usage = answer.usage
    assert usage.output_tokens == len(answer.token_ids) <= max_tokens
    if "max_output_tokens" in budget:
        assert usage.output_tokens <= budget["max_output_tokens"]
    if "max_total_tokens" in budget:
        assert usage.prompt_tokens + usage.output_tokens <= budget["max_total_tokens"]
    if "max_cost_usd" in budget:
        assert usage.cost_usd <= budget["max_cost_usd"] * (1 + 1e-9)
    if "max_energy_j" in budget:
        assert usage.energy_j <= budget["max_energy_j"] * (1 + 1e-9)
    if "max_thinking_tokens" in budget:
        assert usage.thinking_tokens <= budget["max_thinking_tokens"]
    if "deadline_ms" in budget:
        server_ms = usage.queue_ms + usage.prefill_ms + usage.transfer_ms + usage.decode_ms
        step_ms = usage.decode_ms / max(usage.output_tokens - 1, 1) if usage.output_tokens > 1 else usage.prefill_ms
        assert server_ms <= budget["deadline_ms"] + step_ms + SLACK_MS, (usage, budget)
        assert wall_ms >= server_ms - SLACK_MS  # the client saw at least what the server accounted
    assert answer.finish_reason in (FinishReason.LENGTH, FinishReason.STOP, FinishReason.TOTAL_BUDGET,
                                    FinishReason.COST_BUDGET, FinishReason.DEADLINE, FinishReason.THINKING_BUDGET)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(case=cases())
def test_timing_engine_requests_never_exceed_their_budget(timing_target, case):
    prompt, max_tokens, budget = case
    with Client(timing_target, timeout_s=120) as client:
        check_within_budget(client, prompt, max_tokens, budget)


@pytest.mark.vllm
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(case=cases(max_prompt=120))
def test_real_vllm_requests_never_exceed_their_budget(serving, case):
    prompt, max_tokens, budget = case
    with Client(serving.grpc_target, timeout_s=120) as client:
        check_within_budget(client, prompt, max_tokens, budget)
