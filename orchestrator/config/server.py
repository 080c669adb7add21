"""Config section of the API servers (gRPC and OpenAI-compatible HTTP)."""

from pathlib import Path

from pydantic import Field

from orchestrator.config.base import ConfigModel


class ServerConfig(ConfigModel):
    """Where the APIs listen and what they accept."""

    host: str = Field("127.0.0.1", description="Address both API servers bind (0.0.0.0 to accept remote clients).")
    grpc_port: int = Field(50051, ge=0, le=65535, description="gRPC API port (0: any free port).")
    http_port: int = Field(8000, ge=0, le=65535, description="HTTP API port: OpenAI-compatible API, /health, /metrics (0: any free port).")
    max_concurrent_requests: int = Field(256, ge=1, description="Requests in flight beyond this are refused with RESOURCE_EXHAUSTED / 429.")
    max_request_bytes: int = Field(4 * 1024 * 1024, ge=1024, description="Largest request body or message accepted.")
    max_output_tokens: int = Field(32_768, ge=1, description="Largest max_tokens a request may ask for.")
    tls_cert: Path | None = Field(None, description="PEM certificate: serve both APIs over TLS.")
    tls_key: Path | None = Field(None, description="PEM private key for tls_cert.")
    api_keys_file: Path | None = Field(
        None, description="YAML or JSON file mapping API keys to tenant names; with keys configured every request must carry one."
    )
