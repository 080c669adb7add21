"""The open-loop load generator.

Life of a run: 1. each request is sent at its scheduled arrival time (from the run's start), whether
or not earlier ones have finished: the offered load never adapts to the server; 2. its prompt is built
then, as exact token ids; 3. a task streams it through the endpoint, timing every token; 4. a request
ends as a success or as a counted failure with its reason: server errors, broken streams, and the
per-request timeout, so nothing hangs. Sending stops at `duration_s` (if given); requests in flight
then still run to their end or timeout.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass

from pdserve.bench.endpoints import BaseEndpoint, RequestFailed
from pdserve.bench.outcome import Outcome
from pdserve.bench.prompts import PromptBuilder
from pdserve.bench.workload import BenchRequest


@dataclass
class LoadResult:
    """Every sent request's outcome, the wall time from first send to last end, and what was not sent."""

    outcomes: list[Outcome]
    duration_s: float
    num_not_sent: int


async def run_load(requests: Sequence[BenchRequest], endpoint: BaseEndpoint, builder: PromptBuilder, *,
                   timeout_s: float, duration_s: float | None = None, progress: bool = True,
                   start_s: float | None = None) -> LoadResult:
    """Send `requests` open-loop and wait for all of them. `start_s`: the run's perf_counter origin."""
    from tqdm import tqdm

    start_s = time.perf_counter() if start_s is None else start_s
    to_send = [r for r in requests if duration_s is None or r.arrival_s <= duration_s]
    bar = tqdm(total=len(to_send), unit="req", desc="bench", disable=not progress, dynamic_ncols=True)
    outcomes: list[Outcome] = []
    tasks = []
    try:
        for request in to_send:
            delay_s = start_s + request.arrival_s - time.perf_counter()
            if delay_s > 0:
                await asyncio.sleep(delay_s)
            outcome = Outcome(request.index, request.phase, request.arrival_s, request.prompt_tokens,
                              request.output_tokens)
            outcomes.append(outcome)
            task = asyncio.create_task(_send(request, outcome, endpoint, builder, timeout_s, start_s))
            task.add_done_callback(lambda _task, o=outcome: _tick(bar, o))
            tasks.append(task)
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        bar.close()
    return LoadResult(outcomes, _wall_s(outcomes), len(requests) - len(to_send))


async def _send(request: BenchRequest, outcome: Outcome, endpoint: BaseEndpoint, builder: PromptBuilder,
                timeout_s: float, run_start_s: float) -> None:
    """Stream one request into `outcome`; every failure is recorded there, never raised."""
    token_ids = builder.build(request.index, request.prompt_tokens, request.prefix_hash_ids)
    outcome.start_s = time.perf_counter()
    outcome.dispatch_lag_ms = (outcome.start_s - run_start_s - request.arrival_s) * 1e3
    try:
        async with asyncio.timeout(timeout_s):
            async for event in endpoint.stream(token_ids, request.output_tokens):
                now_s = time.perf_counter()
                if event.num_tokens:
                    outcome.token_times_s.append(now_s)
                    outcome.token_counts.append(event.num_tokens)
                outcome.finish_reason = outcome.finish_reason or event.finish_reason
                outcome.usage = event.usage or outcome.usage
    except RequestFailed as exc:
        outcome.fail(exc.reason, exc.message, time.perf_counter())
    except TimeoutError:
        outcome.fail("timeout", f"no end of stream within {timeout_s:g} s", time.perf_counter())
    except Exception as exc:  # noqa: BLE001 - the boundary: an unexpected client error is a counted failure
        outcome.fail(type(exc).__name__, str(exc), time.perf_counter())
    else:
        outcome.end_s = time.perf_counter()
        if outcome.finish_reason is None:
            outcome.fail("incomplete_stream", "the stream ended without a finish reason", outcome.end_s)


def _tick(bar, outcome: Outcome) -> None:
    bar.update(1)
    if not outcome.ok:
        bar.set_postfix_str(f"failed: {outcome.error_reason}", refresh=False)


def _wall_s(outcomes: Sequence[Outcome]) -> float:
    if not outcomes:
        return 0.0
    return max(o.end_s for o in outcomes) - min(o.start_s for o in outcomes)
