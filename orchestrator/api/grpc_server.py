"""The gRPC API: `pdserve.v1.Inference` and the standard health service, on grpc.aio.

Life of a Generate call:
1. the API key in the `authorization` metadata gives the tenant (`auth.ApiKeys`);
2. the message becomes a `Request` (`convert`) and is validated (`validation`);
3. it takes a slot of the server-wide concurrency limit (`limits`), or is refused RESOURCE_EXHAUSTED
   with a `retry-after-s` trailer;
4. the gateway's chunks are written back one response each;
5. however the call ends (done, error, client gone, deadline), the gateway iterator is closed, which
   cancels the request and frees its KV blocks.
A `PdserveError` becomes the status code it names (`grpc_code`) with its message; anything else is
logged and answered INTERNAL. Every handler runs on the server's event loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from orchestrator.api import convert
from orchestrator.api.auth import ApiKeys
from orchestrator.api.limits import ConcurrencyLimiter
from orchestrator.api.pb import inference_pb2 as pb
from orchestrator.api.pb import inference_pb2_grpc
from orchestrator.api.validation import validate_request
from orchestrator.config.server import ServerConfig
from orchestrator.errors import InvalidRequest, PdserveError
from orchestrator.gateway.base import BaseGateway

log = logging.getLogger(__name__)

SERVICE_NAME = "pdserve.v1.Inference"
RETRY_AFTER_KEY = "retry-after-s"
HEALTH_POLL_S = 1.0


async def abort_with(context: grpc.aio.ServicerContext, exc: PdserveError) -> None:
    """End the call with the status `exc` names; RESOURCE_EXHAUSTED carries the retry hint as a trailer."""
    trailers = ()
    if exc.retry_after_s is not None:
        trailers = ((RETRY_AFTER_KEY, f"{exc.retry_after_s:g}"),)
    await context.abort(grpc.StatusCode[exc.grpc_code], exc.message, trailing_metadata=trailers)


class InferenceServicer(inference_pb2_grpc.InferenceServicer):
    """`pdserve.v1.Inference` over a `BaseGateway`."""

    def __init__(self, gateway: BaseGateway, config: ServerConfig, keys: ApiKeys, limiter: ConcurrencyLimiter) -> None:
        self.gateway, self.config, self.keys, self.limiter = gateway, config, keys, limiter

    def _tenant(self, context: grpc.aio.ServicerContext) -> str:
        metadata = dict(context.invocation_metadata() or ())
        return self.keys.tenant_for(metadata.get("authorization"))

    async def Generate(self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext) -> None:
        async with _boundary(context, "Generate"):
            internal = convert.request_from_pb(request, self._tenant(context))
            internal = validate_request(internal, self.gateway, self.config)
            with self.limiter.slot("grpc"):
                await self._stream(internal, context)

    async def _stream(self, request, context: grpc.aio.ServicerContext) -> None:
        chunks = self.gateway.generate(request)
        try:
            async for chunk in chunks:
                await context.write(convert.chunk_to_pb(chunk))
                if chunk.finished:
                    return
            raise PdserveError(f"the gateway ended request {request.request_id} without a finish reason")
        finally:
            # Runs on client disconnect too (the handler task is cancelled): the gateway cancels the
            # request and frees its blocks when its iterator closes.
            await chunks.aclose()

    async def Cancel(self, request: pb.CancelRequest, context: grpc.aio.ServicerContext) -> pb.CancelResponse:
        async with _boundary(context, "Cancel"):
            tenant = self._tenant(context)
            if not request.request_id:
                raise InvalidRequest("request_id is empty: pass the id of the request to cancel")
            return pb.CancelResponse(cancelled=await self.gateway.cancel(request.request_id, tenant))

    async def ListModels(self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext) -> pb.ListModelsResponse:
        async with _boundary(context, "ListModels"):
            self._tenant(context)
            return pb.ListModelsResponse(models=[convert.model_to_pb(m) for m in self.gateway.models()])

    async def GetClusterStatus(self, request: pb.GetClusterStatusRequest,
                               context: grpc.aio.ServicerContext) -> pb.GetClusterStatusResponse:
        async with _boundary(context, "GetClusterStatus"):
            self._tenant(context)
            document = await self.gateway.status()
            return pb.GetClusterStatusResponse(status_json=json.dumps(document, default=str))


@asynccontextmanager
async def _boundary(context: grpc.aio.ServicerContext, method: str) -> AsyncIterator[None]:
    """Convert what a handler raises into the call's status: a `PdserveError` into the code it names,
    anything unexpected into INTERNAL (logged with an incident id the client sees)."""
    try:
        yield
    except PdserveError as exc:
        await abort_with(context, exc)
    except (asyncio.CancelledError, grpc.aio.AbortError):
        raise
    except Exception:
        incident = uuid.uuid4().hex[:12]
        log.exception("gRPC %s failed (incident %s)", method, incident)
        await context.abort(grpc.StatusCode.INTERNAL, f"internal server error (incident {incident}; see the server log)")


@dataclass(frozen=True)
class Undecodable:
    """What the deserializer hands a handler for bytes that are not the message it expects."""

    type_name: str
    reason: str


def _lenient(message_type: type) -> Callable[[bytes], Any]:
    """A request deserializer that never raises: grpc would answer a parse error UNKNOWN with a Python
    exception's text; the handler answers INVALID_ARGUMENT instead (see `_decoded`)."""
    def parse(data: bytes) -> Any:
        try:
            return message_type.FromString(data)
        except DecodeError as exc:
            return Undecodable(message_type.DESCRIPTOR.full_name, str(exc).rpartition(": ")[2] or "corrupt")
    return parse


