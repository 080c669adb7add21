"""Shared, expensive fixtures of the integration tests: one Ray, one real disaggregated cluster per session.

`serving` is a real pdserve cluster (1 prefill + 1 decode vLLM-CPU worker, the default model, real KV
transfer over ZeroMQ) whose gateway and API servers run on an event loop in a background thread, so
tests use the SDK, the `openai` package or HTTP against it as a user would. Everything is started on
first use and stopped once at the end of the session.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from clusters import LoopThread, ReferenceEngine, Serving, TraceCollector, start_serving


@pytest.fixture(scope="session")
def model_dir() -> str:
    from workers.modelstore import DEFAULT_NAME, resolve

    return str(resolve(DEFAULT_NAME, pull_missing=True))


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    """One embedded Ray for the session, with room (logical CPUs, tier resources) for several clusters,
    listening on 127.0.0.1 only, as `pdserve up`'s."""
    import ray

    from orchestrator.cluster import start_embedded_ray

    os.environ.setdefault("OTEL_BSP_SCHEDULE_DELAY", "500")  # every process exports its spans within 0.5 s
    start_embedded_ray(16)
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(scope="session")
def loop_thread() -> Iterator[LoopThread]:
    loop = LoopThread()
    yield loop
    loop.close()


@pytest.fixture(scope="session")
def trace_collector() -> Iterator[TraceCollector]:
    collector = TraceCollector()
    yield collector
    collector.stop()


@pytest.fixture(scope="session")
def serving(ray_session, loop_thread, model_dir, trace_collector) -> Iterator[Serving]:
    """The session's disaggregated cluster (1 prefill + 1 decode vLLM-CPU worker, ZeroMQ KV transport),
    exporting its traces to the session's OTLP collector."""
    serving = start_serving(loop_thread, model_dir, **{"tracing.exporter": "otlp", "tracing.endpoint": trace_collector.endpoint})
    try:
        yield serving
    finally:
        serving.stop()
@pytest.fixture(scope="session")
def reference_engine(model_dir) -> Iterator[ReferenceEngine]:
    reference = ReferenceEngine(model_dir)
    yield reference
    reference.close()
