"""Event-loop invariants: every request finishes exactly once, tokens are conserved, time moves forward."""

import pytest

from simulations.events import EventLoop
from simulations.run import simulate


def test_events_run_in_time_order_and_return_follow_ups():
    seen = []

    def handler(now, payload):
        seen.append((now, payload))
        return [(now + 1.0, handler, payload + 1)] if payload < 3 else None

    loop = EventLoop()
    loop.schedule([(0.5, handler, 0), (0.1, lambda now, p: seen.append((now, p)), "early")])
    loop.run()
    assert seen == [(0.1, "early"), (0.5, 0), (1.5, 1), (2.5, 2), (3.5, 3)]


@pytest.mark.parametrize("mode", ["disaggregated", "colocated"])
def test_every_request_finishes_once_with_its_tokens(small_config, chat_workload, mode):
    config = small_config(mode=mode, num_prefill=0 if mode == "colocated" else 1, max_num_seqs=8)
    summary, result = simulate(config, chat_workload)
    assert [r.num_finishes for r in result.requests] == [1] * len(chat_workload)
    assert summary["num_unfinished"] == 0 and summary["num_refused"] == 0
    assert summary["input_tokens"] == sum(r.prompt_tokens for r in chat_workload)
    assert summary["output_tokens"] == sum(r.output_tokens for r in chat_workload)
    for request in result.requests:
        assert request.arrival_s <= request.first_token_s <= request.finish_s
        assert request.remaining == 0 and request.prefill_left == 0
    for engine in result.engines:  # every KV reservation was given back
        assert engine.kv_used == 0 and not engine.running and not engine.prefill_queue
    assert all(r.transfer_done_s >= r.first_token_s for r in result.requests if mode == "disaggregated" and r.output_tokens > 1)


def test_the_workload_is_not_mutated(small_config, chat_workload):
    simulate(small_config(), chat_workload)
    assert all(r.finish_s < 0 and r.remaining == 0 for r in chat_workload)


def test_more_load_means_more_latency(small_config, chat_workload):
    from simulations.run import scaled
    light, _ = simulate(small_config(num_decode=1), chat_workload)
    heavy, _ = simulate(small_config(num_decode=1), scaled(chat_workload, 8.0))
    assert heavy["tpot_ms_p50"] > light["tpot_ms_p50"]
    assert heavy["duration_s"] < light["duration_s"]


def test_batch_limit_is_respected(small_config, chat_workload):
    from simulations.cluster import Cluster
    from simulations.run import fresh
    cluster = Cluster(small_config(max_num_seqs=3), fresh(chat_workload))
    peak = {"batch": 0}
    original = cluster.loop.run

    def watch(until_s=float("inf"), on_progress=None):
        return original(until_s, lambda now: None)
    cluster.loop.run = watch
    for engine in cluster.engines.values():
        join = engine._join

        def counted(request, engine=engine, join=join):
            join(request)
            peak["batch"] = max(peak["batch"], len(engine.running))
        engine._join = counted
    cluster.run()
    assert 0 < peak["batch"] <= 3


def test_prefix_reuse_routes_to_the_holder_and_skips_work(small_config, prefix_workload):
    summary, result = simulate(small_config(num_decode=3), prefix_workload)
    assert summary["num_unfinished"] == 0
    assert summary["cached_prompt_tokens"] >= 8 * 512 * (len(prefix_workload) - 2)
    # the router sends the shared prefix to one decode worker, so transfers skip the shared blocks
    assert sum(1 for r in result.requests if r.transfer_skip_tokens >= 8 * 512) >= len(prefix_workload) - 2


def test_a_request_larger_than_the_kv_cache_is_refused_not_dropped(small_config):
    from simulations.request import SimRequest
    huge = [SimRequest(0, 0.0, 3_000_000, 10), SimRequest(1, 0.1, 100, 10)]
    summary, result = simulate(small_config(), huge)
    assert result.requests[0].finish_reason == "error" and "KV" in result.requests[0].error
    assert summary["num_refused"] == 1 and summary["num_served"] == 1


def test_conditional_disaggregation_routes_with_the_live_router_and_its_costs(small_config, chat_workload):
    """With the prefill pool backed up, the simulated router (the live `router.pick`, fed each engine's timing as
    the measured costs) prefills some prompts on decode engines; turned off, none; every request still ends."""
    from orchestrator.config import RouterConfig
    from simulations.run import scaled

    busy = scaled(chat_workload, 6.0)
    on, on_result = simulate(small_config(router=RouterConfig(conditional_prefill=True)), busy)
    off, off_result = simulate(small_config(), busy)
    local = sum(r.prefill_skipped for r in on_result.requests)
    assert 0 < local < len(busy) and sum(r.prefill_skipped for r in off_result.requests) == 0
    assert on["num_unfinished"] == off["num_unfinished"] == 0
    assert on["output_tokens"] == off["output_tokens"] == sum(r.output_tokens for r in busy)