def _decoded(method: Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]
             ) -> Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]:
    async def handler(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if isinstance(request, Undecodable):
            await abort_with(context, InvalidRequest(
                f"the request is not a valid {request.type_name} message ({request.reason}): "
                f"build it with the pdserve.v1 protos or the pdserve SDK"))
        return await method(request, context)
    return handler


def add_inference_servicer(servicer: InferenceServicer, server: grpc.aio.Server) -> None:
    """Like the generated `add_InferenceServicer_to_server`, with lenient request parsing."""
    unary = grpc.unary_unary_rpc_method_handler
    handlers = {
        "Generate": grpc.unary_stream_rpc_method_handler(
            _decoded(servicer.Generate), request_deserializer=_lenient(pb.GenerateRequest),
            response_serializer=pb.GenerateResponse.SerializeToString),
        "Cancel": unary(_decoded(servicer.Cancel), request_deserializer=_lenient(pb.CancelRequest),
                        response_serializer=pb.CancelResponse.SerializeToString),
        "ListModels": unary(_decoded(servicer.ListModels), request_deserializer=_lenient(pb.ListModelsRequest),
                            response_serializer=pb.ListModelsResponse.SerializeToString),
        "GetClusterStatus": unary(_decoded(servicer.GetClusterStatus),
                                  request_deserializer=_lenient(pb.GetClusterStatusRequest),
                                  response_serializer=pb.GetClusterStatusResponse.SerializeToString),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)


class GatewayHealth(HealthServicer):
    """The standard health service: SERVING exactly when `gateway.health().ready`.

    `Check` reads the gateway on every call; `Watch` streams changes seen by `poll()`, which the
    server runs as a task.
    """

    SERVICES = ("", SERVICE_NAME)

    def __init__(self, gateway: BaseGateway) -> None:
        super().__init__()
        self.gateway = gateway

    async def refresh(self) -> None:
        ready = self.gateway.health().ready
        status = health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING
        for service in self.SERVICES:
            if self._server_status.get(service) != status:
                await self.set(service, status)

    async def Check(self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext) -> Any:
        await self.refresh()
        return await super().Check(request, context)

    async def poll(self, interval_s: float = HEALTH_POLL_S) -> None:
        while True:
            await self.refresh()
            await asyncio.sleep(interval_s)


class GrpcApi:
    """The gRPC server: build, `bind`, `start`, `stop`. Created and used on one event loop."""

    def __init__(self, gateway: BaseGateway, config: ServerConfig, keys: ApiKeys, limiter: ConcurrencyLimiter) -> None:
        self.config = config
        options = [
            ("grpc.max_receive_message_length", config.max_request_bytes),
            # Without this a second server binds the same port silently (SO_REUSEPORT).
            ("grpc.so_reuseport", 0),
        ]
        self.server = grpc.aio.server(options=options)
        add_inference_servicer(InferenceServicer(gateway, config, keys, limiter), self.server)
        self.health = GatewayHealth(gateway)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self._poll_task: asyncio.Task | None = None

    def bind(self, host: str, port: int, credentials: grpc.ServerCredentials | None) -> int:
        """Bind host:port (0: any free port); returns the bound port. Raises RuntimeError when busy."""
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        if credentials is None:
            return self.server.add_insecure_port(address)
        return self.server.add_secure_port(address, credentials)

    async def start(self) -> None:
        await self.health.refresh()
        await self.server.start()
        self._poll_task = asyncio.create_task(self.health.poll(), name="pdserve-grpc-health")

    async def stop(self, grace_s: float) -> None:
        if self._poll_task is not None:
            self._poll_task.cancel()
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace_s)


def tls_credentials(config: ServerConfig) -> grpc.ServerCredentials | None:
    """Server credentials from the config's PEM files (None without TLS). Raises OSError if unreadable."""
    if not config.tls:
        return None
    return grpc.ssl_server_credentials([(config.tls_key.read_bytes(), config.tls_cert.read_bytes())])
