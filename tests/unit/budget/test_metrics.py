"""Budget metrics: what the gateway exports per request, in the default Prometheus registry."""

from __future__ import annotations

from dataclasses import replace

import pytest
from prometheus_client import REGISTRY

from orchestrator.budget import BudgetMeter, charge
from orchestrator.budget.metrics import observe_exhausted, observe_finished, observe_prefill, observe_verdict
from orchestrator.request import Budget, FinishReason

from .conftest import END, START, make_admission


def sample(name, **labels):
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_tokens_and_cost_by_tenant_and_tier_and_exhausted_reasons():
    admission = make_admission(Budget(max_output_tokens=3, max_thinking_tokens=1, start_thinking=True), num_prompt_tokens=10)
    meter = BudgetMeter(replace(admission, tenant="metrics-test"), START, END)
    before = {
        "prefill": sample("pdserve_tenant_tokens_total", tenant="metrics-test", tier="prefill"),
        "decode": sample("pdserve_tenant_tokens_total", tenant="metrics-test", tier="decode"),
        "usd": sample("pdserve_tenant_cost_usd_total", tenant="metrics-test", tier="decode"),
        "length": sample("pdserve_budget_exhausted_total", reason="length"),
        "thinking": sample("pdserve_budget_exhausted_total", reason="thinking_budget"),
        "refused": sample("pdserve_budget_exhausted_total", reason="refused"),
    }
    observe_prefill(meter)
    for token in (5, END[0], END[1]):
        observe_verdict(meter, charge(meter, [token], 0.1))
    observe_finished(meter)
    observe_exhausted("refused")
    assert sample("pdserve_tenant_tokens_total", tenant="metrics-test", tier="prefill") - before["prefill"] == 10
    assert sample("pdserve_tenant_tokens_total", tenant="metrics-test", tier="decode") - before["decode"] == 3
    assert sample("pdserve_tenant_cost_usd_total", tenant="metrics-test", tier="decode") - before["usd"] == pytest.approx(12e-6)
    assert sample("pdserve_budget_exhausted_total", reason="length") - before["length"] == 1
    assert sample("pdserve_budget_exhausted_total", reason="thinking_budget") - before["thinking"] == 1
    assert sample("pdserve_budget_exhausted_total", reason="refused") - before["refused"] == 1
    assert meter.finish_reason is FinishReason.LENGTH
