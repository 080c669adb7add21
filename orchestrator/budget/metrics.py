"""Prometheus metrics of budgets and tenant usage (prometheus_client default registry).

- `pdserve_budget_exhausted_total{reason}`: requests stopped by a budget limit (`length`,
  `total_budget`, `deadline`, `cost_budget`, `thinking_budget`: the last one counts every request whose
  thinking was forced closed at its cap, although that is not a stop), and admissions refused
  (`refused`) or over quota (`quota`).
- `pdserve_tenant_tokens_total{tenant,tier}`: prompt tokens computed (prefill) and tokens generated
  (decode), per tenant.
- `pdserve_tenant_cost_usd_total{tenant,tier}`: what those tokens cost, per tenant.
The gateway calls `observe_prefill` once the prefill is done, `observe_verdict` after each charge,
`observe_finished` once the request ends, and `observe_exhausted("refused" | "quota")` at admission.
"""

from __future__ import annotations

from prometheus_client import Counter

from orchestrator.budget.meter import BudgetMeter, Verdict
from orchestrator.request import FinishReason

BUDGET_REASONS = frozenset({
    FinishReason.LENGTH, FinishReason.TOTAL_BUDGET, FinishReason.DEADLINE,
    FinishReason.COST_BUDGET, FinishReason.THINKING_BUDGET,
})

budget_exhausted_total = Counter(
    "pdserve_budget_exhausted_total", "Requests that reached a limit of their budget, by reason.", ["reason"]
)
tenant_tokens_total = Counter(
    "pdserve_tenant_tokens_total", "Tokens computed for a tenant: prompt tokens on prefill, generated tokens on decode.",
    ["tenant", "tier"],
)
tenant_cost_usd_total = Counter(
    "pdserve_tenant_cost_usd_total", "Price of the tokens computed for a tenant, in USD.", ["tenant", "tier"]
)


def observe_exhausted(reason: str) -> None:
    """Count one request stopped (or refused) for `reason`."""
    budget_exhausted_total.labels(reason=reason).inc()


def observe_prefill(meter: BudgetMeter) -> None:
    """Count the prompt tokens a request computed on the prefill tier and their price (call once)."""
    tenant = meter.admission.tenant
    tenant_tokens_total.labels(tenant=tenant, tier="prefill").inc(meter.tokens_by_tier["prefill"])
    tenant_cost_usd_total.labels(tenant=tenant, tier="prefill").inc(meter.prefill_cost_usd)


def observe_verdict(meter: BudgetMeter, verdict: Verdict) -> None:
    """Count the decode tokens a charge accepted, their price, and a thinking cap reached (call per charge)."""
    tenant = meter.admission.tenant
    if verdict.num_accepted:
        tenant_tokens_total.labels(tenant=tenant, tier="decode").inc(verdict.num_accepted)
        tenant_cost_usd_total.labels(tenant=tenant, tier="decode").inc(verdict.cost_usd)
    if verdict.thinking_capped:
        observe_exhausted(FinishReason.THINKING_BUDGET.value)


def observe_finished(meter: BudgetMeter) -> None:
    """Count the request's finish reason when a budget limit ended it (call once, when it ends)."""
    if meter.finish_reason in BUDGET_REASONS:
        observe_exhausted(meter.finish_reason.value)
