"""Config section of OpenTelemetry tracing (one trace per request, spans in the gateway and the workers)."""

from typing import Literal

from pydantic import Field

from orchestrator.config.base import ConfigModel


class TracingConfig(ConfigModel):
    """Where request traces go."""

    exporter: Literal["none", "console", "otlp"] = Field(
        "none", description="`otlp`: send spans to an OpenTelemetry collector; `console`: print them; `none`: drop them."
    )
    endpoint: str | None = Field(
        None, description="OTLP collector endpoint (unset: the OTEL_EXPORTER_OTLP_* environment or the exporter's default)."
    )
    protocol: Literal["grpc", "http"] = Field("grpc", description="OTLP over gRPC or HTTP/protobuf.")
