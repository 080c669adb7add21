"""Config section of test-time-compute budgets, prices and tenant quotas."""

from pydantic import Field

from orchestrator.config.base import ConfigModel


class BudgetConfig(ConfigModel):
    """Budget defaults, prices per tier, tenant quotas."""

    default_tenant: str = Field("default", min_length=1, description="Tenant of requests that carry no API key.")
