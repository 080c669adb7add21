"""Admission: resolve a request's effective budget and refuse what cannot fit, before any compute.

`admit(request, budget, tenant, pricing, now_s=..., predicted_prefill_ms=...)` is pure. It
1. resolves the effective budget: each field the request left unset takes the tenant's default, each
   field it set is clamped to the tenant's maximum (priority to the tenant's `max_priority`);
2. prices the prompt on the prefill tier (cost and energy);
3. refuses, with `BudgetRefused` and a message that says what to change, a request whose prompt alone
   leaves no room for one output token under `max_total_tokens`, whose prefill alone costs more than
   `max_cost_usd` or `max_energy_j`, or whose deadline is shorter than the predicted prefill time;
4. returns an `Admission`: the effective budget, the absolute deadline, how many tokens the engine may
   generate at most, and the prefill charge. `BudgetMeter(admission, ...)` takes it from there.

Tenant quotas (`TenantQuotas`) are checked separately by the caller, after admission.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

from orchestrator.config.budget import BudgetLimitsConfig, PricingConfig, TenantConfig
from orchestrator.errors import BudgetRefused
from orchestrator.request import Budget

_LIMIT_FIELDS = tuple(f.name for f in fields(Budget) if f.name in BudgetLimitsConfig.model_fields)


@dataclass(frozen=True)
class AdmissionRequest:
    """What admission needs to know about a request (after tokenization)."""

    tenant: str
    num_prompt_tokens: int
    num_cached_tokens: int = 0  # prompt tokens already in a KV cache (not computed again), if known
    max_tokens: int | None = None  # the sampling limit (`Sampling.max_tokens`), if any


@dataclass(frozen=True)
class Admission:
    """An admitted request's contract, as the meter and the engine need it."""

    tenant: str
    budget: Budget  # effective: defaults filled, clamped to the tenant's maximums
    num_prompt_tokens: int
    num_cached_tokens: int
    max_output_tokens: int | None  # the most tokens the engine may generate (None: no budget limit)
    admitted_s: float
    deadline_s: float  # absolute, on the caller's clock (math.inf: none)
    pricing: PricingConfig
    prefill_cost_usd: float
    prefill_energy_j: float

    @property
    def priority(self) -> int:
        return self.budget.priority


def resolve_budget(budget: Budget, tenant: TenantConfig) -> Budget:
    """The effective budget: unset fields from the tenant's defaults, set ones clamped to its maximums."""
    values = {}
    for name in _LIMIT_FIELDS:
        value = getattr(budget, name)
        if value is None:
            value = getattr(tenant.defaults, name)
        maximum = getattr(tenant.maximums, name)
        if maximum is not None:
            value = maximum if value is None else min(value, maximum)
        values[name] = value
    if values["min_thinking_tokens"] is not None and values["max_thinking_tokens"] is not None:
        values["min_thinking_tokens"] = min(values["min_thinking_tokens"], values["max_thinking_tokens"])
    return replace(budget, priority=min(budget.priority, tenant.max_priority), **values)


def compute_prefill_charge(num_prompt_tokens: int, num_cached_tokens: int, pricing: PricingConfig) -> tuple[float, float]:
    """(USD, J) of computing the uncached part of a prompt on the prefill tier."""
    computed = max(num_prompt_tokens - num_cached_tokens, 0)
    return computed * pricing.prefill_usd_per_token, computed * pricing.prefill_j_per_token


