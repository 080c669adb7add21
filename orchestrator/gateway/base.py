"""The contract between the API servers and the cluster.

Both API servers (gRPC and HTTP) call only these methods, from their asyncio event loop. The real
implementation (`orchestrator.gateway.service.Gateway`) talks to Ray actors; tests of the API layer
may use any other implementation of this ABC.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from orchestrator.request import GenerationChunk, Request


@dataclass(frozen=True)
class ModelInfo:
    id: str
    max_model_len: int
    owned_by: str = "pdserve"


@dataclass(frozen=True)
class Health:
    """ready: every pool has at least one ready worker (what /health and the gRPC health service report)."""

    ready: bool
    detail: dict[str, Any] = field(default_factory=dict)


class BaseGateway(abc.ABC):
    @abc.abstractmethod
    def generate(self, request: Request) -> AsyncIterator[GenerationChunk]:
        """Run one request; an async iterator of chunks, the last with finish_reason and usage.

        Raises (on the first `__anext__`, before any chunk) a `PdserveError`: InvalidRequest,
        ModelNotFound, BudgetRefused, QuotaExceeded (with retry_after_s), Unavailable. Once a chunk has
        been yielded, failures end the stream with a chunk whose finish_reason is ERROR. Closing the
        iterator early (`aclose()`, or cancelling the task that iterates) cancels the request and frees
        its KV blocks on both tiers.
        """

    @abc.abstractmethod
    async def cancel(self, request_id: str, tenant: str) -> bool:
        """Cancel a running request; False when none runs under that id.

        Raises PermissionDenied when the request belongs to another tenant.
        """

    @abc.abstractmethod
    def models(self) -> list[ModelInfo]:
        """The served models (one per cluster today)."""

    @abc.abstractmethod
    def health(self) -> Health:
        """Cheap, non-blocking readiness from the latest cluster snapshot."""

    @abc.abstractmethod
    async def status(self) -> dict[str, Any]:
        """The cluster status document: pools, workers, load, health, transfer rates, planner state."""

    @abc.abstractmethod
    def count_prompt_tokens(self, request: Request) -> int:
        """Tokens the request's prompt becomes after the chat template (for usage and validation)."""
