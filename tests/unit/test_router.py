import pytest

from orchestrator.config import RouterConfig
from orchestrator.errors import Unavailable
from orchestrator.hashing import block_hashes
from orchestrator.router import ClusterSnapshot, PrefixIndex, RouteRequest, WorkerLoad, pick


def _snapshot(prefill=(), decode=()):
    return ClusterSnapshot(prefill=tuple(prefill), decode=tuple(decode))


def test_block_hashes_equal_prefixes_equal_hashes():
    a = block_hashes(list(range(100)), 32)
    b = block_hashes(list(range(96)) + [7, 7, 7, 7], 32)
    c = block_hashes([1] + list(range(1, 100)), 32)
    assert len(a) == 3 and a == b[:3]
    assert a[0] != c[0] and a[1] != c[1]  # chained: a differing first block changes every later hash


def test_picks_least_loaded_pair():
    snap = _snapshot(
        prefill=[WorkerLoad("p0", "prefill", pending_prefill_tokens=500), WorkerLoad("p1", "prefill")],
        decode=[WorkerLoad("d0", "decode", num_running=3, num_active_blocks=40), WorkerLoad("d1", "decode")],
    )
    decision = pick(RouteRequest(100), snap, {}, RouterConfig())
    assert (decision.prefill_worker, decision.decode_worker, decision.skip_prefill) == ("p1", "d1", False)


def test_prefers_decode_worker_holding_the_prefix_and_skips_prefill():
    tokens = list(range(320))
    hashes = block_hashes(tokens, 32)
    index = PrefixIndex(1000)
    index.record("d0", hashes)
    snap = _snapshot(prefill=[WorkerLoad("p0", "prefill")],
                     decode=[WorkerLoad("d0", "decode", num_running=1, num_active_blocks=5), WorkerLoad("d1", "decode")])
    request = RouteRequest(len(tokens) + 5, hashes, 32)
    decision = pick(request, snap, index.matches(["d0", "d1"], hashes), RouterConfig())
    assert decision.decode_worker == "d0"
    assert decision.skip_prefill and decision.prefill_worker is None
    assert decision.matched_tokens == 320


def test_partial_prefix_keeps_prefill():
    hashes = block_hashes(list(range(320)), 32)
    index = PrefixIndex(1000)
    index.record("d0", hashes[:2])
    snap = _snapshot(prefill=[WorkerLoad("p0", "prefill")], decode=[WorkerLoad("d0", "decode")])
    decision = pick(RouteRequest(320, hashes, 32), snap, index.matches(["d0"], hashes), RouterConfig())
    assert decision.prefill_worker == "p0" and not decision.skip_prefill and decision.matched_tokens == 64


def test_draining_and_unready_workers_are_not_picked():
    snap = _snapshot(prefill=[WorkerLoad("p0", "prefill", draining=True), WorkerLoad("p1", "prefill", pending_prefill_tokens=9)],
                     decode=[WorkerLoad("d0", "decode", ready=False), WorkerLoad("d1", "decode", num_running=50)])
    decision = pick(RouteRequest(10), snap, {}, RouterConfig())
    assert (decision.prefill_worker, decision.decode_worker) == ("p1", "d1")


def test_no_prefill_worker_falls_back_to_decode():
    decision = pick(RouteRequest(10), _snapshot(decode=[WorkerLoad("d0", "decode")]), {}, RouterConfig())
    assert decision.prefill_worker is None and "no prefill worker" in decision.reason and not decision.degraded


def test_no_decode_worker_a_prefill_worker_serves_alone():
    snap = _snapshot(prefill=[WorkerLoad("p0", "prefill", pending_prefill_tokens=500), WorkerLoad("p1", "prefill"),
                              WorkerLoad("p2", "prefill", ready=False)],
                     decode=[WorkerLoad("d0", "decode", ready=False), WorkerLoad("d1", "decode", draining=True)])
    decision = pick(RouteRequest(10), snap, {}, RouterConfig())
    assert (decision.decode_worker, decision.prefill_worker, decision.degraded) == ("p1", None, True)
    assert "no decode worker ready" in decision.reason


def test_no_worker_at_all_is_unavailable():
    with pytest.raises(Unavailable, match="no worker is ready"):
        pick(RouteRequest(10), _snapshot(prefill=[WorkerLoad("p0", "prefill", ready=False)]), {}, RouterConfig())


def test_prefix_index_is_bounded_lru():
    index = PrefixIndex(3)
    index.record("d0", [1, 2, 3])
    index.record("d0", [4])
    assert index.match("d0", [1]) == 0  # evicted, oldest first
    assert index.match("d0", [2, 3, 4]) == 3
    index.forget("d0")
    assert index.match("d0", [2]) == 0


# ---- conditional disaggregation ------------------------------------------------------------------------

ON = RouterConfig(conditional_prefill=True, max_local_prefill_stall_ms=100)


def _costed(pending=0, running=0, prefill_rate=1.0, decode_rate=0.0, step_ms=30.0):
    return _snapshot(prefill=[WorkerLoad("p0", "prefill", pending_prefill_tokens=pending, prefill_ms_per_token=prefill_rate)],
                     decode=[WorkerLoad("d0", "decode", num_running=running, prefill_ms_per_token=decode_rate,
                                        step_ms=step_ms)])


def test_a_backed_up_prefill_pool_sends_the_prompt_to_an_idle_decode_worker():
    decision = pick(RouteRequest(200), _costed(pending=600), {}, ON)
    assert (decision.prefill_worker, decision.decode_worker) == (None, "d0")
    assert decision.local_prefill and decision.skip_prefill
    assert "~200 ms there against ~800 ms from the prefill pool (600 tokens queued)" in decision.reason
    assert "it was idle" in decision.reason


def test_an_idle_prefill_pool_keeps_the_prompt_when_the_costs_tie():
    decision = pick(RouteRequest(200), _costed(pending=0), {}, ON)
    assert decision.prefill_worker == "p0" and not decision.local_prefill


def test_a_busy_decode_worker_prefills_only_within_its_streams_stall_bound():
    short = pick(RouteRequest(60), _costed(pending=400, running=3), {}, ON)  # 60 ms + a 30 ms step < 460 ms
    assert short.local_prefill and "its 3 streams wait ~60 ms once" in short.reason
    long = pick(RouteRequest(150), _costed(pending=400, running=3), {}, ON)  # 150 ms > the 100 ms bound
    assert long.prefill_worker == "p0" and not long.local_prefill


def test_a_decode_worker_measured_slower_keeps_the_pool():
    decision = pick(RouteRequest(200), _costed(pending=100, decode_rate=2.0), {}, ON)  # 400 ms local, 300 ms pool
    assert decision.prefill_worker == "p0"


def test_no_local_prefill_until_measured_or_when_turned_off():
    assert pick(RouteRequest(200), _costed(pending=600, prefill_rate=0.0), {}, ON).prefill_worker == "p0"
    assert pick(RouteRequest(200), _costed(pending=600), {}, RouterConfig(conditional_prefill=False)).prefill_worker == "p0"