def admit(
    request: AdmissionRequest,
    budget: Budget,
    tenant: TenantConfig,
    pricing: PricingConfig,
    *,
    now_s: float,
    predicted_prefill_ms: float | None = None,
) -> Admission:
    """Admit `request` under `budget` for `tenant`, or raise `BudgetRefused` saying why and what to change.

    `predicted_prefill_ms`: the profiled prefill time of this prompt (None: not known, not checked).
    `now_s`: the caller's clock (monotonic seconds); the deadline is measured from it.
    Pure: no I/O, no clock of its own.
    """
    _check_budget_values(budget)
    effective = resolve_budget(budget, tenant)
    cost_usd, energy_j = compute_prefill_charge(request.num_prompt_tokens, request.num_cached_tokens, pricing)
    _refuse_total(request, effective)
    _refuse_prefill_charge(effective, cost_usd, energy_j, request.num_prompt_tokens)
    _refuse_deadline(effective, predicted_prefill_ms)
    deadline_s = math.inf if effective.deadline_ms is None else now_s + effective.deadline_ms / 1000.0
    return Admission(
        tenant=request.tenant,
        budget=effective,
        num_prompt_tokens=request.num_prompt_tokens,
        num_cached_tokens=request.num_cached_tokens,
        max_output_tokens=_max_output_tokens(request, effective),
        admitted_s=now_s,
        deadline_s=deadline_s,
        pricing=pricing,
        prefill_cost_usd=cost_usd,
        prefill_energy_j=energy_j,
    )


def _check_budget_values(budget: Budget) -> None:
    for name in _LIMIT_FIELDS:
        value = getattr(budget, name)
        if value is not None and (value < 0 or (value == 0 and name not in ("max_thinking_tokens", "min_thinking_tokens"))):
            raise BudgetRefused(f"budget {name}={value} must be positive: leave it unset for the tenant's default")
    if (budget.min_thinking_tokens is not None and budget.max_thinking_tokens is not None
            and budget.min_thinking_tokens > budget.max_thinking_tokens):
        raise BudgetRefused(
            f"min_thinking_tokens={budget.min_thinking_tokens} is above max_thinking_tokens={budget.max_thinking_tokens}: "
            "lower the minimum or raise the maximum"
        )


def _refuse_total(request: AdmissionRequest, budget: Budget) -> None:
    if budget.max_total_tokens is not None and request.num_prompt_tokens >= budget.max_total_tokens:
        raise BudgetRefused(
            f"the prompt has {request.num_prompt_tokens} tokens and max_total_tokens is {budget.max_total_tokens} "
            f"(prompt + output): raise max_total_tokens to at least {request.num_prompt_tokens + 1} or shorten the prompt"
        )


def _refuse_prefill_charge(budget: Budget, cost_usd: float, energy_j: float, num_prompt_tokens: int) -> None:
    if budget.max_cost_usd is not None and cost_usd > budget.max_cost_usd:
        raise BudgetRefused(
            f"prefilling the {num_prompt_tokens}-token prompt alone costs ${cost_usd:.6g}, over max_cost_usd=${budget.max_cost_usd:.6g}: "
            "raise max_cost_usd or shorten the prompt"
        )
    if budget.max_energy_j is not None and energy_j > budget.max_energy_j:
        raise BudgetRefused(
            f"prefilling the {num_prompt_tokens}-token prompt alone takes {energy_j:.6g} J, over max_energy_j={budget.max_energy_j:.6g} J: "
            "raise max_energy_j or shorten the prompt"
        )


def _refuse_deadline(budget: Budget, predicted_prefill_ms: float | None) -> None:
    if budget.deadline_ms is not None and predicted_prefill_ms is not None and budget.deadline_ms < predicted_prefill_ms:
        raise BudgetRefused(
            f"deadline_ms={budget.deadline_ms:.6g} is shorter than the predicted prefill time of this prompt "
            f"({predicted_prefill_ms:.6g} ms): raise deadline_ms above {math.ceil(predicted_prefill_ms)} or shorten the prompt"
        )


def _max_output_tokens(request: AdmissionRequest, budget: Budget) -> int | None:
    limits = [limit for limit in (request.max_tokens, budget.max_output_tokens) if limit is not None]
    if budget.max_total_tokens is not None:
        limits.append(budget.max_total_tokens - request.num_prompt_tokens)
    return min(limits) if limits else None
