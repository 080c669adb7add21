"""The server-wide concurrency limit, shared by the gRPC and HTTP servers.

A request takes a slot for as long as its stream runs; past `max_concurrent_requests` it is refused
at once (never queued) with `QuotaExceeded` and a retry hint, which the servers turn into
RESOURCE_EXHAUSTED + `retry-after-s` trailer / HTTP 429 + Retry-After. Used from one event loop only.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import Counter, Gauge

from orchestrator.errors import QuotaExceeded

api_in_flight = Gauge("pdserve_api_in_flight_requests", "Generate requests holding a slot of the API servers.")
api_refused_total = Counter("pdserve_api_refused_total",
                            "Generate requests refused by the API servers' concurrency limit.", ["api"])


class ConcurrencyLimiter:
    def __init__(self, max_in_flight: int, retry_after_s: float) -> None:
        self.max_in_flight = max_in_flight
        self.retry_after_s = retry_after_s
        self.in_flight = 0

    @contextmanager
    def slot(self, api: str) -> Iterator[None]:
        """Hold one slot for the block's duration; raises QuotaExceeded when none is free."""
        if self.in_flight >= self.max_in_flight:
            api_refused_total.labels(api=api).inc()
            raise QuotaExceeded(f"the server is at its limit of {self.max_in_flight} concurrent requests: "
                                f"retry in {self.retry_after_s:g} s", retry_after_s=self.retry_after_s)
        self.in_flight += 1
        api_in_flight.inc()
        try:
            yield
        finally:
            self.in_flight -= 1
            api_in_flight.dec()
