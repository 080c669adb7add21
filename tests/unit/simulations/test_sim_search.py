"""Capacity search: candidates respect budgets, the frontier is non-dominated, more load needs more GPUs."""

import pytest

from simulations.search import (
    SearchSpace,
    best,
    candidates,
    pareto_front,
    plan,
    size_for_load,
)
from simulations.workloads import synthetic


@pytest.fixture
def space():
    return SearchSpace(prefill_tps=(1,), decode_tps=(1, 2), ratios=((1, 1), (1, 3)), gpu_counts=(2, 4, 8))


def test_candidates_fit_the_gpu_budget(small_config, space):
    configs = candidates(small_config(), SearchSpace(**{**space.__dict__, "max_gpus": 4}))
    assert configs and all(c.num_gpus <= 4 for c in configs)
    assert {c.mode for c in configs} == {"disaggregated", "colocated"}
    assert len({c.model_dump_json() for c in configs}) == len(configs)


def test_frontier_is_non_dominated_and_covers_the_rest(small_config, chat_workload, space):
    result = plan(small_config(tpot_slo_ms=20), space, chat_workload, workers=0, scales=())
    key = result.latency_key
    front = result.frontier
    assert front
    for p in front:
        for q in result.points:
            if "infeasible" in q:
                continue
            assert not (q["tokens_per_s_per_mw"] > p["tokens_per_s_per_mw"] and q[key] < p[key])
    for q in result.points:  # every point off the frontier is dominated by one on it
        if q in front or "infeasible" in q:
            continue
        assert any(p["tokens_per_s_per_mw"] >= q["tokens_per_s_per_mw"] and p[key] <= q[key] for p in front)
    assert result.best is not None and result.best["meets_slo"]
    assert result.best["tokens_per_s_per_mw"] == max(p["tokens_per_s_per_mw"] for p in result.points if p.get("meets_slo"))


def test_pareto_front_on_hand_made_points():
    pts = [{"tokens_per_s_per_mw": t, "lat": l, "id": i} for i, (t, l) in enumerate([(10, 5), (8, 3), (9, 6), (4, 1), (8, 3)])]
    assert sorted(p["id"] for p in pareto_front(pts, "lat")) == [0, 1, 3, 4]
    assert best([{**pts[0], "meets_slo": False, "replicas": {"gpus": 1}}]) is None


def test_more_load_needs_more_gpus(small_config, space):
    workload = synthetic({"summarisation": 1.0}, rate_rps=2.0, duration_s=20.0, seed=3)
    shape = small_config(num_prefill=1, num_decode=1, ttft_slo_ms=1500, tpot_slo_ms=40)
    light = size_for_load(shape, workload, 1.0, space)
    heavy = size_for_load(shape, workload, 10.0, space)
    assert light["feasible"] and heavy["feasible"]
    assert heavy["gpus"] > light["gpus"]


def test_infeasible_model_is_reported_not_raised(small_config, chat_workload):
    space = SearchSpace(decode_tps=(1,), prefill_tps=(1,), ratios=((1, 1),), gpu_counts=(2,), modes=("disaggregated",))
    result = plan(small_config(model="llama-3.1-70b"), space, chat_workload, workers=0, scales=())
    assert result.best is None and "infeasible" in result.points[0]
