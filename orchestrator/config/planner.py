"""Config section of the autoscaling planner and its actuators."""

from pydantic import Field

from orchestrator.config.base import ConfigModel


class PlannerConfig(ConfigModel):
    """Per-tier autoscaling: SLOs, limits, loop timing."""

    enabled: bool = Field(False, description="Run the autoscaling loop (`pdserve up --autoscale`).")
