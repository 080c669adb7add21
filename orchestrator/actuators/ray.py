"""The Ray actuator: hands each tier's count to the controller actor, which starts or drains workers.

Thin on purpose: the controller owns the worker actors and the drain protocol (a worker chosen for
removal gets no new requests, finishes or hands over what it holds, then goes); on KubeRay the Ray
autoscaler adds the pods the new actors need. Called from the controller's planner loop or from a
process holding a handle to it.
"""

from __future__ import annotations

from typing import Any

from orchestrator.actuators.base import ActuationFailed, BaseActuator
from orchestrator.planner.policy import TIERS, ScalingDecision


class RayActuator(BaseActuator):
    """Applies decisions through `controller.scale_to.remote(tier, num_workers)`."""

    def __init__(self, controller: Any) -> None:
        """`controller`: a Ray actor handle with `scale_to(tier: str, num_workers: int)` and
        `replicas() -> dict[str, int]` (ready, non-draining workers per tier)."""
        self._controller = controller

    async def apply(self, decision: ScalingDecision) -> None:
        """Ask the controller for both tiers' counts, the shrinking tier first (so a power budget holds
        during the change too). Raises ActuationFailed when a controller call fails (its error chained)."""
        current = await self.observe_replicas()
        for tier in sorted(TIERS, key=lambda t: decision.num_for(t) - current[t]):
            try:
                await self._controller.scale_to.remote(tier, decision.num_for(tier))
            except Exception as exc:  # a RayError or the controller's own error: add the context
                raise ActuationFailed(f"controller could not scale {tier} to {decision.num_for(tier)}: {exc}") from exc

    async def observe_replicas(self) -> dict[str, int]:
        """Ready workers per tier, from the controller. Raises ActuationFailed when the call fails."""
        try:
            replicas = await self._controller.replicas.remote()
        except Exception as exc:
            raise ActuationFailed(f"controller did not report its replicas: {exc}") from exc
        return {tier: int(replicas.get(tier, 0)) for tier in TIERS}
