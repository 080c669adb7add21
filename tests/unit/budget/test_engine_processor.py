"""The vLLM logits processor on its own (no engine): batch bookkeeping and what it does to logits."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
vllm = pytest.importorskip("vllm")

from vllm import SamplingParams  # noqa: E402
from vllm.v1.sample.logits_processor import BatchUpdate, MoveDirectionality  # noqa: E402

from orchestrator.request import Budget  # noqa: E402
from workers.engine.thinking import ThinkingBudgetLogitsProcessor, thinking_sampling_args  # noqa: E402

from .conftest import END, NEWLINE, START, WAIT  # noqa: E402

VOCAB = 49_152  # SmolLM2's


def params(budget):
    return SamplingParams(max_tokens=50, extra_args=thinking_sampling_args(budget, START, END, WAIT, close_prefix_ids=NEWLINE) or None)


def update(processor, size, added=(), removed=(), moved=()):
    processor.update_state(BatchUpdate(batch_size=size, removed=list(removed), added=list(added), moved=list(moved)))


def sampled(processor, size, preferred=5):
    logits = torch.zeros(size, VOCAB)
    logits[:, preferred] = 1.0
    out = processor.apply(logits)
    return [int(row.argmax()) for row in out], out


def test_no_budget_means_no_extra_args_and_untouched_rows():
    assert thinking_sampling_args(Budget(), START, END, WAIT) == {}
    processor = ThinkingBudgetLogitsProcessor(None, torch.device("cpu"), False)
    update(processor, 1, added=[(0, params(Budget()), [1, 2], [])])
    tokens, logits = sampled(processor, 1)
    assert tokens == [5] and torch.isfinite(logits).all()


def test_rows_are_forced_per_request_and_follow_moves():
    processor = ThinkingBudgetLogitsProcessor(None, torch.device("cpu"), False)
    outputs = {"capped": [], "free": []}  # vLLM's live lists of generated tokens, one per request
    rows = {"capped": 0, "free": 1}
    update(processor, 2, added=[(0, params(Budget(max_thinking_tokens=2)), [1, *START], outputs["capped"]),
                                (1, params(Budget(max_thinking_tokens=100)), [1, *START], outputs["free"])])
    expected = [5, *NEWLINE, *END, 5, 5]  # 1 thinking token + the newline, the delimiter, then the answer
    for step, want in enumerate(expected):
        tokens, _ = sampled(processor, 2)
        assert (tokens[rows["capped"]], tokens[rows["free"]]) == (want, 5)
        for name, row in rows.items():
            outputs[name].append(tokens[row])
        if step == 1:  # vLLM condenses its persistent batch: the two requests swap rows
            update(processor, 2, moved=[(0, 1, MoveDirectionality.SWAP)])
            rows = {"capped": 1, "free": 0}


def test_a_preempted_request_comes_back_with_its_tokens_counted():
    processor = ThinkingBudgetLogitsProcessor(None, torch.device("cpu"), False)
    update(processor, 1, added=[(0, params(Budget(max_thinking_tokens=3, start_thinking=True)), [1], [5, 5])])
    tokens, _ = sampled(processor, 1)
    assert tokens == [NEWLINE[0]]  # 2 already generated + the newline = 3


def test_below_the_minimum_an_attempted_close_is_replaced_by_wait():
    processor = ThinkingBudgetLogitsProcessor(None, torch.device("cpu"), False)
    update(processor, 1, added=[(0, params(Budget(min_thinking_tokens=2, start_thinking=True)), [1], [])])
    tokens, _ = sampled(processor, 1, preferred=END[0])
    assert tokens == list(WAIT[:1])


def test_malformed_arguments_are_refused_at_the_engine_boundary():
    bad = SamplingParams(extra_args={"pdserve_thinking": {"start_ids": [], "end_ids": list(END)}})
    with pytest.raises(ValueError):
        ThinkingBudgetLogitsProcessor.validate_params(bad)
