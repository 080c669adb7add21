"""The actuator contract: apply a `ScalingDecision` to a cluster and report the replicas it has.

Who calls it: the controller's planner loop (an asyncio task in the controller actor), once per
decision, then `observe_replicas()` for the next observations and the actual-replicas metric; the
simulator calls the virtual actuator's synchronous twins (`apply_at`, `replicas_at`). An actuator
never decides: it applies counts, and how a worker leaves (drain) belongs to whoever owns the workers.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from orchestrator.errors import PdserveError
from orchestrator.planner.policy import ScalingDecision


class ActuationFailed(PdserveError):
    """The actuator could not apply a decision (API server unreachable, conflict, refused): the planner
    loop logs it and tries again at its next decision."""

    retryable = True
    grpc_code = "UNAVAILABLE"
    http_status = 503


class BaseActuator(ABC):
    """Applies replica counts per tier (`prefill`, `decode`)."""

    @abstractmethod
    async def apply(self, decision: ScalingDecision) -> None:
        """Ask for `decision.num_prefill` prefill and `decision.num_decode` decode workers.

        Returns once the request is accepted (not once the workers are ready or gone). Raises
        ActuationFailed when it was not accepted, ConfigError when the target does not exist.
        """

    @abstractmethod
    async def observe_replicas(self) -> dict[str, int]:
        """Ready workers per tier, `{"prefill": n, "decode": m}` (starting and draining ones excluded).

        Raises ActuationFailed when the cluster cannot be read.
        """
