"""`FakeGateway`: the in-memory twin of `BaseGateway`, for tests of the API layer and clients.

Deterministic: a prompt is "tokenized" into whitespace-separated words (token ids are their positions),
and the answer echoes those words back, one token per chunk, then stops (`stop`), unless `ignore_eos`
keeps it cycling through them until `max_tokens` (`length`). A stop string ends the answer before it.
Knobs for tests: `fail_next` (an error, or a list of errors, raised before the first chunk: one per
request), `error_after` (an ERROR chunk after that many tokens), `token_delay_s`, `hold` (an Event each
stream waits on after its first token; `cancel` ends the wait too), `ready`. It records what a test
asserts on: `requests`, `running` (id -> tenant), `closed` (ids whose iterator was closed or cancelled
before the end), `finished`. `status()` returns a cluster status document of the shape the real
gateway builds (`orchestrator.gateway.status`), one worker per pool.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

from orchestrator.errors import PdserveError, PermissionDenied
from orchestrator.gateway.base import BaseGateway, Health, ModelInfo
from orchestrator.request import FinishReason, GenerationChunk, Request, Usage

MODEL = "fake-model"
MAX_MODEL_LEN = 64
NUM_TOTAL_BLOCKS = 1024
BLOCKS_PER_REQUEST = 4
# The top-level keys of the cluster status document (`orchestrator.gateway.status`).
STATUS_KEYS = ("model", "ready", "mode", "pools", "transfers", "requests", "planner")


def prompt_words(request: Request) -> list[str]:
    prompt = request.prompt
    if prompt.text is not None:
        return prompt.text.split() or [prompt.text]
    if prompt.token_ids is not None:
        return [f"t{t}" for t in prompt.token_ids]
    words = []
    for message in prompt.messages or ():
        words += [message.role, *message.content.split(), "<end>"]
    return words


class FakeGateway(BaseGateway):
    def __init__(self, *, max_model_len: int = MAX_MODEL_LEN, token_delay_s: float = 0.0) -> None:
        self.model = ModelInfo(MODEL, max_model_len)
        self.token_delay_s = token_delay_s
        self.fail_next: PdserveError | list[PdserveError] | None = None
        self.error_after: int | None = None
        self.hold: asyncio.Event | None = None
        self.ready = True
        self.requests: list[Request] = []
        self.running: dict[str, str] = {}
        self.closed: list[str] = []
        self.finished: list[str] = []
        self._cancelled: dict[str, asyncio.Event] = {}

    def generate(self, request: Request) -> AsyncIterator[GenerationChunk]:
        return self._run(request)

    async def _run(self, request: Request) -> AsyncIterator[GenerationChunk]:
        error = self._next_failure()
        if error is not None:
            raise error
        self.requests.append(request)
        self.running[request.request_id] = request.tenant
        self._cancelled[request.request_id] = asyncio.Event()
        ended = False
        try:
            async with aclosing(self._chunks(request)) as chunks:
                async for chunk in chunks:
                    ended = chunk.finished
                    yield chunk
        finally:
            self.running.pop(request.request_id, None)
            (self.finished if ended else self.closed).append(request.request_id)

    def _next_failure(self) -> PdserveError | None:
        if isinstance(self.fail_next, list):
            return self.fail_next.pop(0) if self.fail_next else None
        error, self.fail_next = self.fail_next, None
        return error

    async def _pause(self, request_id: str) -> None:
        """Wait on `hold` (if set) until it is set or the request is cancelled."""
        if self.hold is None:
            return
        waits = [asyncio.ensure_future(self.hold.wait()), asyncio.ensure_future(self._cancelled[request_id].wait())]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()

    async def _chunks(self, request: Request) -> AsyncIterator[GenerationChunk]:
        words, sampling = prompt_words(request), request.sampling
        usage = Usage(prompt_tokens=self.count_prompt_tokens(request), prefill_worker="prefill-0",
                      decode_worker="decode-0", energy_j=0.5, cost_usd=1e-6)
        text_so_far = ""
        for i in range(sampling.max_tokens):
            if self._cancelled[request.request_id].is_set():
                yield self._last(request, FinishReason.CANCELLED, usage)
                return
            if self.error_after is not None and i >= self.error_after:
                yield GenerationChunk(request.request_id, finish_reason=FinishReason.ERROR, usage=usage,
                                      error="decode worker lost")
                return
            if i == len(words) and not sampling.ignore_eos:
                yield self._last(request, FinishReason.STOP, usage)
                return
            word = words[i % len(words)] + " "
            if any(stop in text_so_far + word for stop in sampling.stop):
                yield self._last(request, FinishReason.STOP, usage)
                return
            text_so_far += word
            usage.output_tokens += 1
            finish = FinishReason.LENGTH if i == sampling.max_tokens - 1 else None
            yield GenerationChunk(request.request_id, [i], word, finish, usage if finish else None)
            if i == 0:
                await self._pause(request.request_id)
            await asyncio.sleep(self.token_delay_s)

    @staticmethod
    def _last(request: Request, reason: FinishReason, usage: Usage) -> GenerationChunk:
        return GenerationChunk(request.request_id, finish_reason=reason, usage=usage)

    async def cancel(self, request_id: str, tenant: str) -> bool:
        owner = self.running.get(request_id)
        if owner is None:
            return False
        if owner != tenant:
            raise PermissionDenied(f"request {request_id} belongs to another tenant")
        self._cancelled[request_id].set()
        return True

    def models(self) -> list[ModelInfo]:
        return [self.model]

    def health(self) -> Health:
        return Health(self.ready, {"pools": {"prefill": int(self.ready), "decode": int(self.ready)}})

    async def status(self) -> dict[str, Any]:
        in_flight = len(self.running)
        return {
            "model": self.model.id, "ready": self.ready, "mode": "disaggregated",
            "pools": {tier: self._pool(tier, in_flight) for tier in ("prefill", "decode")},
            "transfers": {"recent_gb_per_s": 1.25, "transfer_gb_per_s": 2.5,
                          "bytes_total": 2_097_152 * len(self.finished), "num_completed": len(self.finished),
                          "num_recomputed": 0},
            "requests": {"in_flight": in_flight, "queued": 0, "total": len(self.requests)},
            "planner": {"enabled": False, "prefill_replicas": 1, "decode_replicas": 1,
                        "last_reasons": ["planner off: fixed pool sizes"]},
        }

    def _pool(self, tier: str, in_flight: int) -> dict[str, Any]:
        used = min(NUM_TOTAL_BLOCKS, BLOCKS_PER_REQUEST * in_flight) if tier == "decode" else 0
        worker = {
            "id": f"{tier}-0", "tier": tier, "state": "ready" if self.ready else "starting", "healthy": self.ready,
            "num_running": in_flight if tier == "decode" else 0, "num_waiting": 0,
            "kv_usage": used / NUM_TOTAL_BLOCKS, "num_free_blocks": NUM_TOTAL_BLOCKS - used,
            "num_total_blocks": NUM_TOTAL_BLOCKS, "num_handoffs": 0,
            "kv_endpoint": f"tcp://127.0.0.1:{5600 if tier == 'prefill' else 5601}",
        }
        return {"desired_replicas": 1, "actual_replicas": int(self.ready), "workers": [worker]}

    def count_prompt_tokens(self, request: Request) -> int:
        return len(prompt_words(request))  # a chat's roles and <end> markers are words too: its "template"
