"""Budgets in the simulator: `orchestrator.budget` admits, meters and caps every request, refusals are counted."""

import pytest

from orchestrator.config import BudgetConfig
from orchestrator.request import Budget
from simulations.budgets import THINK_END, WAIT, WORD, compute_stream
from simulations.request import SimRequest
from simulations.run import simulate
from simulations.workloads import BudgetMix, synthetic


def budget_config(**defaults):
    return BudgetConfig.model_validate({"tenant_defaults": {"defaults": defaults}})


@pytest.fixture
def thinking_workload():
    return synthetic({"chat": 1.0}, rate_rps=4.0, duration_s=20.0, spread=0.3,
                     budget=BudgetMix(thinking_share=0.5, thinking_mean_tokens=2048, max_thinking_tokens=512), seed=3)


def check_conservation(result):
    assert [r.num_finishes for r in result.requests] == [1] * len(result.requests)
    for engine in result.engines:
        assert engine.kv_used == 0 and not engine.running and not engine.prefill_queue and not engine.waiting


def test_thinking_is_capped_by_the_engine_side_controller(small_config, thinking_workload):
    summary, result = simulate(small_config(), thinking_workload)
    check_conservation(result)
    thinkers = [r for r in result.requests if r.thinking_tokens]
    assert thinkers and summary["budgets_enforced"]
    for request in thinkers:
        assert request.meter.num_thinking_tokens <= 512
        answer = request.output_tokens - request.meter.num_thinking_tokens
        assert request.output_tokens == min(request.thinking_tokens, 512) + answer
    assert summary["num_thinking_capped"] == sum(1 for r in thinkers if r.thinking_tokens > 512) > 0
    assert summary["thinking_tokens"] < summary["thinking_tokens_uncapped"]
    assert summary["output_tokens"] == sum(r.output_tokens for r in result.requests)
    # without enforcement the model thinks as long as it likes
    uncapped, _ = simulate(small_config(budgets="off"), thinking_workload)
    assert uncapped["output_tokens"] > summary["output_tokens"] and not uncapped["budgets_enforced"]


def test_the_stream_follows_min_and_max_thinking():
    request = SimRequest(0, 0.0, 10, 110, thinking_tokens=100)
    capped, forced = compute_stream(request, Budget(max_thinking_tokens=30, start_thinking=True), BudgetConfig())
    assert forced and capped.index(THINK_END) == 30 and capped.count(WORD) == 29 + 10  # newline + delimiter close it
    short = SimRequest(0, 0.0, 10, 15, thinking_tokens=5)
    padded, forced = compute_stream(short, Budget(min_thinking_tokens=20, start_thinking=True), BudgetConfig())
    assert not forced and WAIT in padded and padded.index(THINK_END) >= 20
    plain, _ = compute_stream(SimRequest(0, 0.0, 10, 7), Budget(), BudgetConfig())
    assert plain == [WORD] * 7


def test_admission_refusals_are_explicit_and_counted(small_config):
    workload = [SimRequest(i, 0.1 * i, 2000 if i % 2 else 100, 50) for i in range(10)]
    summary, result = simulate(small_config(budget=budget_config(max_total_tokens=1000)), workload)
    refused = [r for r in result.requests if r.refusal]
    assert len(refused) == 5 and all(r.refusal == "budget" and "max_total_tokens" in r.error for r in refused)
    assert summary["num_refused"] == summary["num_budget_refused"] == 5 and summary["refused_by"] == {"budget": 5}
    assert summary["num_served"] == 5 and "max_total_tokens" in summary["refusal_examples"]["budget"]
    assert summary["meets_slo"]  # the contract refused them, not the cluster
    # max_total_tokens also stops the ones admitted: prompt 100 + 900 generated
    workload = [SimRequest(0, 0.0, 100, 5000)]
    summary, result = simulate(small_config(budget=budget_config(max_total_tokens=1000)), workload)
    assert result.requests[0].output_tokens == 900 and summary["finish_reasons"] == {"total_budget": 1}


def test_tenant_quotas_refuse_a_burst(small_config):
    quota = BudgetConfig.model_validate({"tenant_defaults": {"quota": {"prefill_tokens_per_s": 100.0,
                                                                       "prefill_tokens_burst": 1000.0}}})
    workload = [SimRequest(i, 0.01 * i, 500, 10) for i in range(6)]
    summary, result = simulate(small_config(budget=quota), workload)
    assert summary["num_quota_refused"] == 4 and summary["refused_by"] == {"quota": 4}
    assert all("quota" in r.error for r in result.requests if r.refusal)
    check_conservation(result)


def test_cost_budget_stops_generation(small_config):
    config = small_config(budget=budget_config(max_cost_usd=1e-7 * 100 + 4e-7 * 50))
    summary, result = simulate(config, [SimRequest(0, 0.0, 100, 500)])
    request = result.requests[0]
    assert request.finish_reason == "cost_budget" and request.output_tokens == 50
    assert request.cost_usd == pytest.approx(1e-7 * 100 + 4e-7 * 50)
    assert summary["budget_cost_usd"] == pytest.approx(request.cost_usd)


def test_deadlines_stop_requests_wherever_they_are(small_config):
    # long prompts queue for the one prefill engine, two decode slots: requests time out in the prefill
    # queue, inside a prefill step and while decoding
    workload = [SimRequest(i, 0.01 * i, 16000, 3000) for i in range(30)]
    config = small_config(num_decode=1, max_num_seqs=2, budget=budget_config(deadline_ms=3000))
    summary, result = simulate(config, workload)
    check_conservation(result)
    assert summary["finish_reasons"] == {"deadline": 30}
    for request in result.requests:
        assert request.finish_s == pytest.approx(request.arrival_s + 3.0)
        assert request.meter.num_output_tokens == request.output_tokens < 3000
    never_started = [r for r in result.requests if r.first_token_s < 0]
    assert 0 < len(never_started) < 30 and summary["num_served"] == 30 - len(never_started)
    assert not summary["meets_slo"] and summary["goodput_rps"] == 0
    assert summary["duration_s"] < 3.0 + 30 * 0.01 + 1.0  # no timer outlives the work


def test_a_deadline_shorter_than_the_prefill_is_refused_at_admission(small_config):
    _, result = simulate(small_config(budget=budget_config(deadline_ms=0.01)), [SimRequest(0, 0.0, 8000, 10)])
    assert result.requests[0].refusal == "budget" and "deadline_ms" in result.requests[0].error


def test_cli_budget_config_and_report(tmp_path, capsys):
    from pdserve.cli import main
    config = tmp_path / "pdserve.yaml"
    config.write_text("budget:\n  tenant_defaults:\n    defaults: {max_output_tokens: 200}\n")
    out = tmp_path / "sim"
    code = main(["simulate", "--workload", "chat", "--rate", "2", "--duration", "10", "--budget-config", str(config),
                 "--no-progress", "--out", str(out)])
    assert code == 0
    import json
    summary = json.loads((out / "summary.json").read_text())
    assert summary["budgets_enforced"] and set(summary["finish_reasons"]) <= {"length"}
    assert summary["output_tokens"] <= 200 * summary["num_served"]
    assert "## Budgets" in (out / "report.md").read_text()
    assert "budgets: finish reasons" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text("tenant_defaults: {defaults: {max_output_tokens: -1}}\n")
    assert main(["simulate", "--budget-config", str(bad), "--no-progress"]) == 2
    assert "invalid budget config" in capsys.readouterr().err
