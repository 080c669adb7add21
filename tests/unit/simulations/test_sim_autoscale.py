"""Autoscaling: the live planner decides every tick from what the simulated cluster shows, the virtual
actuator applies it, replicas over time come from those decisions."""

import json

import pytest

from orchestrator.errors import ConfigError
from orchestrator.planner import Observations, ScalingDecision
from orchestrator.profiles import EXAMPLE_PROFILE
from pdserve.cli import main
from simulations import autoscale
from simulations.cluster import Cluster
from simulations.run import fresh, simulate
from simulations.workloads import synthetic


def ramp():
    """40 s at 2 req/s, 80 s at 25 req/s, 80 s at 2 req/s (chat shapes, Llama-3.1-8B on H100)."""
    low = synthetic({"chat": 1.0}, 2.0, 40.0, 0.3, seed=1)
    high = synthetic({"chat": 1.0}, 25.0, 80.0, 0.3, seed=2)
    tail = synthetic({"chat": 1.0}, 2.0, 80.0, 0.3, seed=3)
    requests = low + [r for r in high] + tail
    offsets = [0.0] * len(low) + [40.0] * len(high) + [120.0] * len(tail)
    for i, (request, offset) in enumerate(zip(requests, offsets)):
        request.request_id, request.arrival_s = i, request.arrival_s + offset
    return requests


def autoscaled(small_config, **changes):
    planner = {"interval_s": 5.0, "prefill": {"scale_down_window_s": 20.0, "scale_down_cooldown_s": 20.0},
               "decode": {"scale_down_window_s": 20.0, "scale_down_cooldown_s": 20.0}}
    values = {"num_decode": 1, "autoscale": True, "worker_start_s": 10.0, "planner": planner, "ttft_slo_ms": 500.0,
              "tpot_slo_ms": 40.0}
    values.update(changes)
    return small_config(**values)


def test_the_planner_resizes_the_pools_with_the_load(small_config):
    summary, result = simulate(autoscaled(small_config), ramp())
    assert summary["num_unfinished"] == 0 and summary["num_refused"] == 0
    assert [r.num_finishes for r in result.requests] == [1] * len(result.requests)
    decisions = result.planner_decisions
    assert decisions and all(isinstance(d, ScalingDecision) for d in decisions)
    assert [d.now_s for d in decisions[:3]] == [5.0, 10.0, 15.0]
    assert summary["replicas_max"]["decode"] > 1  # grew under the burst
    times = [t for t, _, _ in summary["timeline"]]
    assert times == sorted(times)
    final_decode = summary["timeline"][-1][2]
    assert final_decode < summary["replicas_max"]["decode"]  # and shrank after it
    planner = summary["planner"]
    assert planner["num_decisions"] == len(decisions) and planner["actions"]["decode"].get("scale_up", 0) >= 1
    assert any(e.stopped_s >= 0 and e.draining for e in result.engines)  # a drained engine left
    for engine in result.engines:
        assert engine.kv_used == 0 and not engine.running


def test_decisions_come_from_the_live_planner_and_reach_the_cluster(small_config, chat_workload, monkeypatch):
    seen: list[Observations] = []

    def fake_decide(observations, profiles, slo, state, config):
        seen.append(observations)
        return ScalingDecision(num_prefill=2, num_decode=3, now_s=observations.now_s)

    monkeypatch.setattr(autoscale, "decide", fake_decide)
    config = autoscaled(small_config, worker_start_s=1.0)
    cluster = Cluster(config, fresh(chat_workload))
    planner = autoscale.SimPlanner(cluster)
    cluster.run()
    first = seen[0]
    assert first.now_s == 5.0 and first.num_prefill == 1 and first.num_decode == 1
    assert first.arrival_rate_per_s == pytest.approx(sum(1 for r in chat_workload if r.arrival_s <= 5.0) / 5.0)
    assert seen[1].num_prefill == 2 and seen[1].num_decode == 3  # the engines started 1 s after the decision
    assert planner.actuator.history[0] == (5.0, 2, 3)
    # the live loop's own observation code sees first tokens and streamed token gaps, interval by interval
    assert all(o.prefill_ttft_ms is not None for o in seen[:4])
    assert any(o.decode_itl_ms is not None and o.decode_itl_ms > 0 for o in seen)
    assert seen[2].output_tokens.mean == pytest.approx(
        sum(r.output_tokens for r in chat_workload if r.arrival_s <= 15.0) / sum(1 for r in chat_workload
                                                                               if r.arrival_s <= 15.0), rel=0.01)
    assert len(cluster.pool("prefill")) == 2 and len(cluster.pool("decode")) == 3


def test_planner_settings_come_from_the_simulation(small_config):
    cluster = Cluster(autoscaled(small_config, max_gpus=6, decode_tp=2), [])
    config = autoscale.planner_config(cluster.config, cluster.power)
    watts = cluster.power.all_in_kw_per_gpu * 1e3
    assert config.slo.ttft_ms == 500.0 and config.slo.itl_ms == 40.0 and config.slo.percentile == 90.0
    assert config.decode.power_per_worker_w == pytest.approx(2 * watts)
    assert config.power_budget_w == pytest.approx(6 * watts)
    with pytest.raises(ConfigError, match="inconsistent"):
        autoscale.planner_config(autoscaled(small_config, max_gpus=1).model_copy(), cluster.power)


def test_autoscaling_needs_two_pools(small_config):
    with pytest.raises(ValueError, match="disaggregated"):
        small_config(mode="colocated", num_prefill=0, autoscale=True)


def test_cli_autoscales_from_a_profile(tmp_path):
    out = tmp_path / "sim"
    code = main(["simulate", "--profile", str(EXAMPLE_PROFILE), "--autoscale", "--workload", "chat", "--rate", "0.3",
                 "--duration", "120", "--ttft-slo-ms", "3000", "--tpot-slo-ms", "150", "--planner-interval-s", "10",
                 "--worker-start-s", "20", "--max-replicas", "3", "--no-progress", "--out", str(out)])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["planner"]["num_decisions"] >= 12
    assert summary["configuration"]["planner"]["decode"]["max_replicas"] == 3
    assert summary["replicas_max"]["decode"] <= 3 and summary["replicas_over_time"]
    assert "## Planner" in (out / "report.md").read_text()
