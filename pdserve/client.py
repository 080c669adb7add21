"""The pdserve client SDK: `Client` (blocking) and `AsyncClient` (asyncio), over gRPC.

A whole answer:

    from pdserve import Client

    with Client("127.0.0.1:50051") as client:
        answer = client.generate("The capital of France is", max_tokens=16, temperature=0)
        print(answer.text, answer.finish_reason, answer.usage.output_tokens)

A token stream, and chat:

    with Client("127.0.0.1:50051") as client:
        for chunk in client.generate("Once upon a time", max_tokens=64, stream=True):
            print(chunk.text, end="", flush=True)
        reply = client.chat([{"role": "user", "content": "Say hi"}], max_tokens=32)

Asynchronously:

    import asyncio
    from pdserve import AsyncClient

    async def main():
        async with AsyncClient("127.0.0.1:50051") as client:
            async for chunk in await client.generate("Hello", max_tokens=8, stream=True):
                print(chunk.text, end="")

    asyncio.run(main())

Every call takes `timeout_s` (seconds from now) and `deadline` (an absolute `time.time()`); the
tighter one wins. A call that fails with UNAVAILABLE before its first token is retried with
exponential backoff (`max_retries`, never past the deadline); once a token arrived, errors surface.
Failures raise the typed exceptions of `pdserve.errors`. Needs only grpcio and protobuf.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict, Unpack

import grpc

from orchestrator.api import convert
from orchestrator.api.pb import inference_pb2 as pb
from orchestrator.api.pb import inference_pb2_grpc
from orchestrator.gateway.base import ModelInfo
from orchestrator.request import Budget, ChatMessage, FinishReason, GenerationChunk, Prompt, Request, Sampling, Usage
from pdserve.errors import DeadlineExceeded, PdserveError, ServerError, from_rpc_error

DEFAULT_TARGET = "127.0.0.1:50051"
Chunk = GenerationChunk


class GenerateOptions(TypedDict, total=False):
    """Options of `generate` and `chat`; unset ones take the server's defaults."""

    model: str                 # the served model when unset
    max_tokens: int
    temperature: float         # 0: greedy
    top_p: float
    top_k: int
    seed: int
    stop: Sequence[str]
    ignore_eos: bool
    budget: Budget | Mapping[str, Any]  # e.g. {"max_thinking_tokens": 256, "deadline_ms": 2000}
    request_id: str            # to cancel it from elsewhere; the server makes one when unset


@dataclass(frozen=True)
class Completion:
    """A whole answer."""

    request_id: str
    text: str
    token_ids: list[int]
    finish_reason: FinishReason
    usage: Usage


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter for UNAVAILABLE before the first token."""

    max_retries: int = 3
    initial_backoff_s: float = 0.2
    max_backoff_s: float = 5.0
    multiplier: float = 2.0

    def delay_s(self, attempt: int) -> float:
        """The pause before retry number `attempt` (0-based)."""
        return random.uniform(0, min(self.max_backoff_s, self.initial_backoff_s * self.multiplier**attempt))


# ---- what both clients share ------------------------------------------------------------------------

def build_request(prompt: Prompt, options: Mapping[str, Any]) -> pb.GenerateRequest:
    """`generate`/`chat` options -> the wire request. Raises TypeError on an unknown option."""
    unknown = set(options) - set(GenerateOptions.__annotations__)
    if unknown:
        raise TypeError(f"unknown option(s) {sorted(unknown)}: use {sorted(GenerateOptions.__annotations__)}")
    sampling = {k: options[k] for k in ("max_tokens", "temperature", "top_p", "top_k", "seed", "ignore_eos")
                if options.get(k) is not None}
    stop = options.get("stop") or ()
    stop = (stop,) if isinstance(stop, str) else tuple(stop)  # one stop string, not its characters
    message = convert.request_to_pb(Request(
        prompt=prompt, model=options.get("model"), request_id=options.get("request_id") or "",
        sampling=Sampling(**sampling, stop=stop), budget=_budget(options.get("budget"))))
    # Fields the caller did not set stay unset on the wire, so the server's defaults apply.
    for name in ("max_tokens", "temperature", "top_p", "top_k", "seed"):
        if name not in sampling:
            message.sampling.ClearField(name)
    return message


def _budget(budget: Budget | Mapping[str, Any] | None) -> Budget:
    if budget is None or isinstance(budget, Budget):
        return budget or Budget()
    unknown = set(budget) - set(Budget.__dataclass_fields__)
    if unknown:
        raise TypeError(f"unknown budget field(s) {sorted(unknown)}: use {sorted(Budget.__dataclass_fields__)}")
    return Budget(**budget)


def text_prompt(prompt: str | Sequence[int]) -> Prompt:
    if isinstance(prompt, str):
        return Prompt(text=prompt)
    return Prompt(token_ids=tuple(int(t) for t in prompt))


def chat_prompt(messages: Sequence[Mapping[str, str] | tuple[str, str]]) -> Prompt:
    """`[{"role": "user", "content": "hi"}]` or `[("user", "hi")]` -> a chat prompt."""
    parsed = []
    for message in messages:
        role, content = (message["role"], message["content"]) if isinstance(message, Mapping) else message
        parsed.append(ChatMessage(role, content))
    return Prompt(messages=tuple(parsed))


def status_document(reply: pb.GetClusterStatusResponse) -> dict[str, Any]:
    """The status JSON of a GetClusterStatus reply; ServerError when the server sent something else."""
    try:
        document = json.loads(reply.status_json or "{}")
    except json.JSONDecodeError as exc:
        raise ServerError(f"the server's status document is not JSON ({exc.msg})") from None
    if not isinstance(document, dict):
        raise ServerError("the server's status document is not a JSON object")
    return document


def _channel_credentials(ssl: bool, root_certificates: bytes | str | Path | None) -> grpc.ChannelCredentials | None:
    if root_certificates is not None and not isinstance(root_certificates, bytes):
        root_certificates = Path(root_certificates).read_bytes()
    if not ssl and root_certificates is None:
        return None
    return grpc.ssl_channel_credentials(root_certificates=root_certificates)


def _end_time(timeout_s: float | None, deadline: float | None) -> float | None:
    """The call's end on the monotonic clock (None: no limit)."""
    ends = []
    if timeout_s is not None:
        ends.append(time.monotonic() + timeout_s)
    if deadline is not None:
        ends.append(time.monotonic() + (deadline - time.time()))
    return min(ends) if ends else None


