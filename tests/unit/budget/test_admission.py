"""Admission: the effective budget, and refusals that say which limit and what to change."""

from __future__ import annotations

import math

import pytest

from orchestrator.budget import AdmissionRequest, admit
from orchestrator.config.budget import BudgetLimitsConfig, TenantConfig
from orchestrator.errors import BudgetRefused
from orchestrator.request import Budget

from .conftest import PRICING, make_admission


def test_unset_fields_take_tenant_defaults_and_set_fields_are_clamped(limited_tenant):
    admission = make_admission(Budget(max_output_tokens=10_000, max_thinking_tokens=500, priority=9), tenant=limited_tenant)
    assert admission.budget.max_output_tokens == 500  # clamped to the maximum
    assert admission.budget.max_thinking_tokens == 64
    assert admission.budget.deadline_ms == 30_000  # default
    assert admission.budget.max_cost_usd == 0.01  # unset, no default: the maximum applies
    assert admission.priority == 3
    assert admission.deadline_s == pytest.approx(30.0)


def test_output_limit_is_the_tightest_of_sampling_output_and_total_room():
    admission = make_admission(Budget(max_output_tokens=50, max_total_tokens=40), num_prompt_tokens=10, max_tokens=100)
    assert admission.max_output_tokens == 30
    assert make_admission(Budget(), max_tokens=None).max_output_tokens is None


def test_no_deadline_is_infinitely_far():
    assert make_admission(Budget()).deadline_s == math.inf


def test_prompt_over_total_budget_is_refused_with_the_numbers_to_change():
    with pytest.raises(BudgetRefused, match=r"max_total_tokens.*at least 11"):
        make_admission(Budget(max_total_tokens=10), num_prompt_tokens=10)


def test_prefill_cost_alone_over_the_cost_budget_is_refused():
    # 1000 prompt tokens x $1e-6 = $0.001 of prefill.
    with pytest.raises(BudgetRefused, match="max_cost_usd"):
        make_admission(Budget(max_cost_usd=0.0009), num_prompt_tokens=1000)
    assert make_admission(Budget(max_cost_usd=0.0011), num_prompt_tokens=1000).prefill_cost_usd == pytest.approx(0.001)


def test_cached_prompt_tokens_are_not_charged():
    admission = admit(AdmissionRequest("t", 1000, num_cached_tokens=900), Budget(max_cost_usd=0.0002), TenantConfig(),
                      PRICING, now_s=0.0)
    assert admission.prefill_cost_usd == pytest.approx(100 * PRICING.prefill_usd_per_token)


def test_prefill_energy_alone_over_the_energy_budget_is_refused():
    with pytest.raises(BudgetRefused, match="max_energy_j"):
        make_admission(Budget(max_energy_j=99.0), num_prompt_tokens=1000)  # 1000 x 0.1 J


def test_deadline_shorter_than_the_predicted_prefill_is_refused():
    with pytest.raises(BudgetRefused, match=r"deadline_ms.*predicted prefill"):
        make_admission(Budget(deadline_ms=50), predicted_prefill_ms=80.0)
    assert make_admission(Budget(deadline_ms=100), predicted_prefill_ms=80.0).deadline_s == pytest.approx(0.1)


def test_tenant_maximum_applies_before_the_refusal_checks():
    tenant = TenantConfig(maximums=BudgetLimitsConfig(max_total_tokens=100))
    with pytest.raises(BudgetRefused, match="max_total_tokens is 100"):
        make_admission(Budget(max_total_tokens=10_000), num_prompt_tokens=150, tenant=tenant)


@pytest.mark.parametrize("budget", [Budget(max_output_tokens=0), Budget(deadline_ms=-1), Budget(max_cost_usd=0.0),
                                    Budget(min_thinking_tokens=10, max_thinking_tokens=5)])
def test_nonsense_budgets_are_refused(budget):
    with pytest.raises(BudgetRefused):
        make_admission(budget)


def test_minimum_thinking_is_clamped_to_the_tenant_thinking_maximum():
    tenant = TenantConfig(maximums=BudgetLimitsConfig(max_thinking_tokens=16))
    assert make_admission(Budget(min_thinking_tokens=32), tenant=tenant).budget.min_thinking_tokens == 16


def test_refusal_is_a_caller_error_mapped_to_400():
    with pytest.raises(BudgetRefused) as info:
        make_admission(Budget(max_total_tokens=5), num_prompt_tokens=5)
    assert info.value.caller and info.value.http_status == 400 and info.value.grpc_code == "INVALID_ARGUMENT"
