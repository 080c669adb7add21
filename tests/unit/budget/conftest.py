"""Shared factories of the budget tests: delimiters shaped like SmolLM2's, configs, admissions."""

from __future__ import annotations

import pytest

from orchestrator.budget import AdmissionRequest, admit
from orchestrator.config.budget import BudgetConfig, BudgetLimitsConfig, PricingConfig, TenantConfig
from orchestrator.request import Budget

# SmolLM2's tokenizer: "<think>" = "<" "think" ">", "</think>" = "</" "think" ">" (they share two tokens).
START = (44, 17400, 46)
END = (9617, 17400, 46)
NEWLINE = (198,)
WAIT = (22297,)
EOS = 2
FILLER = (5, 6, 7, 8)

PRICING = PricingConfig(prefill_usd_per_token=1e-6, decode_usd_per_token=4e-6, prefill_j_per_token=0.1, decode_j_per_token=1.0)


def reference_thinking_count(tokens, *, thinking=False):
    """Thinking tokens of a whole sequence by a plain left-to-right scan (the tracker's oracle). A span
    still open at the end does not count a tail that could be the start of the end delimiter."""
    count, i, open_run = 0, 0, 0
    while i < len(tokens):
        delimiter = END if thinking else START
        if tuple(tokens[i:i + len(delimiter)]) == delimiter:
            thinking = not thinking
            i += len(delimiter)
            open_run = 0
            continue
        if thinking:
            count += 1
            open_run += 1
        i += 1
    if thinking:
        tail = tuple(tokens[len(tokens) - min(open_run, len(END) - 1):])
        count -= max((k for k in range(len(tail) + 1) if tail[len(tail) - k:] == END[:k]), default=0)
    return count


def make_admission(budget=Budget(), *, num_prompt_tokens=10, tenant=None, max_tokens=None, now_s=0.0,
                   predicted_prefill_ms=None, pricing=PRICING):
    return admit(
        AdmissionRequest("t", num_prompt_tokens, max_tokens=max_tokens), budget, tenant or TenantConfig(), pricing,
        now_s=now_s, predicted_prefill_ms=predicted_prefill_ms,
    )


@pytest.fixture
def limited_tenant():
    return TenantConfig(
        defaults=BudgetLimitsConfig(max_output_tokens=100, deadline_ms=30_000),
        maximums=BudgetLimitsConfig(max_output_tokens=500, max_thinking_tokens=64, max_cost_usd=0.01),
        max_priority=3,
    )


@pytest.fixture
def budget_config():
    return BudgetConfig(pricing=PRICING)
