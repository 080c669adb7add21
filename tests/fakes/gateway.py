"""`FakeGateway`: the in-memory twin of `BaseGateway`, for tests of the API layer and clients.

Deterministic: a prompt is "tokenized" into whitespace-separated words (token ids are their positions),
and the answer echoes those words back, one token per chunk, then stops (`stop`), unless `ignore_eos`
keeps it cycling through them until `max_tokens` (`length`). A stop string ends the answer before it.
Knobs for tests: `fail_next` (an error raised before the first chunk), `error_after` (an ERROR chunk
after that many tokens), `token_delay_s`, `hold` (an Event each stream waits on after its first token),
`ready`. It records what a test asserts on: `requests`, `running` (id -> tenant), `closed` (ids whose
iterator was closed or cancelled before the end), `finished`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from orchestrator.errors import PdserveError, PermissionDenied
from orchestrator.gateway.base import BaseGateway, Health, ModelInfo
from orchestrator.request import FinishReason, GenerationChunk, Request, Usage

MODEL = "fake-model"
MAX_MODEL_LEN = 64


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
        self.fail_next: PdserveError | None = None
        self.error_after: int | None = None
        self.hold: asyncio.Event | None = None
        self.ready = True
        self.requests: list[Request] = []
        self.running: dict[str, str] = {}
        self.closed: list[str] = []
        self.finished: list[str] = []
        self._cancelled: set[str] = set()

    def generate(self, request: Request) -> AsyncIterator[GenerationChunk]:
        return self._run(request)

    async def _run(self, request: Request) -> AsyncIterator[GenerationChunk]:
        if self.fail_next is not None:
            error, self.fail_next = self.fail_next, None
            raise error
        self.requests.append(request)
        self.running[request.request_id] = request.tenant
        ended = False
        try:
            async for chunk in self._chunks(request):
                ended = chunk.finished
                yield chunk
        finally:
            self.running.pop(request.request_id, None)
            (self.finished if ended else self.closed).append(request.request_id)

    async def _chunks(self, request: Request) -> AsyncIterator[GenerationChunk]:
        words, sampling = prompt_words(request), request.sampling
        usage = Usage(prompt_tokens=self.count_prompt_tokens(request), prefill_worker="prefill-0",
                      decode_worker="decode-0", energy_j=0.5, cost_usd=1e-6)
        text_so_far = ""
        for i in range(sampling.max_tokens):
            if request.request_id in self._cancelled:
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
            if i == 0 and self.hold is not None:
                await self.hold.wait()
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
        self._cancelled.add(request_id)
        return True

    def models(self) -> list[ModelInfo]:
        return [self.model]

    def health(self) -> Health:
        return Health(self.ready, {"pools": {"prefill": int(self.ready), "decode": int(self.ready)}})

    async def status(self) -> dict[str, Any]:
        worker = {"load": len(self.running), "healthy": self.ready}
        return {
            "model": self.model.id, "ready": self.ready,
            "pools": {
                "prefill": {"desired_replicas": 1, "actual_replicas": 1, "workers": [{"id": "prefill-0", **worker}]},
                "decode": {"desired_replicas": 1, "actual_replicas": 1, "workers": [{"id": "decode-0", **worker}]},
            },
            "transfers": {"recent_gb_per_s": 1.25, "num_recomputed": 0},
            "planner": {"prefill_replicas": 1, "decode_replicas": 1},
        }

    def count_prompt_tokens(self, request: Request) -> int:
        return len(prompt_words(request))  # a chat's roles and <end> markers are words too: its "template"
