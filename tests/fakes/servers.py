"""`BackgroundServers`: the real gRPC and HTTP API servers over a `FakeGateway`, on their own thread.

Tests that call the servers from blocking code (the sync SDK, the `openai` package, CLI subprocesses)
or from another event loop (`AsyncClient` in a pytest-asyncio test) start them here:

    with BackgroundServers(max_concurrent_requests=2) as servers:
        Client(servers.grpc_target).generate("a b c")
        servers.wait_for(lambda: servers.gateway.finished, "the request to finish")

The gateway's asyncio objects belong to the servers' loop: use `hold()` / `release()` to pause every
stream after its first token, and `run(coro)` / `call(fn)` for anything else that must run there.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any

from orchestrator.api.auth import ApiKeys
from orchestrator.api.servers import RunningServers, start_servers
from orchestrator.config.server import ServerConfig
from tests.fakes.gateway import FakeGateway

START_TIMEOUT_S = 30.0
WAIT_TIMEOUT_S = 15.0  # generous: the suite runs on 2 busy cores


class BackgroundServers:
    """Both API servers on 127.0.0.1, ports chosen by the OS; a context manager."""

    def __init__(self, gateway: FakeGateway | None = None, *, api_keys: ApiKeys | None = ApiKeys(),
                 **config: Any) -> None:
        """`config`: ServerConfig fields. `api_keys`: auth off by default, whatever the environment
        says; None loads keys as `pdserve up` does (`api_keys_file`, $PDSERVE_API_KEYS)."""
        self.gateway = gateway if gateway is not None else FakeGateway()
        self.config = ServerConfig(**{"grpc_port": 0, "http_port": 0, **config})
        self.api_keys = api_keys
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="pdserve-test-servers", daemon=True)
        self.running: RunningServers | None = None

    def __enter__(self) -> BackgroundServers:
        self._thread.start()
        try:
            self.running = self.run(start_servers(self.gateway, self.config, api_keys=self.api_keys),
                                    START_TIMEOUT_S)
        except BaseException:
            self._close_loop()
            raise
        return self

    def __exit__(self, *exc_info: Any) -> None:
        try:
            self.release()
            if self.running is not None:
                self.run(self.running.stop(grace_s=0), START_TIMEOUT_S)
        finally:
            self._close_loop()

    def _close_loop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(START_TIMEOUT_S)
        self.loop.close()

    @property
    def grpc_target(self) -> str:
        return self.running.grpc_target

    @property
    def http_url(self) -> str:
        return self.running.http_url

    def run(self, coro: Coroutine[Any, Any, Any], timeout_s: float = WAIT_TIMEOUT_S) -> Any:
        """Run `coro` on the servers' loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def call(self, fn: Callable[[], Any]) -> Any:
        """Call `fn` on the servers' loop and return its result."""
        async def wrapper() -> Any:
            return fn()
        return self.run(wrapper())

    def hold(self) -> None:
        """Every stream from now on pauses after its first token until `release()` (or its cancel)."""
        self.call(lambda: setattr(self.gateway, "hold", asyncio.Event()))

    def release(self) -> None:
        """Let held streams go on (and later ones run through)."""
        hold = self.gateway.hold
        if hold is not None:
            self.loop.call_soon_threadsafe(hold.set)

    def wait_for(self, predicate: Callable[[], Any], what: str, timeout_s: float = WAIT_TIMEOUT_S) -> Any:
        """Poll `predicate` until it is truthy; AssertionError naming `what` after timeout_s."""
        end = time.monotonic() + timeout_s
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > end:
                raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
            time.sleep(0.01)
