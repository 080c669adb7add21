"""Start and stop both API servers together, over one gateway.

    running = await start_servers(gateway, config.server)
    print(running.grpc_target, running.http_url)
    ...
    await running.stop()

Both servers share the API keys and the concurrency limit, and run on the caller's event loop.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import ssl
from dataclasses import dataclass

import grpc

from orchestrator.api.auth import ApiKeys
from orchestrator.api.grpc_server import GrpcApi, tls_credentials
from orchestrator.api.http_server import HttpApi
from orchestrator.api.limits import ConcurrencyLimiter
from orchestrator.config.server import ServerConfig
from orchestrator.errors import ConfigError, StartupError
from orchestrator.gateway.base import BaseGateway

log = logging.getLogger(__name__)


@dataclass
class RunningServers:
    """Both servers, listening. `stop()` once when done."""

    host: str
    grpc_port: int
    http_port: int
    tls: bool
    grpc_api: GrpcApi
    http_api: HttpApi

    @property
    def grpc_target(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.http_port}"

    async def stop(self, grace_s: float | None = None) -> None:
        """Refuse new requests, let in-flight ones finish for up to grace_s (config default), cancel the rest."""
        grace_s = self.grpc_api.config.shutdown_grace_s if grace_s is None else grace_s
        await asyncio.gather(self.grpc_api.stop(grace_s), self.http_api.stop(grace_s))


async def start_servers(gateway: BaseGateway, config: ServerConfig, *, api_keys: ApiKeys | None = None
                        ) -> RunningServers:
    """Start the gRPC and HTTP servers on `config`'s host and ports (0: any free port).

    `api_keys` defaults to `ApiKeys.load(config.api_keys_file)` (which also reads $PDSERVE_API_KEYS).
    Raises StartupError when a port is in use or a TLS / key file cannot be read; nothing is left
    listening then.
    """
    keys = api_keys if api_keys is not None else _load_keys(config)
    grpc_credentials, ssl_context = _tls(config)
    limiter = ConcurrencyLimiter(config.max_concurrent_requests, config.concurrency_retry_after_s)
    grpc_api = GrpcApi(gateway, config, keys, limiter)
    http_api = HttpApi(gateway, config, keys, limiter)
    try:
        grpc_port = grpc_api.bind(config.host, config.grpc_port, grpc_credentials)
    except RuntimeError:
        raise StartupError(_busy_message(config.grpc_port, "--grpc-port")) from None
    await grpc_api.start()
    try:
        http_port = await http_api.start(config.host, config.http_port, ssl_context)
    except OSError as exc:
        await grpc_api.stop(0)
        await http_api.runner.cleanup()
        if exc.errno == errno.EADDRINUSE:
            raise StartupError(_busy_message(config.http_port, "--http-port")) from None
        raise StartupError(f"cannot listen on {config.host}:{config.http_port}: {exc.strerror or exc}") from None
    log.info("API servers listening: gRPC %s:%d, HTTP %s:%d%s, auth %s", config.host, grpc_port, config.host,
             http_port, " (TLS)" if config.tls else "", "on" if keys.enabled else "off")
    return RunningServers(config.host, grpc_port, http_port, config.tls, grpc_api, http_api)


def _busy_message(port: int, flag: str) -> str:
    return f"port {port} is in use: pass {flag} or stop the other server"


def _load_keys(config: ServerConfig) -> ApiKeys:
    try:
        return ApiKeys.load(config.api_keys_file)
    except ConfigError as exc:
        raise StartupError(exc.message) from None


def _tls(config: ServerConfig) -> tuple[grpc.ServerCredentials | None, ssl.SSLContext | None]:
    if not config.tls:
        return None, None
    try:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(config.tls_cert, config.tls_key)
        return tls_credentials(config), context
    except (OSError, ssl.SSLError) as exc:
        raise StartupError(f"cannot load TLS certificate {config.tls_cert} / key {config.tls_key}: {exc}") from None
