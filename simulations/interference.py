"""Tiers sharing a host: a step of one tier runs slower while the other tier computes.

On a host where the prefill and decode engines share CPU cores, caches or memory bandwidth (the 2-core
CPU cluster of docs/simulator.md, Accuracy), a decode step that overlaps a prefill takes longer than the
profile's decode step, measured with the prefill tier idle, and a prefill beside decode steps likewise.
`pdserve profile --target` measures both on a disaggregated cluster
(`orchestrator.profiles.InterferencePoint`); `SimConfig.shared_host` turns the model on.

The model is a rate: while the other tier computes, an engine gets through its step's work `factor`
times slower; outside that time at full speed. A step half overlapped by a prefill takes
(0.5 + 0.5 x factor) times its profiled time. Each engine keeps a `StretchedClock`, the work time its
steps are computed in; the cluster (`simulations.cluster`) sets every engine's factor each time an
engine starts a step or goes idle (`TierInterference`), and an engine whose factor changes mid-step
moves the step's end (`simulations.engine.Engine.slow_down`).
"""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.profiles import EngineProfile


class StretchedClock:
    """An engine's work time: it advances at 1 / `factor` of wall time (factor 1: the two are equal).

    The engine reads `work_s(now)` to time its steps and `wall_s(work)` to schedule their ends; the
    cluster calls `set_factor` (through `Engine.slow_down`) when the other tier starts or stops. Only
    the changes since the last `forget_before` are kept.
    """

    def __init__(self) -> None:
        self._changes: list[tuple[float, float, float]] = [(0.0, 0.0, 1.0)]  # (wall s, work s, factor from then)

    @property
    def factor(self) -> float:
        return self._changes[-1][2]

    def work_s(self, now: float) -> float:
        """Work time at wall time `now` (not before the last change)."""
        wall, work, factor = self._changes[-1]
        return work + (now - wall) / factor

    def wall_s(self, work: float) -> float:
        """Wall time at which work time reaches `work`, for any `work` since the last `forget_before`."""
        changes = self._changes
        wall, start, factor = changes[0] if len(changes) == 1 else next(
            (c for c in reversed(changes) if c[1] <= work), changes[0])
        return wall + (work - start) * factor

    def set_factor(self, now: float, factor: float) -> None:
        """From `now` on, work advances at 1 / `factor` of wall time."""
        self._changes.append((now, self.work_s(now), factor))

    def forget_before(self, now: float) -> None:
        """Keep only what `wall_s` needs for work times from `now` on (the engine's last step boundary)."""
        if len(self._changes) > 1:  # (the common case, never slowed, has nothing to forget)
            keep = max(i for i, (wall, _, _) in enumerate(self._changes) if i == 0 or wall <= now)
            del self._changes[:keep]


@dataclass(frozen=True)
class TierInterference:
    """The slowdown factors of engines that share one host, from the profile's interference points.

    `prefill_factor(prompt_tokens, decode_busy)`: a prefill engine computing `prompt_tokens` new tokens
    while any decode engine steps; `decode_factor(prefill_tokens)`: a decode engine while the prefill
    tier computes `prefill_tokens` (the largest step among prefill engines; 0: the tier is idle).
    """

    profile: EngineProfile

    def prefill_factor(self, prompt_tokens: int, decode_busy: bool) -> float:
        return self.profile.prefill_slowdown(prompt_tokens) if decode_busy and prompt_tokens else 1.0

    def decode_factor(self, prefill_tokens: int) -> float:
        return self.profile.decode_slowdown(prefill_tokens) if prefill_tokens else 1.0
