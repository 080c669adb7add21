"""The autoscaling loop: observations in, the pure planner's decision out, an actuator applies it.

It runs inside the controller actor (`pdserve up --autoscale`). Life of one interval:
1. The gateways report what they saw (`GatewayReport`, about once a second): arrivals with their prompt
   lengths and the output they asked for, first tokens with their TTFT, every inter-token gap as it is
   streamed, finished requests with the output they produced, and the queue depth.
2. Every `planner.interval_s`, `observe()` turns the reports of the window and the workers' stats into
   `planner.Observations`: arrival rate, prompt and output length *distributions*, observed TTFT and
   inter-token latency at the SLO percentile, queue depths, decode KV usage, ready replicas.
   Output lengths are known only once a request ends, long after its arrival loaded the decode tier:
   each arrival's output is estimated as the length it asked for (max_tokens, or its budget) times the
   fill ratio of recently finished requests (produced / asked; 1 before any finished), so a
   generation-heavy wave is planned for when it arrives, not when it is over. Latencies come from
   first tokens and token gaps seen in the interval, not from finished requests, for the same reason.
3. `planner.decide(...)` (pure) sizes both tiers; the decision, with its reasons, goes to the actuator
   and to the planner metrics; the next state is kept for the next interval.
`Observer` is step 2 alone (pure): the simulator feeds it simulated reports the same way.
Actuators: `ray` (the controller starts workers and drains them; on KubeRay the Ray autoscaler adds
the pods the pending workers need), `kubernetes` (patch the RayCluster's worker groups as well).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from orchestrator.config import PdserveConfig, PlannerConfig
from orchestrator.errors import ConfigError
from orchestrator.planner import metrics as planner_metrics
from orchestrator.planner.observations import LengthDistribution, Observations
from orchestrator.planner.policy import PlannerState, ScalingDecision, decide

log = logging.getLogger(__name__)

DEFAULT_PROFILES = {"smollm2-135m-instruct": "smollm2-135m-cpu.yaml"}
LENGTH_WINDOW_INTERVALS = 6  # length distributions are drawn from this many intervals of arrivals
MIN_LATENCY_SAMPLES = 5
DEFAULT_PROMPT_TOKENS = 512  # lengths assumed before any request arrived
DEFAULT_OUTPUT_TOKENS = 64


@dataclass
class GatewayReport:
    """What one gateway saw since its last report (times on the gateway's wall clock)."""

    arrivals: list[tuple[float, int, int]] = field(default_factory=list)  # (time_s, prompt tokens, output asked)
    first_tokens: list[tuple[float, float]] = field(default_factory=list)  # (time_s, ttft_ms)
    token_gaps: list[tuple[float, float]] = field(default_factory=list)  # (time_s, inter-token ms)
    finished: list[tuple[float, int, int]] = field(default_factory=list)  # (time_s, output tokens, output asked)
    queue_depth: int = 0

    def __bool__(self) -> bool:
        return bool(self.arrivals or self.first_tokens or self.token_gaps or self.finished or self.queue_depth)


def load_profile(config: PdserveConfig) -> Any:
    """The engine profile the planner plans with: `engine.profile`, or the shipped one of the default
    model. Raises ConfigError saying how to make one when there is none."""
    from pathlib import Path

    from orchestrator.profiles import EngineProfile

    if config.engine.profile is not None:
        return EngineProfile.load(config.engine.profile)
    shipped = DEFAULT_PROFILES.get(config.model.name)
    if shipped is None:
        raise ConfigError("autoscaling needs an engine profile of this model on this hardware: run "
                          "`pdserve profile --model ... --out profile.yaml`, then pass --profile profile.yaml")
    return EngineProfile.load(Path(__file__).parent / "data" / "profiles" / shipped)


class Observer:
    """The planner's view of the cluster from gateway reports: pure, no I/O, no clock of its own (the
    live loop and the simulator feed it the same way). See the module docstring, step 2."""

    def __init__(self, planner: PlannerConfig, default_prompt_tokens: int = DEFAULT_PROMPT_TOKENS) -> None:
        """`default_prompt_tokens`: the prompt length assumed before any request arrived."""
        self.interval_s = planner.interval_s
        self.percentile = planner.slo.percentile
        self.default_prompt_tokens = default_prompt_tokens
        self._arrivals: deque[tuple[float, int, int]] = deque()
        self._first_tokens: deque[tuple[float, float]] = deque()
        self._token_gaps: deque[tuple[float, float]] = deque()
        self._finished: deque[tuple[float, int, int]] = deque()
        self._queue_depth = 0

    def record(self, report: GatewayReport) -> None:
        self._arrivals.extend(report.arrivals)
        self._first_tokens.extend(report.first_tokens)
        self._token_gaps.extend(report.token_gaps)
        self._finished.extend(report.finished)
        self._queue_depth = report.queue_depth

    def observe(self, now_s: float, replicas: dict[str, int], worker_stats: Sequence[Any]) -> Observations:
        """The last interval as `planner.Observations`. `worker_stats`: the workers' `WorkerStats` (or
        anything with `tier`, `engine.num_waiting` and `engine.kv_usage`)."""
        interval = self.interval_s
        self._forget_before(now_s - interval * LENGTH_WINDOW_INTERVALS)
        since = now_s - interval
        recent = [a for a in self._arrivals if a[0] > since]
        prefill_waiting, kv_usage = _pool_load(worker_stats)
        fill = self.fill_ratio()
        return Observations(
            now_s=now_s, arrival_rate_per_s=len(recent) / interval,
            prompt_tokens=_distribution([p for _, p, _ in self._arrivals], self.default_prompt_tokens),
            output_tokens=_distribution([asked * fill for _, _, asked in self._arrivals], DEFAULT_OUTPUT_TOKENS),
            num_prefill=replicas.get("prefill", 0), num_decode=replicas.get("decode", 0),
            prefill_queue_depth=prefill_waiting, decode_queue_depth=self._queue_depth, decode_kv_usage=kv_usage,
            prefill_ttft_ms=_percentile([t for at, t in self._first_tokens if at > since], self.percentile),
            decode_itl_ms=_percentile([g for at, g in self._token_gaps if at > since], self.percentile))

    def fill_ratio(self) -> float:
        """Median of produced / asked output tokens over the requests finished in the window (1: none)."""
        ratios = sorted(min(out / asked, 1.0) for _, out, asked in self._finished if asked > 0)
        return ratios[len(ratios) // 2] if ratios else 1.0

    def _forget_before(self, cutoff_s: float) -> None:
        for samples in (self._arrivals, self._first_tokens, self._token_gaps, self._finished):
            while samples and samples[0][0] < cutoff_s:
                samples.popleft()


class Autoscaler:
    """The loop (see the module docstring). `replicas()` and `worker_stats()` read the controller's pools."""

    def __init__(self, config: PdserveConfig, actuator: Any, replicas: Callable[[], dict[str, int]],
                 worker_stats: Callable[[], Sequence[Any]], clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.planner = config.planner
        self.profile = load_profile(config)
        self.actuator = actuator
        self.observer = Observer(config.planner, config.model.max_model_len // 4)
        self._replicas = replicas
        self._worker_stats = worker_stats
        self._clock = clock
        self._state: PlannerState | None = None
        self.last: ScalingDecision | None = None
        self.last_s: float | None = None
        self.history: deque[dict[str, Any]] = deque(maxlen=256)
        self._task: asyncio.Task | None = None

    # ---- life cycle ------------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="pdserve-autoscaler")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.planner.interval_s)
            try:
                await self.step()
            except Exception:  # one bad interval must not stop autoscaling; it is logged with its cause
                log.exception("autoscaler: the planning interval failed")

    # ---- one interval ----------------------------------------------------------------------------

    def record(self, report: GatewayReport) -> None:
        """Take a gateway's report (controller actor's loop)."""
        self.observer.record(report)

    def observe(self, now_s: float) -> Observations:
        return self.observer.observe(now_s, self._replicas(), [s for s in self._worker_stats() if s is not None])

    def fill_ratio(self) -> float:
        return self.observer.fill_ratio()

    async def step(self) -> ScalingDecision:
        observations = self.observe(self._clock())
        decision = decide(observations, self.profile, self.planner.slo, self._state, self.planner)
        self._state = decision.next_state
        self.last, self.last_s = decision, observations.now_s
        planner_metrics.observe_decision(decision)
        self.history.append({"time_s": observations.now_s, "prefill": decision.num_prefill,
                             "decode": decision.num_decode, "reasons": _reasons(decision)})
        if decision.num_prefill != observations.num_prefill or decision.num_decode != observations.num_decode:
            log.info("autoscaler: %s", decision.describe())
        await self.actuator.apply(decision)
        planner_metrics.observe_actual(await self.actuator.observe_replicas())
        return decision

    def state(self) -> dict[str, Any]:
        """For `pdserve status`: the last decision and its reasons."""
        if self.last is None:
            return {"interval_s": self.planner.interval_s, "last_reasons": []}
        return {"prefill_replicas": self.last.num_prefill, "decode_replicas": self.last.num_decode,
                "prefill_action": self.last.prefill_action, "decode_action": self.last.decode_action,
                "last_reasons": _reasons(self.last), "last_decision_s": self.last_s,
                "interval_s": self.planner.interval_s}


def _pool_load(worker_stats: Sequence[Any]) -> tuple[int, float | None]:
    """(prompts waiting on the prefill engines, mean KV usage of the decode engines)."""
    prefill_waiting, usages = 0, []
    for stats in worker_stats:
        if stats.tier == "prefill":
            prefill_waiting += stats.engine.num_waiting
        else:
            usages.append(stats.engine.kv_usage)
    return prefill_waiting, (sum(usages) / len(usages) if usages else None)


def _reasons(decision: ScalingDecision) -> list[str]:
    return [f"prefill: {r}" for r in decision.prefill_reasons] + [f"decode: {r}" for r in decision.decode_reasons]


def _distribution(samples: Sequence[int], default: int) -> LengthDistribution:
    """The lengths seen, or one typical length before anything was seen."""
    if not samples:
        return LengthDistribution.constant(max(default, 1))
    return LengthDistribution.from_samples([max(int(s), 1) for s in samples])


def _percentile(samples: Sequence[float], percentile: float) -> float | None:
    if len(samples) < MIN_LATENCY_SAMPLES:
        return None
    ordered = sorted(samples)
    index = min(len(ordered) - 1, max(0, math.ceil(percentile / 100 * len(ordered)) - 1))
    return ordered[index]
