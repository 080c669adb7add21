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
