import numpy as np
import pytest

from pdserve.bench.outcome import Outcome
from pdserve.bench.stats import Slo, compute_summary, distribution


def _outcome(index=0, start=0.0, token_times=(0.1, 0.2, 0.3), counts=None, end=None, usage=None, expected=3,
             prompt=10, error=None):
    o = Outcome(index, 0, 0.0, prompt, expected, start_s=start)
    o.token_times_s = list(token_times)
    o.token_counts = list(counts or [1] * len(token_times))
    o.end_s = end if end is not None else (token_times[-1] if token_times else start)
    o.finish_reason = "length"
    o.usage = usage
    if error:
        o.fail(error, "boom", o.end_s)
    return o


def test_distribution_matches_numpy_percentiles():
    values = list(np.random.default_rng(0).exponential(10, size=1001))
    dist = distribution(values + [None])
    assert dist["count"] == 1001
    assert dist["p50"] == pytest.approx(np.percentile(values, 50), abs=1e-3)
    assert dist["p99"] == pytest.approx(np.percentile(values, 99), abs=1e-3)
    assert dist["mean"] == pytest.approx(np.mean(values), abs=1e-3)
    assert distribution([1, 2, 3, 4])["p50"] == 2.5
    assert distribution([None])["p50"] is None and distribution([])["count"] == 0


def test_per_request_ttft_tpot_itl_e2e():
    o = _outcome(start=1.0, token_times=(1.5, 1.6, 1.8, 2.1), end=2.2, expected=4)
    assert o.ttft_ms == pytest.approx(500)
    assert o.tpot_ms == pytest.approx((2.1 - 1.5) * 1000 / 3)
    assert o.itl_ms == pytest.approx([100, 200, 300])
    assert o.e2e_ms == pytest.approx(1200)


def test_a_chunk_of_several_tokens_counts_every_token():
    o = _outcome(start=0.0, token_times=(0.5, 0.9), counts=[1, 4], expected=5)
    assert o.output_tokens == 5
    assert o.tpot_ms == pytest.approx(400 / 4)
    assert o.itl_ms == pytest.approx([100] * 4)


def test_bursts_show_in_gaps_and_longest_gap_where_itl_evens_them_out():
    bursty = _outcome(token_times=(0.1, 0.1001, 0.1002, 0.5, 0.5001), expected=5)
    assert bursty.gaps_ms == pytest.approx([0.1, 0.1, 399.8, 0.1])
    smooth = _outcome(token_times=(0.1, 0.2, 0.3, 0.4, 0.5), expected=5)
    summary = compute_summary([bursty, smooth], duration_s=1.0)
    assert summary["gap_ms"]["count"] == 8 and summary["gap_ms"]["min"] == pytest.approx(0.1)
    assert summary["longest_gap_ms"]["max"] == pytest.approx(399.8) and summary["longest_gap_ms"]["min"] == pytest.approx(100)
    assert summary["itl_ms"]["count"] == 8
    assert _outcome(token_times=(0.1,), expected=1).gaps_ms == []


def test_server_usage_count_wins_and_one_token_has_no_tpot():
    o = _outcome(token_times=(0.1, 0.2), usage={"output_tokens": 7})
    assert o.output_tokens == 7
    assert _outcome(token_times=(0.1,), expected=1).tpot_ms is None


def test_summary_throughput_failures_goodput_and_usage():
    ok = [_outcome(i, start=0.0, token_times=(0.1 * (i + 1), 0.1 * (i + 1) + 0.2), end=1.0, prompt=100, expected=2,
                   usage={"output_tokens": 2, "queue_ms": 5.0 * i, "prefill_ms": 10.0, "kv_recomputed": i == 0,
                          "prefill_skipped": False, "cached_tokens": 32})
          for i in range(4)]
    failed = [_outcome(9, token_times=(), end=0.5, error="UNAVAILABLE"),
              _outcome(10, token_times=(), end=0.5, error="UNAVAILABLE"),
              _outcome(11, token_times=(), end=0.5, error="timeout")]
    summary = compute_summary(ok + failed, duration_s=2.0, slo=Slo(ttft_ms=250.0), num_planned=8)
    assert (summary["num_planned"], summary["num_sent"], summary["num_succeeded"], summary["num_failed"]) == (8, 7, 4, 3)
    assert summary["throughput"]["requests_per_s"] == 2.0
    assert summary["throughput"]["output_tokens_per_s"] == 4.0
    assert summary["throughput"]["total_tokens_per_s"] == 204.0
    assert summary["failures"] == {"UNAVAILABLE": {"count": 2, "example": "boom"}, "timeout": {"count": 1, "example": "boom"}}
    # TTFTs 100, 200, 300, 400 ms: two meet 250 ms; failures never do
    assert summary["goodput"]["requests_per_s"] == 1.0
    assert summary["goodput"]["fraction"] == pytest.approx(2 / 7, abs=1e-4)
    assert summary["ttft_ms"]["p50"] == pytest.approx(250)
    assert summary["usage"]["queue_ms"]["mean"] == pytest.approx(7.5)
    assert summary["usage"]["kv_recomputed"] == 1
    assert summary["usage"]["cached_tokens_total"] == 128
    assert summary["finish_reasons"] == {"length": 4}


def test_goodput_is_absent_without_slo_and_mismatched_lengths_are_counted():
    summary = compute_summary([_outcome(expected=3), _outcome(expected=5)], duration_s=1.0)
    assert summary["goodput"]["requests_per_s"] is None
    assert summary["output_length_mismatches"] == 1
