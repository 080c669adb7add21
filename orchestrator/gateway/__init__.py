"""The gateway: the one door between the API layer and the cluster.

The API servers hand it a `Request`; it admits (budget, quotas), routes (router policy), dispatches
to worker actors, enforces the budget on every token, and yields `GenerationChunk`s. See `base.py`
for the contract both servers rely on.
"""

from orchestrator.gateway.base import BaseGateway, Health, ModelInfo

__all__ = ["BaseGateway", "Health", "ModelInfo"]
