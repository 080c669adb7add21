"""The HTTP API (aiohttp): OpenAI-compatible completions and chat, models, health, metrics, cancel.

Routes:
    POST /v1/completions                      OpenAI completions (SSE when "stream": true)
    POST /v1/chat/completions                 OpenAI chat completions (SSE when "stream": true)
    GET  /v1/models                           served models
    POST /v1/requests/{request_id}/cancel     cancel a running request of the caller's tenant (pdserve's own)
    GET  /health                              200 when every pool has a ready worker, else 503; JSON detail
    GET  /metrics                             Prometheus text format (default registry)

Life of a completion request:
1. the `Authorization: Bearer KEY` header gives the tenant (`/health` and `/metrics` need no key);
2. the body is read (size limit, Content-Encoding gzip/deflate, UTF-8, JSON), parsed into a `Request`
   (`openai_format`) and validated;
3. it takes a slot of the shared concurrency limit, or is refused 429 with Retry-After;
4. the gateway's first chunk is awaited before answering, so errors raised before any token get their
   own status; then the answer is either streamed (SSE) or gathered whole;
5. the gateway iterator is closed however the request ends: a client that disconnects mid-stream
   cancels its request (the handler is cancelled, or its next write fails).
Every error leaves in OpenAI's shape `{"error": {"message", "type", "param", "code"}}`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import ssl
import time
import uuid
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from orchestrator.api import openai_format as oai
from orchestrator.api.auth import ApiKeys
from orchestrator.api.limits import ConcurrencyLimiter
from orchestrator.api.validation import InvalidField, validate_request
from orchestrator.config.server import ServerConfig
from orchestrator.errors import InvalidRequest, PdserveError
from orchestrator.gateway.base import BaseGateway
from orchestrator.request import FinishReason, GenerationChunk, Request

log = logging.getLogger(__name__)

UNAUTHENTICATED_PATHS = frozenset({"/health", "/metrics"})
HANDLER_SHUTDOWN_S = 1.0  # after the drain in `HttpApi.stop`, what is left gets this long


class PayloadTooLarge(InvalidRequest):
    """The request body is over `ServerConfig.max_request_bytes`."""

    http_status = 413


class UnsupportedEncoding(InvalidRequest):
    """The request body has a Content-Encoding the server cannot decode."""

    http_status = 415


# Content-Encodings a body may arrive in: gzip, or deflate (zlib) as RFC 9110 has it; 32 lets zlib take
# either header. aiohttp's own decoding is off: a corrupt body raised from inside `request.read()` (a
# 500) and an encoding it lacks (br) was refused in plain text before any middleware ran.
_DECODED_ENCODINGS = {"gzip": 32 + zlib.MAX_WBITS, "x-gzip": 32 + zlib.MAX_WBITS, "deflate": 32 + zlib.MAX_WBITS}


def error_response(status: int, message: str, error_type: str, *, param: str | None = None,
                   code: str | None = None, retry_after_s: float | None = None) -> web.Response:
    headers = {"Retry-After": str(max(1, math.ceil(retry_after_s)))} if retry_after_s is not None else None
    return web.json_response(oai.error_json(message, error_type, param, code), status=status, headers=headers)


def pdserve_error_response(exc: PdserveError) -> web.Response:
    return error_response(exc.http_status, exc.message, exc.openai_type, param=getattr(exc, "param", None),
                          code=exc.grpc_code.lower(), retry_after_s=exc.retry_after_s)


@web.middleware
async def openai_errors(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                        ) -> web.StreamResponse:
    """Answer every error in OpenAI's shape: PdserveErrors with their status, aiohttp's own (404, 405,
    413) with theirs, anything unexpected as a logged 500."""
    try:
        return await handler(request)
    except PdserveError as exc:
        return pdserve_error_response(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        error_type = "invalid_request_error" if exc.status < 500 else "server_error"
        return error_response(exc.status, f"{exc.reason}: {request.method} {request.path}", error_type)
    except asyncio.CancelledError:
        raise
    except Exception:
        incident = uuid.uuid4().hex[:12]
        log.exception("HTTP %s %s failed (incident %s)", request.method, request.path, incident)
        return error_response(500, f"internal server error (incident {incident}; see the server log)", "server_error")


async def read_json(request: web.Request, limit_bytes: int) -> Any:
    """The body as JSON; InvalidRequest (400), 413 or 415 with a message saying what is wrong."""
    too_large = PayloadTooLarge(f"the request body is over this server's limit of {limit_bytes} bytes: "
                                f"send a shorter prompt")
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise too_large from None
    raw = decode_body(raw, request.headers.get("Content-Encoding", ""), limit_bytes, too_large)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidRequest(f"the request body is not valid UTF-8 (byte {exc.start}): send UTF-8 JSON") from None
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError as exc:
        raise InvalidRequest(f"the request body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except ValueError:  # Python's limit on the digits of an integer (int_max_str_digits)
        raise InvalidRequest("the request body holds a number with too many digits: send numbers of sensible size") from None
    except RecursionError:
        raise InvalidRequest("the request body nests too deeply") from None


def decode_body(raw: bytes, encoding: str, limit_bytes: int, too_large: PayloadTooLarge) -> bytes:
    """`raw` under its Content-Encoding (identity, gzip or deflate), at most `limit_bytes` once decoded."""
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return raw
    wbits = _DECODED_ENCODINGS.get(encoding)
    if wbits is None:
        raise UnsupportedEncoding(f"Content-Encoding {encoding[:40]!r} is not supported: send the body "
                                  f"uncompressed, or gzip or deflate")
    decoder = zlib.decompressobj(wbits)
    try:
        body = decoder.decompress(raw, limit_bytes + 1)
    except zlib.error as exc:
        raise InvalidRequest(f"the request body is not valid {encoding} data ({exc}): send it uncompressed") from None
    if len(body) > limit_bytes or decoder.unconsumed_tail:
        raise too_large
    if not decoder.eof:
        raise InvalidRequest(f"the request body is cut-short {encoding} data: send all of it, or uncompressed")
    return body


def _refuse_constant(name: str) -> Any:
    raise json.JSONDecodeError(f"{name} is not a JSON number", name, 0)


class HttpApi:
    """The aiohttp application and its runner: `start(host, port, ssl)`, then `stop(grace_s)`."""

    def __init__(self, gateway: BaseGateway, config: ServerConfig, keys: ApiKeys, limiter: ConcurrencyLimiter) -> None:
        self.gateway, self.config, self.keys, self.limiter = gateway, config, keys, limiter
        self.app = web.Application(client_max_size=config.max_request_bytes, middlewares=[openai_errors])
        self.app.router.add_post("/v1/completions", self.completions)
        self.app.router.add_post("/v1/chat/completions", self.chat_completions)
        self.app.router.add_get("/v1/models", self.list_models)
        self.app.router.add_post("/v1/requests/{request_id}/cancel", self.cancel)
        self.app.router.add_get("/health", self.health)
        self.app.router.add_get("/metrics", self.metrics)
        self.runner = web.AppRunner(self.app, handler_cancellation=True, shutdown_timeout=HANDLER_SHUTDOWN_S,
                                    access_log=None, auto_decompress=False)
        self._sites: list[web.TCPSite] = []

    async def start(self, host: str, port: int, ssl_context: ssl.SSLContext | None) -> int:
        """Listen on host:port (0: any free port); returns the bound port. Raises OSError when busy."""
        await self.runner.setup()
        site = web.TCPSite(self.runner, host, port, ssl_context=ssl_context, reuse_port=False)
        await site.start()
        self._sites.append(site)
        return site._server.sockets[0].getsockname()[1]

    async def stop(self, grace_s: float) -> None:
        """Stop accepting, give in-flight requests up to grace_s to finish, then cancel the rest."""
        for site in self._sites:
            await site.stop()
        deadline = time.monotonic() + grace_s
        while self.limiter.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await self.runner.cleanup()

    def _tenant(self, request: web.Request) -> str:
        return self.keys.tenant_for(request.headers.get("Authorization"))

    # ---- routes ------------------------------------------------------------------------------------

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, oai.parse_completion)

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, oai.parse_chat)

    async def list_models(self, request: web.Request) -> web.Response:
        self._tenant(request)
        data = [{"id": m.id, "object": "model", "created": 0, "owned_by": m.owned_by, "max_model_len": m.max_model_len}
                for m in self.gateway.models()]
        return web.json_response({"object": "list", "data": data})

    async def cancel(self, request: web.Request) -> web.Response:
        tenant = self._tenant(request)
        request_id = request.match_info["request_id"]
        cancelled = await self.gateway.cancel(request_id, tenant)
        return web.json_response({"id": request_id, "object": "cancellation", "cancelled": cancelled})

    async def health(self, request: web.Request) -> web.Response:
        health = self.gateway.health()
        return web.json_response({"ready": health.ready, "detail": health.detail}, status=200 if health.ready else 503,
                                 dumps=lambda obj: json.dumps(obj, default=str))

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST})

    # ---- generation --------------------------------------------------------------------------------

    async def _generate(self, http_request: web.Request, parse) -> web.StreamResponse:
        tenant = self._tenant(http_request)
        body = await read_json(http_request, self.config.max_request_bytes)
        request, options = parse(body, tenant)
        try:
            request = validate_request(request, self.gateway, self.config)
        except InvalidField as exc:
            exc.param = oai.openai_param(exc.param, options.kind)
            raise
        options = replace(options, model=request.model)
        with self.limiter.slot("http"):
            chunks = self.gateway.generate(request)
            try:
                first = await _first_chunk(chunks, request)
                if options.stream:
                    return await self._stream(http_request, request, options, first, chunks)
                return await _whole(request, options, first, chunks)
            finally:
                await chunks.aclose()

    async def _stream(self, http_request: web.Request, request: Request, options: oai.ResponseOptions,
                      first: GenerationChunk, chunks: AsyncIterator[GenerationChunk]) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(http_request)
        try:
            await _write_events(response, request, options, first, chunks)
        except ConnectionResetError:
            # The client went away between two chunks: the caller's `finally` closes the gateway
            # iterator, which cancels the request.
            log.info("client disconnected from the stream of request %s", request.request_id)
        except Exception as exc:  # noqa: BLE001 - the 200 is sent: the stream itself must say it failed
            await _end_with_error(response, request, exc)
        return response


async def _first_chunk(chunks: AsyncIterator[GenerationChunk], request: Request) -> GenerationChunk:
    try:
        return await anext(chunks)
    except StopAsyncIteration:
        raise PdserveError(f"the gateway ended request {request.request_id} without an answer") from None


async def _write_events(response: web.StreamResponse, request: Request, options: oai.ResponseOptions,
                        first: GenerationChunk, chunks: AsyncIterator[GenerationChunk]) -> None:
    chunk, is_first = first, True
    while True:
        if chunk.finish_reason is FinishReason.ERROR:
            error = oai.error_json(chunk.error or "generation failed", "server_error", code="stream_error")
            await _send(response, error)
            break
        await _send(response, oai.stream_chunk_json(options, chunk, is_first))
        if chunk.finished:
            if options.include_usage and chunk.usage is not None:
                await _send(response, oai.usage_chunk_json(request.request_id, options, chunk.usage,
                                                           chunk.finish_reason))
            break
        chunk, is_first = await anext(chunks, None), False
        if chunk is None:
            await _send(response, oai.error_json("the stream ended without a finish reason", "server_error",
                                                 code="stream_error"))
            break
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()


async def _end_with_error(response: web.StreamResponse, request: Request, exc: Exception) -> None:
    """A failure after the stream started (the gateway broke its contract by raising mid-stream):
    an error event and [DONE], so the client sees an explicit end rather than a cut connection."""
    if isinstance(exc, PdserveError):
        message = exc.message
    else:
        incident = uuid.uuid4().hex[:12]
        log.error("stream of request %s failed (incident %s)", request.request_id, incident, exc_info=exc)
        message = f"internal server error (incident {incident}; see the server log)"
    try:
        await _send(response, oai.error_json(message, "server_error", code="stream_error"))
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
    except ConnectionResetError:
        pass


async def _send(response: web.StreamResponse, body: dict) -> None:
    await response.write(b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n")


async def _whole(request: Request, options: oai.ResponseOptions, first: GenerationChunk,
                 chunks: AsyncIterator[GenerationChunk]) -> web.Response:
    texts, chunk = [], first
    while True:
        if chunk.finish_reason is FinishReason.ERROR:
            raise PdserveError(f"request {request.request_id} failed: {chunk.error or 'generation failed'}")
        texts.append(chunk.text)
        if chunk.finished:
            break
        chunk = await anext(chunks, None)
        if chunk is None:
            raise PdserveError(f"the gateway ended request {request.request_id} without a finish reason")
    if chunk.usage is None:
        raise PdserveError(f"the gateway ended request {request.request_id} without usage")
    return web.json_response(oai.whole_json(request.request_id, options, "".join(texts), chunk.finish_reason,
                                            chunk.usage))
