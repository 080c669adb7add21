"""The server-wide concurrency limit: refuse at once past the limit, with a retry hint; free on any exit."""

from __future__ import annotations

import pytest

from orchestrator.api.limits import ConcurrencyLimiter
from orchestrator.errors import QuotaExceeded


def test_past_the_limit_a_request_is_refused_with_a_retry_hint():
    limiter = ConcurrencyLimiter(2, retry_after_s=1.5)
    with limiter.slot("grpc"), limiter.slot("http"):
        with pytest.raises(QuotaExceeded) as caught, limiter.slot("http"):
            pass
        assert caught.value.retry_after_s == 1.5 and caught.value.http_status == 429
        assert "limit of 2 concurrent requests" in caught.value.message and "retry in 1.5 s" in caught.value.message
        assert limiter.in_flight == 2
    assert limiter.in_flight == 0


def test_a_slot_is_freed_when_the_request_fails():
    limiter = ConcurrencyLimiter(1, retry_after_s=1)
    with pytest.raises(RuntimeError), limiter.slot("grpc"):
        raise RuntimeError("boom")
    with limiter.slot("grpc"):
        assert limiter.in_flight == 1
