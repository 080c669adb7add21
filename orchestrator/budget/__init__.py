"""Test-time-compute budgets: one per-request contract of thinking tokens, total tokens, deadline and
cost/energy, enforced across both tiers, plus per-tenant quotas and fair queueing.

Pure policy: no I/O, no asyncio, no clock of its own (every call takes `now_s`), so the gateway and the
simulator run the same code. Life of a request's budget:
1. `admit(...)` resolves the effective budget from the tenant's defaults and maximums and refuses what
   cannot fit (`BudgetRefused`); `TenantQuotas.admit(...)` takes the prompt from the tenant's buckets
   (`QuotaExceeded` with retry-after).
2. `thinking.ThinkingController` rides inside the engine (via `workers/engine/thinking.py`) and forces
   the thinking span closed at its cap, or "Wait" below its minimum.
3. `BudgetMeter` charges every generated token (`charge(meter, tokens, now_s) -> Verdict`) and fills `Usage`.
4. `metrics` counts exhausted budgets and per-tenant tokens and cost (imported separately: it needs
   prometheus_client).
May import `orchestrator.config`, `orchestrator.request`, `orchestrator.errors`, nothing else of pdserve.
"""

from orchestrator.budget.admission import Admission, AdmissionRequest, admit, compute_prefill_charge, resolve_budget
from orchestrator.budget.meter import PHASES, BudgetMeter, Verdict, charge
from orchestrator.budget.quotas import FairOrder, QueueEntry, TenantQuotas, TokenBucket, order, order_with_config
from orchestrator.budget.thinking import Ban, Force, ThinkingController, ThinkingTracker, starts_in_thinking

__all__ = [
    "PHASES",
    "Admission",
    "AdmissionRequest",
    "Ban",
    "BudgetMeter",
    "FairOrder",
    "Force",
    "QueueEntry",
    "TenantQuotas",
    "ThinkingController",
    "ThinkingTracker",
    "TokenBucket",
    "Verdict",
    "admit",
    "charge",
    "compute_prefill_charge",
    "order",
    "order_with_config",
    "resolve_budget",
    "starts_in_thinking",
]