def _remaining(end: float | None) -> float | None:
    if end is None:
        return None
    left = end - time.monotonic()
    if left <= 0:
        raise DeadlineExceeded("the call's timeout or deadline passed before the server answered")
    return left


def _may_retry(error: PdserveError, attempt: int, policy: RetryPolicy, end: float | None, pause_s: float) -> bool:
    if error.code != "UNAVAILABLE" or attempt >= policy.max_retries:
        return False
    return end is None or time.monotonic() + pause_s < end


class _Accumulator:
    """Gathers a stream into a `Completion`."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.token_ids: list[int] = []
        self.last: GenerationChunk | None = None

    def add(self, chunk: GenerationChunk) -> None:
        if chunk.finish_reason is FinishReason.ERROR:
            raise ServerError(f"the generation failed: {chunk.error or 'no reason given'}", code="INTERNAL")
        self.texts.append(chunk.text)
        self.token_ids += chunk.token_ids
        self.last = chunk

    def result(self) -> Completion:
        if self.last is None or not self.last.finished:
            raise ServerError("the stream ended without a finish reason")
        return Completion(self.last.request_id, "".join(self.texts), self.token_ids, self.last.finish_reason,
                          self.last.usage or Usage())


class _Base:
    def __init__(self, target: str, *, api_key: str | None, ssl: bool, root_certificates: bytes | str | Path | None,
                 timeout_s: float | None, retry: RetryPolicy | None, options: Sequence[tuple[str, Any]]) -> None:
        self.target = target
        self.timeout_s = timeout_s
        self.retry = retry or RetryPolicy()
        self._metadata = (("authorization", f"Bearer {api_key}"),) if api_key else ()
        self._credentials = _channel_credentials(ssl, root_certificates)
        self._options = list(options)

    def _end(self, timeout_s: float | None, deadline: float | None) -> float | None:
        return _end_time(self.timeout_s if timeout_s is None else timeout_s, deadline)

    def __repr__(self) -> str:  # never shows the API key
        return f"{type(self).__name__}({self.target!r}, tls={self._credentials is not None})"


# ---- the blocking client ----------------------------------------------------------------------------

class Client(_Base):
    """Blocking client of a pdserve cluster's gRPC API.

    Args:
        target: "host:port" of the gRPC API.
        api_key: sent as `authorization: Bearer KEY` when the server requires keys.
        ssl: use TLS with the system's root certificates (or `root_certificates`).
        root_certificates: PEM bytes or a file path of the CA that signed the server (implies TLS).
        timeout_s: the default per-call timeout (None: none).
        retry: the backoff policy for UNAVAILABLE before the first token.
        options: extra gRPC channel options, e.g. `[("grpc.ssl_target_name_override", "localhost")]`.
    """

    def __init__(self, target: str = DEFAULT_TARGET, *, api_key: str | None = None, ssl: bool = False,
                 root_certificates: bytes | str | Path | None = None, timeout_s: float | None = None,
                 retry: RetryPolicy | None = None, options: Sequence[tuple[str, Any]] = ()) -> None:
        super().__init__(target, api_key=api_key, ssl=ssl, root_certificates=root_certificates,
                         timeout_s=timeout_s, retry=retry, options=options)
        if self._credentials is None:
            self._channel = grpc.insecure_channel(target, options=self._options)
        else:
            self._channel = grpc.secure_channel(target, self._credentials, options=self._options)
        self._stub = inference_pb2_grpc.InferenceStub(self._channel)

    def generate(self, prompt: str | Sequence[int], *, stream: bool = False, timeout_s: float | None = None,
                 deadline: float | None = None, **options: Unpack[GenerateOptions]) -> Completion | Iterator[Chunk]:
        """Generate from a text (or token-id) prompt.

        Returns a `Completion` (text, token_ids, finish_reason, usage), or with `stream=True` an
        iterator of `Chunk`s (text, token_ids; the last has finish_reason and usage; a chunk with
        finish_reason ERROR carries `error`). Closing the iterator early cancels the request.
        Raises InvalidRequest, NotFound, QuotaExceeded, Unauthenticated, DeadlineExceeded, Unavailable, ServerError.

            answer = client.generate("2 + 2 =", max_tokens=4, temperature=0, budget={"deadline_ms": 5000})
        """
        message = build_request(text_prompt(prompt), options)
        chunks = self._stream(message, self._end(timeout_s, deadline))
        return chunks if stream else self._whole(chunks)

    def chat(self, messages: Sequence[Mapping[str, str] | tuple[str, str]], *, stream: bool = False,
             timeout_s: float | None = None, deadline: float | None = None,
             **options: Unpack[GenerateOptions]) -> Completion | Iterator[Chunk]:
        """Answer a conversation (the server applies the model's chat template); like `generate`.

            reply = client.chat([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}])
        """
        message = build_request(chat_prompt(messages), options)
        chunks = self._stream(message, self._end(timeout_s, deadline))
        return chunks if stream else self._whole(chunks)

    def cancel(self, request_id: str, *, timeout_s: float | None = None) -> bool:
        """Cancel a running request of your tenant; False when it already finished.

        Raises PermissionDenied for another tenant's request.
        """
        reply = self._unary(self._stub.Cancel, pb.CancelRequest(request_id=request_id), self._end(timeout_s, None))
        return reply.cancelled

    def models(self, *, timeout_s: float | None = None) -> list[ModelInfo]:
        """The served models (id, max_model_len, owned_by)."""
        reply = self._unary(self._stub.ListModels, pb.ListModelsRequest(), self._end(timeout_s, None))
        return [convert.model_from_pb(m) for m in reply.models]

    def status(self, *, timeout_s: float | None = None) -> dict[str, Any]:
        """The cluster status document: pools, workers, load, health, transfer rates, planner."""
        reply = self._unary(self._stub.GetClusterStatus, pb.GetClusterStatusRequest(), self._end(timeout_s, None))
        return status_document(reply)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def _unary(self, method, request, end: float | None):
        attempt = 0
        while True:
            try:
                return method(request, timeout=_remaining(end), metadata=self._metadata)
            except grpc.RpcError as exc:
                error = from_rpc_error(exc)
            pause_s = self.retry.delay_s(attempt)
            if not _may_retry(error, attempt, self.retry, end, pause_s):
                raise error
            time.sleep(pause_s)
            attempt += 1

    def _stream(self, message: pb.GenerateRequest, end: float | None) -> Iterator[Chunk]:
        attempt = 0
        while True:
            call = self._stub.Generate(message, timeout=_remaining(end), metadata=self._metadata)
            received = False
            try:
                for reply in call:
                    received = True
                    yield convert.chunk_from_pb(reply)
                return
            except grpc.RpcError as exc:
                error = from_rpc_error(exc)
            finally:
                call.cancel()  # a no-op once the call ended; cancels it when the caller stopped iterating
            pause_s = self.retry.delay_s(attempt)
            if received or not _may_retry(error, attempt, self.retry, end, pause_s):
                raise error
            time.sleep(pause_s)
            attempt += 1

    @staticmethod
    def _whole(chunks: Iterator[Chunk]) -> Completion:
        gathered = _Accumulator()
        try:
            for chunk in chunks:
                gathered.add(chunk)
        finally:
            chunks.close()
        return gathered.result()


# ---- the asyncio client -----------------------------------------------------------------------------

class AsyncClient(_Base):
    """The asyncio twin of `Client` (same arguments); use it from one event loop.

        async with AsyncClient("127.0.0.1:50051") as client:
            answer = await client.generate("Hello", max_tokens=8)
            async for chunk in await client.generate("Hello", max_tokens=8, stream=True):
                ...
    """

    def __init__(self, target: str = DEFAULT_TARGET, *, api_key: str | None = None, ssl: bool = False,
                 root_certificates: bytes | str | Path | None = None, timeout_s: float | None = None,
                 retry: RetryPolicy | None = None, options: Sequence[tuple[str, Any]] = ()) -> None:
        super().__init__(target, api_key=api_key, ssl=ssl, root_certificates=root_certificates,
                         timeout_s=timeout_s, retry=retry, options=options)
        if self._credentials is None:
            self._channel = grpc.aio.insecure_channel(target, options=self._options)
        else:
            self._channel = grpc.aio.secure_channel(target, self._credentials, options=self._options)
        self._stub = inference_pb2_grpc.InferenceStub(self._channel)

    async def generate(self, prompt: str | Sequence[int], *, stream: bool = False, timeout_s: float | None = None,
                       deadline: float | None = None,
                       **options: Unpack[GenerateOptions]) -> Completion | AsyncIterator[Chunk]:
        """Like `Client.generate`; with `stream=True` the awaited result is an async iterator of chunks."""
        message = build_request(text_prompt(prompt), options)
        chunks = self._stream(message, self._end(timeout_s, deadline))
        return chunks if stream else await self._whole(chunks)

    async def chat(self, messages: Sequence[Mapping[str, str] | tuple[str, str]], *, stream: bool = False,
                   timeout_s: float | None = None, deadline: float | None = None,
                   **options: Unpack[GenerateOptions]) -> Completion | AsyncIterator[Chunk]:
        """Like `Client.chat`."""
        message = build_request(chat_prompt(messages), options)
        chunks = self._stream(message, self._end(timeout_s, deadline))
        return chunks if stream else await self._whole(chunks)

    async def cancel(self, request_id: str, *, timeout_s: float | None = None) -> bool:
        """Like `Client.cancel`."""
        reply = await self._unary(self._stub.Cancel, pb.CancelRequest(request_id=request_id),
                                  self._end(timeout_s, None))
        return reply.cancelled

    async def models(self, *, timeout_s: float | None = None) -> list[ModelInfo]:
        """Like `Client.models`."""
        reply = await self._unary(self._stub.ListModels, pb.ListModelsRequest(), self._end(timeout_s, None))
        return [convert.model_from_pb(m) for m in reply.models]

    async def status(self, *, timeout_s: float | None = None) -> dict[str, Any]:
        """Like `Client.status`."""
        reply = await self._unary(self._stub.GetClusterStatus, pb.GetClusterStatusRequest(),
                                  self._end(timeout_s, None))
        return status_document(reply)

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.close()

    async def _unary(self, method, request, end: float | None):
        attempt = 0
        while True:
            try:
                return await method(request, timeout=_remaining(end), metadata=self._metadata)
            except grpc.aio.AioRpcError as exc:
                error = from_rpc_error(exc)
            pause_s = self.retry.delay_s(attempt)
            if not _may_retry(error, attempt, self.retry, end, pause_s):
                raise error
            await asyncio.sleep(pause_s)
            attempt += 1

    async def _stream(self, message: pb.GenerateRequest, end: float | None) -> AsyncIterator[Chunk]:
        attempt = 0
        while True:
            call = self._stub.Generate(message, timeout=_remaining(end), metadata=self._metadata)
            received = False
            try:
                async for reply in call:
                    received = True
                    yield convert.chunk_from_pb(reply)
                return
            except grpc.aio.AioRpcError as exc:
                error = from_rpc_error(exc)
            finally:
                call.cancel()
            pause_s = self.retry.delay_s(attempt)
            if received or not _may_retry(error, attempt, self.retry, end, pause_s):
                raise error
            await asyncio.sleep(pause_s)
            attempt += 1

    @staticmethod
    async def _whole(chunks: AsyncIterator[Chunk]) -> Completion:
        gathered = _Accumulator()
        try:
            async for chunk in chunks:
                gathered.add(chunk)
        finally:
            await chunks.aclose()
        return gathered.result()
