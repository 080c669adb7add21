"""The virtual actuator: replica counts in simulated time, for the simulator and the tests. No I/O.

A new worker is ready `start_delay_s` after the decision that asked for it. A decision that shrinks a
tier first cancels workers still starting (newest first), then removes ready ones at once: how a
removed worker drains is the simulator's business (its engines finish what they hold). Time comes
from `clock()` in the async interface and from the caller in the synchronous twins (`apply_at`,
`replicas_at`), which an event loop uses.
"""

from __future__ import annotations

from collections.abc import Callable

from orchestrator.actuators.base import BaseActuator
from orchestrator.planner.policy import TIERS, ScalingDecision


class VirtualActuator(BaseActuator):
    """Desired and ready workers per tier, in simulated time."""

    def __init__(self, num_prefill: int, num_decode: int, start_delay_s: float = 0.0,
                 clock: Callable[[], float] | None = None) -> None:
        """Start with `num_prefill`/`num_decode` ready workers. `clock` gives the simulated time for the
        async interface (None: only the synchronous twins are used). Raises ValueError on negative values."""
        if min(num_prefill, num_decode) < 0 or start_delay_s < 0:
            raise ValueError("replica counts and start_delay_s must be >= 0")
        self.start_delay_s = start_delay_s
        self._clock = clock
        self._ready_at_s: dict[str, list[float]] = {"prefill": [0.0] * num_prefill, "decode": [0.0] * num_decode}
        self.history: list[tuple[float, int, int]] = []  # (time, desired prefill, desired decode)

    def apply_at(self, decision: ScalingDecision, now_s: float) -> None:
        """Apply `decision` at simulated time `now_s`."""
        for tier in TIERS:
            workers, want = self._ready_at_s[tier], decision.num_for(tier)
            if want > len(workers):
                workers.extend([now_s + self.start_delay_s] * (want - len(workers)))
            else:
                workers.sort()
                del workers[want:]  # the newest (maybe still starting) go first
        self.history.append((now_s, decision.num_prefill, decision.num_decode))

    def desired(self, tier: str) -> int:
        """Workers asked for in `tier`, ready or starting."""
        return len(self._ready_at_s[tier])

    def replicas_at(self, now_s: float) -> dict[str, int]:
        """Ready workers per tier at simulated time `now_s`."""
        return {tier: sum(1 for t in self._ready_at_s[tier] if t <= now_s) for tier in TIERS}

    async def apply(self, decision: ScalingDecision) -> None:
        self.apply_at(decision, self._now())

    async def observe_replicas(self) -> dict[str, int]:
        return self.replicas_at(self._now())

    def _now(self) -> float:
        if self._clock is None:
            raise RuntimeError("VirtualActuator was built without a clock: use apply_at / replicas_at")
        return self._clock()
