"""Running pdserve clusters and a reference engine from tests: an event loop in a thread, a cluster
whose APIs tests reach over the network, one plain vLLM engine to compare outputs with."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from typing import Any

KV_TIMEOUT_S = 3.0  # a dropped transfer is recomputed after this long
MAX_MODEL_LEN = 2048
KV_CACHE_GIB = 0.25  # per engine: room for the tests' requests; up to six engines live at once on 24 GB


class LoopThread:
    """An asyncio loop in a daemon thread; `run(coro)` runs a coroutine there and returns its result."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="pdserve-test-loop", daemon=True)
        self.thread.start()

    def run(self, coro: Any, timeout_s: float = 900.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=30)




def cluster_config(**overrides: Any) -> Any:
    """The config of the test clusters: the default model, ports chosen by the OS, a short KV timeout."""
    from orchestrator.config import load_config

    base = {"server.grpc_port": 0, "server.http_port": 0, "kv.timeout_s": KV_TIMEOUT_S,
            "model.max_model_len": MAX_MODEL_LEN, "engine.kv_cache_gib": KV_CACHE_GIB}
    return load_config(None, {**base, **overrides})


class Serving:
    """A running cluster, seen from the tests."""

    def __init__(self, loop: LoopThread, cluster: Any) -> None:
        self.loop = loop
        self.cluster = cluster
        self.extra_stops: list[Any] = []  # coroutine functions: more gateways/servers tests put on the cluster

    def stop(self) -> None:
        for stop in reversed(self.extra_stops):
            self.loop.run(stop())
        self.loop.run(self.cluster.stop())

    @property
    def grpc_target(self) -> str:
        return self.cluster.servers.grpc_target

    @property
    def http_url(self) -> str:
        return self.cluster.servers.http_url

    def workers(self) -> list[Any]:
        """The controller's current view of every worker."""
        import ray

        return ray.get(self.cluster.controller.snapshot.remote())

    def worker(self, tier: str) -> Any:
        return next(w for w in self.workers() if w["tier"] == tier and w["state"] == "ready")


def start_serving(loop: LoopThread, model_dir: str, **overrides: Any) -> Serving:
    from orchestrator.cluster import ServingCluster

    cluster = loop.run(ServingCluster.start(cluster_config(**overrides), model_dir))
    return Serving(loop, cluster)




class ReferenceEngine:
    """One plain vLLM engine (no connector) with the workers' settings, bound to one core like them:
    the colocated baseline that disaggregated outputs must match token for token."""

    def __init__(self, model_dir: str, dtype: str = "auto") -> None:
        from orchestrator.config import EngineConfig, ModelConfig
        from workers.engine.vllm_engine import VllmEngine

        self.loop = LoopThread()
        previous = os.environ.get("VLLM_CPU_OMP_THREADS_BIND")
        os.environ["VLLM_CPU_OMP_THREADS_BIND"] = "0"
        self.engine = VllmEngine(model_dir, ModelConfig(max_model_len=MAX_MODEL_LEN, dtype=dtype),
                                 EngineConfig(kv_cache_gib=KV_CACHE_GIB), worker_id=f"reference-{dtype}")  # auto: the default's dtype
        try:
            self.loop.run(self.engine.start())
        finally:
            if previous is None:
                os.environ.pop("VLLM_CPU_OMP_THREADS_BIND", None)
            else:
                os.environ["VLLM_CPU_OMP_THREADS_BIND"] = previous

    def greedy(self, prompt_ids: list[int], max_tokens: int) -> list[int]:
        """The greedy tokens of one request run alone."""
        return self.loop.run(_greedy(self.engine, prompt_ids, max_tokens))

    def close(self) -> None:
        self.loop.run(self.engine.shutdown())
        self.loop.close()




async def _greedy(engine: Any, prompt_ids: list[int], max_tokens: int) -> list[int]:
    import uuid

    from workers.engine.base import EngineRequest

    tokens: list[int] = []
    request = EngineRequest(uuid.uuid4().hex, tuple(prompt_ids), max_tokens, temperature=0.0)
    async for output in engine.generate(request):
        tokens.extend(output.token_ids)
    return tokens


class TraceCollector:
    """A real OTLP/gRPC trace collector on 127.0.0.1 that keeps every span it receives, so tests can
    check the traces the gateway and the worker processes export."""

    def __init__(self) -> None:
        from concurrent import futures

        import grpc
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

        collector = self
        self.spans: list[Any] = []
        self._lock = threading.Lock()

        class Servicer(trace_service_pb2_grpc.TraceServiceServicer):
            def Export(self, request, context):  # noqa: N802 - the OTLP method name
                with collector._lock:
                    for resource_spans in request.resource_spans:
                        service = next((a.value.string_value for a in resource_spans.resource.attributes
                                        if a.key == "service.name"), "")
                        for scope in resource_spans.scope_spans:
                            collector.spans.extend((service, span) for span in scope.spans)
                return trace_service_pb2.ExportTraceServiceResponse()

        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Servicer(), self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def trace(self, request_id: str) -> list[tuple[str, Any]]:
        """(service, span) of every span in the trace whose root span carries `request_id`."""
        with self._lock:
            spans = list(self.spans)
        roots = [s for _, s in spans if s.name == "request" and any(
            a.key == "request_id" and a.value.string_value == request_id for a in s.attributes)]
        if not roots:
            return []
        return [(service, s) for service, s in spans if s.trace_id == roots[0].trace_id]

    def stop(self) -> None:
        self.server.stop(0)


def wait_all_blocks_free(serving, timeout_s: float = 30.0) -> dict[str, tuple[int, int]]:
    """(free, total) blocks per tier once every block is free again, or as they are at the timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        counts = {w["tier"]: (w["stats"].engine.num_free_blocks, w["stats"].engine.num_total_blocks)
                  for w in serving.workers() if w["state"] == "ready"}
        if all(free == total > 0 for free, total in counts.values()) or time.monotonic() > deadline:
            return counts
        time.sleep(0.25)


def wait_blocks_in_use(serving, tier: str, timeout_s: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        engine = serving.worker(tier)["stats"].engine
        if engine.num_free_blocks < engine.num_total_blocks:
            return True
        time.sleep(0.1)
    return False


def wait_idle(serving, timeout_s: float = 60.0) -> None:
    """Until no worker runs or queues anything (an aborted step may still be finishing)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        stats = [w["stats"] for w in serving.workers() if w["state"] == "ready"]
        if all(s.num_in_flight == 0 and s.engine.num_running == 0 and s.engine.num_waiting == 0 for s in stats):
            return
        time.sleep(0.25)
