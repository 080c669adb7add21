"""pdserve: disaggregated LLM serving.

The public facade: the client SDK (`Client`, `AsyncClient`, their typed errors) and the CLI
(`pdserve.cli`). Importing `pdserve` needs only grpcio and protobuf (a client-only install); servers
live in `orchestrator`/`workers`.

    from pdserve import Client

    with Client("127.0.0.1:50051") as client:
        print(client.generate("The capital of France is", max_tokens=8, temperature=0).text)
"""

from orchestrator.request import Budget, FinishReason, Usage
from pdserve.client import AsyncClient, Chunk, Client, Completion, RetryPolicy
from pdserve.errors import (
    DeadlineExceeded,
    InvalidRequest,
    NotFound,
    PdserveError,
    PermissionDenied,
    QuotaExceeded,
    ServerError,
    Unauthenticated,
    Unavailable,
)

__version__ = "0.1.0"

__all__ = [
    "AsyncClient", "Budget", "Chunk", "Client", "Completion", "DeadlineExceeded", "FinishReason", "InvalidRequest",
    "NotFound", "PdserveError", "PermissionDenied", "QuotaExceeded", "RetryPolicy", "ServerError", "Unauthenticated",
    "Unavailable", "Usage",
]
