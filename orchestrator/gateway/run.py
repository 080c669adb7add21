"""One request's life at the gateway, from admission to its last chunk.

1. Queue: wait for a decode slot (`DispatchQueue`, fair order), within the deadline.
2. Route: `router.pick` chooses the decode worker first, then the prefill worker (or none: the decode
   worker holds the prompt's prefix, or the cluster is colocated).
3. Prefill: the prefill worker computes the prompt and pushes its KV, layer by layer, to the decode
   worker's receiver; it returns the first token, which is streamed at once. A prefill worker that
   fails or drains under us is skipped: the decode worker computes the prompt itself.
4. Decode: the decode worker gets the prompt plus the first token and the transfer id; its engine
   waits for the KV (or recomputes it when the transfer is lost, late or corrupt) and streams the
   rest. A decode worker that dies mid-stream is replaced by another, given the prompt and every token
   streamed so far: the client sees one unbroken stream, no token lost or repeated. With no decode
   worker left, a prefill worker continues the request alone (the router's degraded fallback).
5. Every token is charged to the budget meter before it is sent (`BudgetMeter.charge`), detokenized
   and matched against the stop strings, here, once, whichever engines produced it.
6. However it ends (finish, budget, deadline, cancel, error, client gone), the engine requests still
   running are aborted on their workers, which frees their KV blocks on both tiers.
Deadline and cancel are watched at every wait: queue, prefill, transfer and each decode step. No wait
is unbounded, even without a deadline: the queue gives up after `pools.start_timeout_s` (no worker
came), and a worker that sends nothing for `pools.engine_stall_timeout_s + pools.health_timeout_s`
(the controller should have failed it by then) is treated as lost.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import ray

from orchestrator import metrics, tracing
from orchestrator.budget import QueueEntry, metrics as budget_metrics
from orchestrator.budget.meter import BudgetMeter
from orchestrator.errors import PdserveError, Unavailable
from orchestrator.gateway.text import IncrementalDetokenizer, StopMatcher
from orchestrator.request import FinishReason, GenerationChunk, Request, Usage
from workers.actor import WorkerDraining
from workers.engine.base import EngineError, EngineRequest, KVPush, KVReceive, ThinkingLimits

if TYPE_CHECKING:
    from orchestrator.gateway.service import Gateway, Running, WorkerView

log = logging.getLogger(__name__)

MAX_MIGRATIONS = 3
ENGINE_FINISH = {"stop": FinishReason.STOP, "length": FinishReason.LENGTH}


class _Stop(Exception):
    """A wait ended because the request must stop here (deadline or cancel)."""

    def __init__(self, reason: FinishReason) -> None:
        self.reason = reason


class _WorkerLost(Exception):
    """The worker running a part of the request died, failed or refused it (draining)."""


class _Stalled(Exception):
    """A wait passed its stall bound (the worker sent nothing, or no worker came)."""


# What Ray raises for a call whose worker process or host went away: the actor died or is unreachable, Ray's
# memory monitor killed its process (the machine ran short of memory), its process crashed, its node died.
_WORKER_GONE = (ray.exceptions.RayActorError, ray.exceptions.OutOfMemoryError, ray.exceptions.WorkerCrashedError,
                ray.exceptions.NodeDiedError)


def worker_lost(exc: BaseException) -> bool:
    """Whether `exc` means the worker, not the request, failed (retry elsewhere)."""
    return isinstance(exc, (*_WORKER_GONE, EngineError, WorkerDraining))


class RequestRun:
    """The state of one request (see the module docstring). `chunks()` once."""

    def __init__(self, gateway: Gateway, request: Request, prompt_ids: list[int], meter: BudgetMeter,
                 running: Running) -> None:
        self.gateway = gateway
        self.request = request
        self.prompt_ids = prompt_ids
        self.meter = meter
        self.running = running
        self.generated: list[int] = []
        self.usage_extra: dict[str, Any] = {}
        # Engine request ids are this run's own: a client may reuse its request id, and a worker
        # remembers an abort that came after its request ended (it may also overtake one), so an id
        # derived from the client's alone let the cleanup of a failed run abort the next one at once.
        self.engine_key = f"{request.request_id}-{uuid.uuid4().hex[:8]}"
        self.transfer_id = f"{request.request_id}-kv"
        self.limit = meter.admission.max_output_tokens or request.sampling.max_tokens
        self._detokenizer = IncrementalDetokenizer(gateway.tokenizer, prompt_ids)
        self._stops = StopMatcher(request.sampling.stop)
        self._active: dict[str, Any] = {}  # engine request id -> worker handle, while it may run
        self._slot = False
        self._prefill_observed = False
        self._last_token_s: float | None = None
        self.span = tracing.tracer().start_span("request", attributes={
            "request_id": request.request_id, "tenant": request.tenant, "prompt_tokens": len(prompt_ids)})
        self._first_tier = "decode"

    # ---- the stream ------------------------------------------------------------------------------

    async def chunks(self) -> AsyncIterator[GenerationChunk]:
        """The request's chunks. Before the first one, failures raise (the API answers with their
        status); after it, they end the stream with an ERROR chunk carrying the reason."""
        yielded = False
        try:
            async for chunk in self._serve():
                yielded = True
                yield chunk
        except _Stop as stop:
            self.meter.finish(stop.reason, self._now())
            yield self._final()
        except Exception as exc:
            if not yielded:
                raise
            message = exc.message if isinstance(exc, PdserveError) else "internal error; see the server log"
            if not isinstance(exc, PdserveError):
                log.exception("request %s failed mid-stream", self.request.request_id)
            self.meter.finish(FinishReason.ERROR, self._now())
            self.usage_extra["error"] = message
            yield self._final()
        finally:
            self._cleanup()

    async def _serve(self) -> AsyncIterator[GenerationChunk]:
        await self._queue()
        route = self.gateway.route(self.prompt_ids, record=True)
        decode = self.gateway.worker(route.decode_worker)
        self.usage_extra["decode_worker"] = route.decode_worker
        self.usage_extra["prefill_reason"] = route.reason
        placement = "prefill_pool" if route.prefill_worker is not None else (
            "colocated" if decode.tier == "colocated" else "decode_worker")
        metrics.prefill_placement_total.labels(where=placement).inc()
        self.span.set_attributes({"prefill_placement": placement, "prefill_reason": route.reason})
        if route.degraded:
            metrics.degraded_requests_total.inc()
            log.warning("request %s: %s (%s)", self.request.request_id, route.reason, route.decode_worker)
        receive = False
        if route.prefill_worker is not None:
            chunk, receive = await self._prefill(self.gateway.worker(route.prefill_worker), decode)
            if chunk is not None:
                yield chunk
            if self.meter.finished:
                yield self._final()
                return
        else:
            self.usage_extra["prefill_skipped"] = route.skip_prefill
        async for chunk in self._decode(decode, receive):
            yield chunk

    async def _queue(self) -> None:
        entry = QueueEntry(self.request.request_id, self.request.tenant, self.meter.admission.priority,
                           len(self.prompt_ids) + self.limit)
        span = tracing.child_span("queue", self.span, priority=entry.priority)
        bound_s = self.gateway.config.pools.start_timeout_s
        try:
            await self._wait(self.gateway.queue.acquire(entry), stall_s=bound_s)
        except _Stalled:
            raise Unavailable(f"no worker could take the request within {bound_s:.0f} s "
                              f"(cluster health: {self.gateway.health().detail}); retry later") from None
        finally:
            span.end()
        self._slot = True
        metrics.queue_seconds.observe(self._now() - self.meter.admission.admitted_s)

    # ---- prefill -----------------------------------------------------------------------------------

    async def _prefill(self, prefill: WorkerView, decode: WorkerView) -> tuple[GenerationChunk | None, bool]:
        """Run the prefill; (the first token's chunk, whether the decode worker receives the KV)."""
        self.meter.enter("prefill", self._now())
        self.usage_extra["prefill_worker"] = prefill.worker_id
        # A request that ends with its first token needs no KV on the decode side: nothing would ever claim it.
        push = KVPush(self.transfer_id, decode.info.kv_endpoint(self.gateway.config.kv.transport), len(self.prompt_ids),
                      decode.info.kv_control_endpoint or "") if self.limit > 1 else None
        engine_request = self._engine_request(f"{self.engine_key}-p", self.prompt_ids, 1, kv_push=push)
        metrics.requests_total.labels(tier="prefill").inc()
        started = self._now()
        load = self.gateway.local_load(prefill.worker_id)
        found_free = load.pending_prefill_tokens == 0
        load.pending_prefill_tokens += len(self.prompt_ids)
        try:
            result = await self._call(prefill, engine_request, prefill.handle.prefill.remote(engine_request))
            self._active.pop(engine_request.request_id, None)
        except _WorkerLost as lost:
            log.warning("request %s: prefill worker %s lost (%s); the decode worker computes the prompt",
                        self.request.request_id, prefill.worker_id, lost)
            metrics.kv_recompute_total.labels(cause="prefill_failed").inc()
            self.usage_extra["kv_recomputed"] = True
            return None, False
        finally:
            self.gateway.local_load(prefill.worker_id).pending_prefill_tokens -= len(self.prompt_ids)
        metrics.prefill_seconds.labels(tier="prefill").observe(self._now() - started)
        if result.first_token is None:  # aborted under us (worker stopping): compute on decode instead
            self.usage_extra["kv_recomputed"] = True
            return None, False
        if found_free:
            load.observe_prefill(result.engine_ms, len(self.prompt_ids) - result.num_cached_tokens)
        self.meter.observe_cached(result.num_cached_tokens)
        budget_metrics.observe_prefill(self.meter)
        self._prefill_observed = True
        self._first_tier = "prefill"
        # Only an end-of-sequence first token ends the request: "length" is the prefill's own max_tokens=1.
        chunk = self._accept([result.first_token], FinishReason.STOP if result.finish_reason == "stop" else None)
        self.meter.enter("transfer", self._now())
        return chunk, push is not None

    # ---- decode ------------------------------------------------------------------------------------

    async def _decode(self, decode: WorkerView, receive: bool) -> AsyncIterator[GenerationChunk]:
        migrations = 0
        while True:
            try:
                async for chunk in self._stream(decode, receive):
                    yield chunk
                return
            except _WorkerLost as lost:
                migrations += 1
                if migrations > MAX_MIGRATIONS:
                    raise PdserveError(f"request {self.request.request_id}: {migrations} decode workers failed") from lost
                decode = self._replacement(decode, lost)
                receive = False

    def _replacement(self, lost_worker: WorkerView, lost: _WorkerLost) -> WorkerView:
        self.gateway.forget(lost_worker.worker_id)
        route = self.gateway.route(self.prompt_ids + self.generated, exclude={lost_worker.worker_id})
        log.warning("request %s: decode worker %s lost (%s) after %d tokens; continuing on %s",
                    self.request.request_id, lost_worker.worker_id, lost, len(self.generated), route.decode_worker)
        metrics.migrations_total.inc()
        self.usage_extra["decode_worker"] = route.decode_worker
        return self.gateway.worker(route.decode_worker)

    async def _stream(self, decode: WorkerView, receive: bool) -> AsyncIterator[GenerationChunk]:
        ids = self.prompt_ids + self.generated
        engine_id = f"{self.engine_key}-d{len(self.generated)}"
        kv_receive = KVReceive(self.transfer_id, len(self.prompt_ids)) if receive else None
        engine_request = self._engine_request(engine_id, ids, self.limit - len(self.generated), kv_receive=kv_receive)
        metrics.requests_total.labels(tier="decode").inc()
        self._check_stop()  # cancelled or past the deadline while the last chunk was being sent: go no further
        if not receive:
            self.meter.enter("prefill", self._now())  # the decode worker computes the prompt first
        load = self.gateway.local_load(decode.worker_id)
        # The prompt alone (not a migration's prompt + tokens) computed by a free worker: a sample of its prefill cost.
        started, cost_sample = self._now(), load.running == 0 and not receive and not self.generated
        load.running += 1
        try:
            stream = decode.handle.generate.options(num_returns="streaming").remote(engine_request)
            self._active[engine_id] = decode.handle
            first = True
            while True:
                ref = await self._call(decode, engine_request, stream.__anext__(), end_ok=True)
                if ref is None:
                    raise _WorkerLost(f"the stream of {decode.worker_id} ended without a finish")
                outputs = await self._call(decode, engine_request, ref)
                for output in outputs:
                    if first:
                        self._observe_first_output(output, receive)
                        if cost_sample:
                            load.observe_prefill((self._now() - started) * 1000,
                                                 len(self.prompt_ids) - output.num_cached_tokens)
                        first = False
                    chunk = self._accept(output.token_ids, ENGINE_FINISH.get(output.finish_reason or "")
                                         if output.finished else None)
                    if chunk is not None:
                        yield chunk
                    if output.finished and not self.meter.finished:
                        self.meter.finish(FinishReason.ERROR, self._now())  # aborted by the engine itself
                        self.usage_extra["error"] = f"the engine of {decode.worker_id} aborted the request"
                    if self.meter.finished:
                        if output.finished:
                            self._active.pop(engine_id, None)  # ended in the engine: nothing to abort
                        yield self._final()
                        return
        finally:
            load.running -= 1

    def _observe_first_output(self, output: Any, receive: bool) -> None:
        self.meter.enter("decode", self._now())
        if not self._prefill_observed:  # the decode worker computed the prompt: its cache hits count
            self.meter.observe_cached(output.num_cached_tokens)
            budget_metrics.observe_prefill(self.meter)
            self._prefill_observed = True
        outcome = output.kv
        if not receive or outcome is None:
            return
        if outcome.complete:
            metrics.kv_transfer_bytes_total.inc(outcome.bytes)
            metrics.kv_transfer_seconds.observe(outcome.seconds)
        else:
            log.warning("request %s: KV transfer failed (%s); the decode worker recomputed the prompt",
                        self.request.request_id, outcome.failure)
            metrics.kv_recompute_total.labels(cause=metrics.recompute_cause(outcome.failure)).inc()
            self.usage_extra["kv_recomputed"] = True

    # ---- tokens ------------------------------------------------------------------------------------

    def _accept(self, token_ids: list[int], engine_finish: FinishReason | None) -> GenerationChunk | None:
        """Charge new tokens, turn the accepted ones into a chunk; the meter finishes when they end it."""
        now = self._now()
        verdict = self.meter.charge(token_ids, now)
        budget_metrics.observe_verdict(self.meter, verdict)
        self.gateway.quotas.record(self.request.tenant, "decode", num_tokens=verdict.num_accepted,
                                   cost_usd=verdict.cost_usd, now_s=now)
        accepted = list(token_ids[:verdict.num_accepted])
        text = self._stops.feed(self._detokenizer.add(accepted))
        if self._stops.stopped:
            self.meter.finish(FinishReason.STOP, now)
        elif engine_finish is not None and verdict.num_accepted == len(token_ids):
            self.meter.finish(engine_finish, now)
        if not accepted:
            return None
        self._observe_latency(len(accepted), now)
        self.generated.extend(accepted)
        return GenerationChunk(self.request.request_id, accepted, text)

    def _observe_latency(self, num_tokens: int, now: float) -> None:
        if self._last_token_s is None:
            ttft = now - self.meter.admission.admitted_s
            metrics.ttft_seconds.labels(tier=self._first_tier).observe(ttft)
            self.gateway.observe_first_token(ttft * 1000)
        else:
            gap = (now - self._last_token_s) / num_tokens
            for _ in range(num_tokens):
                metrics.inter_token_seconds.labels(tier="decode").observe(gap)
            self.gateway.observe_token_gap(gap * 1000, num_tokens)
        self._last_token_s = now

    def _final(self) -> GenerationChunk:
        text = "" if self._stops.stopped else self._stops.feed(self._detokenizer.flush()) + self._stops.flush()
        reason = self.meter.finish_reason or FinishReason.ERROR
        return GenerationChunk(self.request.request_id, [], text, reason, self.usage(),
                               error=self.usage_extra.get("error") if reason is FinishReason.ERROR else None)

    def usage(self) -> Usage:
        usage = self.meter.usage
        for name in ("prefill_worker", "decode_worker", "kv_recomputed", "prefill_skipped", "prefill_reason"):
            if name in self.usage_extra:
                setattr(usage, name, self.usage_extra[name])
        return usage

    # ---- engine requests and waits -----------------------------------------------------------------

    def _engine_request(self, engine_id: str, ids: list[int], max_tokens: int, *, kv_push: KVPush | None = None,
                        kv_receive: KVReceive | None = None) -> EngineRequest:
        sampling = self.request.sampling
        return EngineRequest(
            request_id=engine_id, prompt_ids=tuple(ids), max_tokens=max(max_tokens, 1), temperature=sampling.temperature,
            top_p=sampling.top_p, top_k=sampling.top_k, seed=sampling.seed, ignore_eos=sampling.ignore_eos,
            thinking=self._thinking_limits(),
            num_original_prompt_tokens=len(self.prompt_ids) if len(ids) > len(self.prompt_ids) else None,
            kv_push=kv_push, kv_receive=kv_receive, trace=tracing.inject_span(self.span))

    def _thinking_limits(self) -> ThinkingLimits | None:
        budget = self.meter.budget
        if budget.max_thinking_tokens is None and budget.min_thinking_tokens is None:
            return None
        return self.gateway.thinking_limits(budget)

    async def _call(self, worker: WorkerView, engine_request: EngineRequest, awaitable: Any, end_ok: bool = False) -> Any:
        """Await a worker call under the deadline and cancel; worker failures become `_WorkerLost`."""
        self._active.setdefault(engine_request.request_id, worker.handle)
        pools = self.gateway.config.pools
        stall_s = pools.engine_stall_timeout_s + pools.health_timeout_s
        try:
            return await self._wait(awaitable, stall_s=stall_s)
        except _Stalled:
            self._active.pop(engine_request.request_id, None)
            self.gateway.abort_later(worker.handle, engine_request.request_id)
            raise _WorkerLost(f"{worker.worker_id} sent nothing for {stall_s:.0f} s") from None
        except StopAsyncIteration:
            if end_ok:
                return None
            raise
        except _Stop:
            raise
        except Exception as exc:
            if worker_lost(exc):
                self._active.pop(engine_request.request_id, None)
                raise _WorkerLost(str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__) from exc
            raise

    def _check_stop(self) -> None:
        if self.running.cancelled.is_set():
            raise _Stop(FinishReason.CANCELLED)
        if self.meter.time_left_s(self._now()) <= 0:
            raise _Stop(FinishReason.DEADLINE)

    async def _wait(self, awaitable: Any, stall_s: float = float("inf")) -> Any:
        """Await under the request's deadline and cancel (`_Stop`) and a stall bound (`_Stalled`)."""
        task = asyncio.ensure_future(awaitable)
        cancelled = asyncio.ensure_future(self.running.cancelled.wait())
        time_left_s = self.meter.time_left_s(self._now())
        timeout = min(time_left_s, stall_s)
        try:
            done, _ = await asyncio.wait({task, cancelled}, timeout=None if timeout == float("inf") else max(timeout, 0),
                                         return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            task.cancel()
            raise
        finally:
            cancelled.cancel()
        if task in done:
            return task.result()
        task.cancel()
        if not self.running.cancelled.is_set() and stall_s < time_left_s:
            raise _Stalled()
        raise _Stop(FinishReason.CANCELLED if self.running.cancelled.is_set() else FinishReason.DEADLINE)

    def _cleanup(self) -> None:
        for engine_id, handle in self._active.items():
            self.gateway.abort_later(handle, engine_id)
        self._active.clear()
        if self._slot:
            self.gateway.queue.release()
            self._slot = False
        if not self.meter.finished:
            self.meter.finish(FinishReason.CANCELLED, self._now())  # the client went away
        budget_metrics.observe_finished(self.meter)
        metrics.requests_finished_total.labels(reason=self.meter.finish_reason.value).inc()
        self.gateway.observe_finish(len(self.generated), self.limit)
        usage = self.usage()
        self.span.set_attributes({"finish_reason": self.meter.finish_reason.value, "output_tokens": len(self.generated),
                                  "prefill_worker": usage.prefill_worker, "decode_worker": usage.decode_worker,
                                  "kv_recomputed": usage.kv_recomputed, "prefill_skipped": usage.prefill_skipped})
        self.span.end()

    def _now(self) -> float:
        return self.gateway.clock()


__all__ = ["RequestRun", "Unavailable", "worker_lost"]
