"""Streams under a fault, and what became of them: the counting that every fault test and `benchmarks/chaos.py`
share (single host: tests/integration/test_worker_faults.py; several hosts: tests/multihost/faults.py).

    outcomes = run_streams(grpc_target, prompts, fault=kill_it, after_tokens=8)
    counts = FaultCounts.of("decode engine killed", outcomes, expected, recovered_s)

Every request ends one of three ways: completed (a finish reason other than "error"), an explicit error (the
stream's error, or an exception the client raised), or lost (neither: the request outlived its timeout).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

MAX_TOKENS = 96
REQUEST_TIMEOUT_S = 300.0  # a request outliving this is lost (the tests fail on it)


@dataclass
class Outcome:
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str = ""
    error: str = ""
    decode_worker: str = ""
    recomputed: bool = False  # the decode worker computed the prompt itself (the KV transfer failed or was skipped)
    longest_gap_s: float = 0.0  # the longest wait for the next chunk the client saw (the first included)

    @property
    def completed(self) -> bool:
        return not self.error and bool(self.finish_reason) and self.finish_reason != "error"


@dataclass
class FaultCounts:
    fault: str
    in_flight: int
    completed: int
    identical: int
    errors: int
    lost: int
    longest_gap_s: float
    recovered_s: float
    recomputed: int = 0

    @classmethod
    def of(cls, fault: str, outcomes: list[Outcome], expected: list[list[int]], recovered_s: float) -> FaultCounts:
        completed = [o for o in outcomes if o.completed]
        errors = [o for o in outcomes if o.error]
        return cls(fault, len(outcomes), len(completed),
                   sum(o.completed and o.token_ids == e for o, e in zip(outcomes, expected, strict=True)), len(errors),
                   len(outcomes) - len(completed) - len(errors), max(o.longest_gap_s for o in outcomes), recovered_s,
                   sum(o.recomputed for o in outcomes))

    @property
    def clean(self) -> bool:
        """Every request completed, token-identical, none lost and no error."""
        return self.lost == 0 and self.errors == 0 and self.identical == self.in_flight

    def line(self) -> str:
        return (f"{self.fault}: {self.in_flight} in flight, {self.completed} completed, {self.identical} token-identical, "
                f"{self.errors} explicit errors, {self.lost} lost, longest gap {self.longest_gap_s:.1f} s, "
                f"pools full again after {self.recovered_s:.0f} s")

    def row(self) -> str:
        return (f"| {self.fault} | {self.in_flight} | {self.completed} | {self.identical} | {self.recomputed} | {self.errors} "
                f"| {self.lost} | {self.longest_gap_s:.1f} | {self.recovered_s:.0f} |")

    HEADER = ("| fault | in flight | completed | token-identical | recomputed | explicit errors | lost | longest gap s "
              "| full capacity again after s |\n|---|---|---|---|---|---|---|---|---|")


async def stream(client, prompt: str, outcome: Outcome, max_tokens: int = MAX_TOKENS) -> None:
    last = time.monotonic()
    try:
        chunks = await client.generate(prompt, stream=True, max_tokens=max_tokens, temperature=0, ignore_eos=True,
                                       timeout_s=REQUEST_TIMEOUT_S)
        async for chunk in chunks:
            now = time.monotonic()
            outcome.longest_gap_s, last = max(outcome.longest_gap_s, now - last), now
            outcome.token_ids.extend(chunk.token_ids)
            if chunk.finish_reason:
                outcome.finish_reason = chunk.finish_reason.value
                outcome.error = chunk.error or ""
                if chunk.usage:
                    outcome.decode_worker = chunk.usage.decode_worker
                    outcome.recomputed = bool(chunk.usage.kv_recomputed)
    except Exception as exc:  # noqa: BLE001 - an explicit error is a counted outcome, not a test crash
        outcome.error = f"{type(exc).__name__}: {exc}"


def run_streams(grpc_target: str, prompts: list[str], fault: Callable[[], None] | None = None,
                after_tokens: int = 8, max_tokens: int = MAX_TOKENS,
                during: Callable[[], list[str]] | None = None, every_stream: bool = False) -> list[Outcome]:
    """Stream every prompt at once; `fault()` runs (in a thread) once the first stream (`every_stream`: every
    stream) has `after_tokens` tokens (0: as soon as they were sent) and the streams are awaited after it
    returned. `during()`, if given,
    runs right after the fault and returns more prompts, sent then (requests that arrive mid-fault); their
    outcomes follow the first ones'."""
    from pdserve import AsyncClient

    outcomes = [Outcome() for _ in prompts]

    async def run() -> None:
        async with AsyncClient(grpc_target) as client:
            tasks = [asyncio.create_task(stream(client, p, o, max_tokens)) for p, o in zip(prompts, outcomes)]
            if fault is not None:
                progress = min if every_stream else max
                while progress(len(o.token_ids) for o in outcomes) < after_tokens and not all(t.done() for t in tasks):
                    await asyncio.sleep(0.01)
                fault_task = asyncio.create_task(asyncio.to_thread(fault))
                if during is not None:
                    late = await asyncio.to_thread(during)
                    late_outcomes = [Outcome() for _ in late]
                    outcomes.extend(late_outcomes)
                    tasks += [asyncio.create_task(stream(client, p, o, max_tokens)) for p, o in zip(late, late_outcomes)]
                await fault_task
            await asyncio.gather(*tasks)

    asyncio.run(run())
    return outcomes
