"""Drivers that send one benchmark request and stream its tokens back, one per API.

Both drivers turn a request (prompt token ids, exact output length) into a stream of `StreamEvent`s
and convert every failure into `RequestFailed(reason, message)` at this boundary, so `loadgen` counts
failures by a short reason (`UNAVAILABLE`, `http_429`, `connection_error`, `stream_error`, ...).
Called only from the benchmark's event loop.

Usage is normalised to the proto `Usage` field names (`output_tokens`, `queue_ms`, `kv_recomputed`, ...)
whatever the API, so reports compare gRPC and HTTP runs field by field.
"""

from __future__ import annotations

import abc
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from orchestrator.errors import Unavailable


@dataclass(frozen=True)
class StreamEvent:
    """New tokens (`num_tokens` > 0), or the end of the stream (`finish_reason` and maybe `usage`)."""

    num_tokens: int = 0
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None


@dataclass(frozen=True)
class ServerInfo:
    """What a probe learned: the served model and its context length (0: unknown)."""

    model: str
    max_model_len: int


class RequestFailed(Exception):
    """One request failed; `reason` is the short key failures are counted by."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason, self.message = reason, message


class BaseEndpoint(abc.ABC):
    """One API of the target. Open with `probe()`, then `stream()` many times concurrently, then `close()`."""

    def __init__(self, target: str, *, model: str | None = None, api_key: str | None = None,
                 temperature: float = 0.0) -> None:
        self.target, self.model, self.api_key, self.temperature = target, model, api_key, temperature

    @abc.abstractmethod
    async def probe(self, timeout_s: float) -> ServerInfo:
        """List the served models; raises `Unavailable` when the target cannot be reached."""

    @abc.abstractmethod
    def stream(self, token_ids: list[int], output_tokens: int) -> AsyncIterator[StreamEvent]:
        """Send one request (greedy unless `temperature` > 0, `ignore_eos` so exactly `output_tokens`
        come back) and yield its events; raises `RequestFailed`."""

    async def cluster_status(self, timeout_s: float) -> dict[str, Any]:
        """The cluster status document (gRPC `GetClusterStatus`); raises `RequestFailed`."""
        raise RequestFailed("unsupported", f"{type(self).__name__} cannot read the cluster status")

    async def close(self) -> None:
        """Release connections; the endpoint is unusable afterwards."""


def normalise_usage(raw: dict[str, Any]) -> dict[str, Any]:
    """OpenAI-shaped or proto-shaped usage -> proto `Usage` field names.

    pdserve's extra fields may be flat or nested under a `pdserve` key; OpenAI's `completion_tokens`
    and `prompt_tokens_details.cached_tokens` map to `output_tokens` and `cached_tokens`.
    """
    usage = {k: v for k, v in raw.items() if not isinstance(v, dict)}
    for nested in ("pdserve", "prompt_tokens_details", "completion_tokens_details"):
        if isinstance(raw.get(nested), dict):
            usage.update({k: v for k, v in raw[nested].items() if k not in usage})
    if "output_tokens" not in usage and "completion_tokens" in usage:
        usage["output_tokens"] = usage["completion_tokens"]
    return usage


def _event_from_openai_chunk(chunk: dict[str, Any]) -> StreamEvent | None:
    """One SSE chunk of `/v1/completions` -> an event (None for chunks that carry nothing)."""
    if chunk.get("error"):
        error = chunk["error"]
        message = error.get("message", str(error)) if isinstance(error, dict) else str(error)
        raise RequestFailed("stream_error", message)
    choices = chunk.get("choices") or []
    usage = normalise_usage(chunk["usage"]) if chunk.get("usage") else None
    finish = next((c.get("finish_reason") for c in choices if c.get("finish_reason")), None)
    # A choice with text is one token (the server streams token by token); an empty text that
    # carries only the finish reason is not. A text-less token (a partial UTF-8 sequence) comes
    # with an explicit token id list when the server sends one.
    num_tokens = sum(len(c["token_ids"]) if c.get("token_ids") else int(bool(c.get("text"))) for c in choices)
    if finish == "error":
        raise RequestFailed("stream_error", str(chunk.get("error") or "the stream ended with finish_reason error"))
    if not num_tokens and not finish and not usage:
        return None
    return StreamEvent(num_tokens, finish, usage)


class HttpEndpoint(BaseEndpoint):
    """The OpenAI-compatible HTTP API: streaming `/v1/completions` with a token-id prompt."""

    def __init__(self, target: str, **kwargs: Any) -> None:
        super().__init__(target, **kwargs)
        base = target if "://" in target else f"http://{target}"
        self.base_url = base.rstrip("/")
        self._session = None

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def _open(self):
        import aiohttp

        if self._session is None:
            # limit=0: an open-loop benchmark must not queue requests behind a client-side pool.
            connector = aiohttp.TCPConnector(limit=0)
            self._session = aiohttp.ClientSession(connector=connector, headers=self._headers(),
                                                  timeout=aiohttp.ClientTimeout(total=None))
        return self._session

    async def probe(self, timeout_s: float) -> ServerInfo:
        import aiohttp

        try:
            async with self._open().get(f"{self.base_url}/v1/models",
                                        timeout=aiohttp.ClientTimeout(total=timeout_s)) as response:
                body = await response.json(content_type=None)
                if response.status != 200:
                    raise Unavailable(f"{self.base_url}/v1/models answered HTTP {response.status}: "
                                      f"{_error_message(body)}")
        except (aiohttp.ClientError, TimeoutError, json.JSONDecodeError) as exc:
            raise Unavailable(f"cannot reach the HTTP API at {self.base_url}: {exc or type(exc).__name__}") from None
        models = body.get("data") or []
        if not models and not self.model:
            raise Unavailable(f"{self.base_url}/v1/models lists no model")
        first = models[0] if models else {}
        self.model = self.model or first.get("id")
        return ServerInfo(self.model, int(first.get("max_model_len") or 0))

    async def stream(self, token_ids: list[int], output_tokens: int) -> AsyncIterator[StreamEvent]:
        import aiohttp

        body = {"model": self.model, "prompt": token_ids, "max_tokens": output_tokens, "stream": True,
                "stream_options": {"include_usage": True}, "temperature": self.temperature, "ignore_eos": True}
        try:
            async with self._open().post(f"{self.base_url}/v1/completions", json=body) as response:
                if response.status != 200:
                    text = await response.text()
                    raise RequestFailed(f"http_{response.status}", _error_message(_json_or_text(text)))
                async for event in _sse_events(response):
                    yield event
        except aiohttp.ClientError as exc:
            raise RequestFailed("connection_error", str(exc) or type(exc).__name__) from None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


async def _sse_events(response) -> AsyncIterator[StreamEvent]:
    """Parse `data:` lines of a server-sent-event stream until `[DONE]`."""
    async for raw in response.content:
        line = raw.decode("utf-8", errors="replace").strip()
        if not line.startswith("data:"):
            continue
        data = line[len("data:"):].strip()
        if data == "[DONE]":
            return
        try:
            chunk = json.loads(data)
        except json.JSONDecodeError:
            raise RequestFailed("protocol_error", f"an SSE event is not JSON: {data[:200]!r}") from None
        event = _event_from_openai_chunk(chunk)
        if event is not None:
            yield event


def _json_or_text(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _error_message(body: Any) -> str:
    """The message of an OpenAI-shaped error body (or the body itself, shortened)."""
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return str(body["error"].get("message", body["error"]))
    return str(body)[:300]


class GrpcEndpoint(BaseEndpoint):
    """The gRPC API (`pdserve.v1.Inference`): streaming `Generate` with `token_ids`."""

    def __init__(self, target: str, **kwargs: Any) -> None:
        super().__init__(target, **kwargs)
        self._channel = None
        self._stub = None

    def _open(self):
        import grpc

        from orchestrator.api.pb import inference_pb2_grpc

        if self._stub is None:
            self._channel = grpc.aio.insecure_channel(self.target)
            self._stub = inference_pb2_grpc.InferenceStub(self._channel)
        return self._stub

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.api_key}"),) if self.api_key else ()

    async def probe(self, timeout_s: float) -> ServerInfo:
        import grpc

        from orchestrator.api.pb import inference_pb2

        try:
            reply = await self._open().ListModels(inference_pb2.ListModelsRequest(), timeout=timeout_s,
                                                  metadata=self._metadata())
        except grpc.aio.AioRpcError as exc:
            raise Unavailable(f"cannot reach the gRPC API at {self.target}: "
                              f"{exc.code().name} {exc.details() or ''}".strip()) from None
        if not reply.models and not self.model:
            raise Unavailable(f"the gRPC API at {self.target} lists no model")
        first = reply.models[0] if reply.models else None
        self.model = self.model or first.id
        return ServerInfo(self.model, int(first.max_model_len) if first else 0)

    async def stream(self, token_ids: list[int], output_tokens: int) -> AsyncIterator[StreamEvent]:
        import grpc

        from orchestrator.api.pb import inference_pb2 as pb

        request = pb.GenerateRequest(
            model=self.model or "", token_ids=pb.TokenIds(ids=token_ids),
            sampling=pb.SamplingParams(max_tokens=output_tokens, temperature=self.temperature, ignore_eos=True))
        try:
            async for reply in self._open().Generate(request, metadata=self._metadata()):
                yield _event_from_reply(reply)
        except grpc.aio.AioRpcError as exc:
            raise RequestFailed(exc.code().name, exc.details() or "") from None

    async def cluster_status(self, timeout_s: float) -> dict[str, Any]:
        import grpc

        from orchestrator.api.pb import inference_pb2 as pb

        try:
            reply = await self._open().GetClusterStatus(pb.GetClusterStatusRequest(), timeout=timeout_s,
                                                        metadata=self._metadata())
        except grpc.aio.AioRpcError as exc:
            raise RequestFailed(exc.code().name, exc.details() or "") from None
        return json.loads(reply.status_json or "{}")

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = self._stub = None


def _event_from_reply(reply) -> StreamEvent:
    """One `GenerateResponse` -> an event; a finish_reason ERROR becomes `RequestFailed`."""
    from orchestrator.api.pb import inference_pb2 as pb

    finish = None
    if reply.finish_reason:
        finish = pb.FinishReason.Name(reply.finish_reason).removeprefix("FINISH_REASON_").lower()
    if finish == "error":
        raise RequestFailed("stream_error", reply.error or "the stream ended with finish_reason ERROR")
    usage = None
    if reply.HasField("usage"):
        usage = {f.name: getattr(reply.usage, f.name) for f in reply.usage.DESCRIPTOR.fields}
    return StreamEvent(len(reply.token_ids), finish, usage)


ENDPOINTS = {"grpc": GrpcEndpoint, "http": HttpEndpoint}
