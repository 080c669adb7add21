"""Config section of the API servers (gRPC and OpenAI-compatible HTTP)."""

from pathlib import Path

from pydantic import Field, model_validator

from orchestrator.config.base import ConfigModel


class ServerConfig(ConfigModel):
    """Where the APIs listen and what they accept."""

    host: str = Field("127.0.0.1", description="Address both API servers bind (0.0.0.0 to accept remote clients).")
    grpc_port: int = Field(50051, ge=0, le=65535, description="gRPC API port (0: any free port).")
    http_port: int = Field(8000, ge=0, le=65535, description="HTTP API port: OpenAI-compatible API, /health, /metrics (0: any free port).")
    max_concurrent_requests: int = Field(256, ge=1, description="Requests in flight beyond this are refused with RESOURCE_EXHAUSTED / 429.")
    concurrency_retry_after_s: float = Field(
        1.0, gt=0, description="Retry hint sent with a refusal over max_concurrent_requests (gRPC `retry-after-s` trailer, HTTP Retry-After)."
    )
    max_request_bytes: int = Field(4 * 1024 * 1024, ge=1024, description="Largest request body or message accepted.")
    max_output_tokens: int = Field(32_768, ge=1, description="Largest max_tokens a request may ask for.")
    max_stop_sequences: int = Field(8, ge=0, description="Most stop strings one request may carry.")
    max_stop_sequence_chars: int = Field(256, ge=1, description="Longest stop string accepted, in characters.")
    shutdown_grace_s: float = Field(5.0, ge=0, description="On stop, in-flight requests get this long to finish before they are cancelled.")
    tls_cert: Path | None = Field(None, description="PEM certificate: serve both APIs over TLS.")
    tls_key: Path | None = Field(None, description="PEM private key for tls_cert.")
    api_keys_file: Path | None = Field(
        None, description="YAML or JSON file mapping API keys to tenant names; with keys configured every request must carry one."
    )

    @model_validator(mode="after")
    def _tls_pair(self) -> "ServerConfig":
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together: set both to serve TLS, or neither")
        return self

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None
