"""OpenTelemetry tracing: one trace per request, spans in the gateway and the workers, across Ray actors.

Life of a trace: 1. each process calls `setup_tracing(...)` once at start (the gateway at `pdserve up`,
each worker actor in its constructor); 2. the gateway opens the request's root span with
`tracer().start_as_current_span("request")` and its queue span; 3. before calling an actor it puts
the current context into a plain dict with `inject_context()` and passes that dict along with the
call; 4. the actor opens its spans (`prefill`, `kv_transfer`, `decode`) as children with
`remote_span(name, carrier)`. Ray does not carry OpenTelemetry context by itself: the dict does.

Exporters: `otlp` (gRPC by default, or HTTP/protobuf; `endpoint` unset: the OTEL_EXPORTER_OTLP_*
environment variables or the exporter's default), `console` (spans printed to stdout), `none`
(spans are created and dropped: no cost beyond the calls).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Literal

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SimpleSpanProcessor, SpanExporter

from orchestrator.errors import ConfigError

TRACER_NAME = "pdserve"
Exporter = Literal["otlp", "console", "none"]

_provider: TracerProvider | None = None
_provider_key: tuple[Any, ...] | None = None


def setup_tracing(
    service_name: str = "pdserve",
    exporter: Exporter = "none",
    endpoint: str | None = None,
    protocol: Literal["grpc", "http"] = "grpc",
    span_exporter: SpanExporter | None = None,
) -> TracerProvider:
    """Install this process's tracer provider and return it.

    Idempotent: called again with the same arguments, it returns the provider it installed. Called
    with other arguments (a process that serves a second cluster, with another exporter), it flushes and
    shuts down the first provider and installs the new one: the last configuration wins, rather than
    the first one silently. `span_exporter` overrides `exporter` (tests pass an in-memory exporter).
    Raises ConfigError on an unknown exporter or protocol, or when the OTLP exporter is not installed.
    """
    global _provider, _provider_key
    key = (service_name, exporter, endpoint, protocol, id(span_exporter) if span_exporter is not None else None)
    if _provider is not None and key == _provider_key:
        return _provider
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    if span_exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(span_exporter))
    elif exporter == "console":
        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
    elif exporter == "otlp":
        provider.add_span_processor(BatchSpanProcessor(_otlp_exporter(endpoint, protocol)))
    elif exporter != "none":
        raise ConfigError(f"unknown tracing exporter {exporter!r}: use otlp, console or none")
    if _provider is None:
        trace.set_tracer_provider(provider)  # OpenTelemetry's global can be set once; `tracer()` reads ours
    else:
        _provider.shutdown()
    _provider, _provider_key = provider, key
    return provider


def _otlp_exporter(endpoint: str | None, protocol: str) -> SpanExporter:
    try:
        if protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        elif protocol == "http":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter  # type: ignore[assignment]
        else:
            raise ConfigError(f"unknown OTLP protocol {protocol!r}: use grpc or http")
    except ImportError as exc:
        raise ConfigError(f"tracing exporter otlp needs opentelemetry-exporter-otlp ({exc.name} is missing): "
                          "pip install 'pdserve[server]'") from None
    return OTLPSpanExporter(endpoint=endpoint) if endpoint else OTLPSpanExporter()


def shutdown_tracing() -> None:
    """Flush and stop this process's exporter (call at exit; spans still buffered are sent)."""
    if _provider is not None:
        _provider.shutdown()


def tracer(name: str = TRACER_NAME) -> trace.Tracer:
    """The tracer to open spans with, from the provider `setup_tracing` installed last (a no-op tracer
    before it ran)."""
    return _provider.get_tracer(name) if _provider is not None else trace.get_tracer(name)


def inject_context(carrier: dict[str, str] | None = None) -> dict[str, str]:
    """Put the current trace context (W3C `traceparent`/`tracestate`) into `carrier` (a new dict when None).

    Returns the carrier: a plain dict of strings, safe to pass as an argument of a Ray actor call.
    """
    carrier = {} if carrier is None else carrier
    propagate.inject(carrier)
    return carrier


def extract_context(carrier: Mapping[str, str] | None) -> otel_context.Context:
    """The trace context carried in `carrier` (an empty context when None or empty)."""
    return propagate.extract(dict(carrier or {}))


def inject_span(span: trace.Span, carrier: dict[str, str] | None = None) -> dict[str, str]:
    """Like `inject_context`, for `span` rather than the current span (spans kept open across an async
    generator's yields are not made current: the generator may resume in another context)."""
    carrier = {} if carrier is None else carrier
    propagate.inject(carrier, context=trace.set_span_in_context(span))
    return carrier


def child_span(name: str, parent: trace.Span, **attributes: Any) -> trace.Span:
    """Start span `name` under `parent` without making it current; end it with `span.end()`."""
    return tracer().start_span(name, context=trace.set_span_in_context(parent), attributes=attributes or None)


def setup_from_config(service_name: str, config: Any) -> TracerProvider:
    """`setup_tracing` with a `TracingConfig`."""
    return setup_tracing(service_name, config.exporter, config.endpoint, config.protocol)


@contextmanager
def remote_span(name: str, carrier: Mapping[str, str] | None, **attributes: Any) -> Iterator[trace.Span]:
    """Open span `name` as a child of the context in `carrier` (from `inject_context` on the caller's side)
    and make it current. Yields the span; exceptions are recorded on it and re-raised."""
    with tracer().start_as_current_span(name, context=extract_context(carrier), attributes=attributes or None) as span:
        yield span
