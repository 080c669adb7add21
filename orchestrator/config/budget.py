"""Config section of test-time-compute budgets: per-tenant defaults and maximums, prices and energy
per tier per token, tenant quotas, and the texts used to force or extend thinking.

How the numbers are used (see docs/budgets.md and `orchestrator.budget`):
- A request's `Budget` field left unset takes the tenant's default; a set field is clamped to the
  tenant's maximum. A tenant not listed under `tenants` gets `tenant_defaults`.
- Cost and energy of a request = its computed prompt tokens x the prefill price/energy per token
  + its generated tokens x the decode price/energy per token.
- Quotas are token buckets per tenant and per tier (prompt tokens and USD on the prefill tier,
  generated tokens and USD on the decode tier): `*_per_s` is the refill rate, `*_burst` the size.
"""

from pydantic import Field, model_validator

from orchestrator.config.base import ConfigModel


class BudgetLimitsConfig(ConfigModel):
    """Values of every limiting `Budget` field (used both as defaults and as maximums). None: no limit."""

    max_thinking_tokens: int | None = Field(
        None, ge=0, description="Tokens between the think delimiters; at the cap the end delimiter is forced."
    )
    min_thinking_tokens: int | None = Field(
        None, ge=0, description="An end delimiter before this many thinking tokens is suppressed (\"Wait\" is forced instead)."
    )
    max_output_tokens: int | None = Field(None, ge=1, description="Generated tokens, thinking included.")
    max_total_tokens: int | None = Field(None, ge=1, description="Prompt plus generated tokens.")
    deadline_ms: float | None = Field(None, gt=0, description="Wall time from admission to the last token, in milliseconds.")
    max_cost_usd: float | None = Field(None, gt=0, description="Price of the request (prefill and decode tokens), in USD.")
    max_energy_j: float | None = Field(None, gt=0, description="Energy of the request (prefill and decode tokens), in joules.")


class TenantQuotaConfig(ConfigModel):
    """Token-bucket rate limits of one tenant, per tier. None: that bucket is unlimited."""

    prefill_tokens_per_s: float | None = Field(None, gt=0, description="Prompt tokens per second the tenant may send to the prefill tier.")
    prefill_tokens_burst: float | None = Field(None, gt=0, description="Prompt tokens the tenant may send at once (bucket size).")
    decode_tokens_per_s: float | None = Field(None, gt=0, description="Generated tokens per second the tenant may consume on the decode tier.")
    decode_tokens_burst: float | None = Field(None, gt=0, description="Generated tokens the tenant may consume at once (bucket size).")
    prefill_usd_per_s: float | None = Field(None, gt=0, description="Prefill spending per second, in USD.")
    prefill_usd_burst: float | None = Field(None, gt=0, description="Prefill spending at once (bucket size), in USD.")
    decode_usd_per_s: float | None = Field(None, gt=0, description="Decode spending per second, in USD.")
    decode_usd_burst: float | None = Field(None, gt=0, description="Decode spending at once (bucket size), in USD.")

    @model_validator(mode="after")
    def _check_pairs(self) -> "TenantQuotaConfig":
        for tier in ("prefill", "decode"):
            for unit in ("tokens", "usd"):
                rate = getattr(self, f"{tier}_{unit}_per_s")
                burst = getattr(self, f"{tier}_{unit}_burst")
                if (rate is None) != (burst is None):
                    raise ValueError(f"set both {tier}_{unit}_per_s and {tier}_{unit}_burst, or neither")
        return self


class TenantConfig(ConfigModel):
    """What one tenant gets: budget defaults and maximums, priority ceiling, quotas, fair-share weight."""

    defaults: BudgetLimitsConfig = Field(
        default_factory=BudgetLimitsConfig, description="Budget fields a request leaves unset take these values."
    )
    maximums: BudgetLimitsConfig = Field(
        default_factory=BudgetLimitsConfig, description="Budget fields a request sets are clamped to these values."
    )
    max_priority: int = Field(0, description="Highest `priority` the tenant's requests may ask for (higher ones are clamped).")
    weight: float = Field(1.0, gt=0, description="Fair-share weight when workers are saturated (tokens served per round, relative).")
    quota: TenantQuotaConfig = Field(default_factory=TenantQuotaConfig, description="Rate limits per tier.")


class PricingConfig(ConfigModel):
    """Price and energy of one token on each tier.

    These should come from the simulator's power model for the hardware the pools run on
    (`pdserve simulate` reports J and $ per prefill and per decode token): the defaults are
    H100-class placeholders (about 0.9 M decode tokens/s per MW, prompt tokens ~10x cheaper).
    """

    prefill_usd_per_token: float = Field(1.0e-7, ge=0, description="Price of one computed prompt token on the prefill tier, in USD.")
    decode_usd_per_token: float = Field(4.0e-7, ge=0, description="Price of one generated token on the decode tier, in USD.")
    prefill_j_per_token: float = Field(0.11, ge=0, description="Energy of one computed prompt token on the prefill tier, in joules.")
    decode_j_per_token: float = Field(1.1, ge=0, description="Energy of one generated token on the decode tier, in joules.")


class BudgetConfig(ConfigModel):
    """Budget defaults and maximums per tenant, prices per tier, tenant quotas, thinking forcing texts."""

    default_tenant: str = Field("default", min_length=1, description="Tenant of requests that carry no API key.")
    pricing: PricingConfig = Field(default_factory=PricingConfig, description="Price and energy per token, per tier.")
    tenant_defaults: TenantConfig = Field(
        default_factory=TenantConfig, description="Limits of every tenant not listed under `tenants`."
    )
    tenants: dict[str, TenantConfig] = Field(
        default_factory=dict, description="Limits per tenant name (replaces `tenant_defaults` for that tenant)."
    )
    close_prefix_text: str = Field(
        "\n", description="Text forced before the end-of-thinking delimiter at the thinking cap (inside the budget); empty: none."
    )
    wait_text: str = Field(
        " Wait", min_length=1, description="Text forced instead of an end-of-thinking delimiter below min_thinking_tokens."
    )

    def tenant(self, name: str) -> TenantConfig:
        """The limits of tenant `name` (its own entry, or `tenant_defaults`)."""
        return self.tenants.get(name, self.tenant_defaults)
