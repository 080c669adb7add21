"""The pure parts of benchmarks/sim_vs_real.py: replaying a bench report, calibration, the comparison table."""

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest

from orchestrator.errors import ConfigError
from orchestrator.profiles import EXAMPLE_PROFILE, EngineProfile
from simulations import accuracy
from simulations.run import simulate

SCRIPT = Path(__file__).resolve().parents[3] / "benchmarks" / "sim_vs_real.py"


def bench_report(rows):
    return {"schema_version": 1, "summary": {}, "requests": rows}


def row(index, scheduled_s, ttft_ms, tpot_ms, lag_ms=0.0, ok=True, prefill_ms=None):
    usage = {"queue_ms": 0.5, "prefill_ms": prefill_ms if prefill_ms is not None else ttft_ms - 7.5}
    return {"index": index, "scheduled_s": scheduled_s, "dispatch_lag_ms": lag_ms, "prompt_tokens": 128,
            "expected_output_tokens": 64, "output_tokens": 64, "ok": ok, "ttft_ms": ttft_ms, "tpot_ms": tpot_ms,
            "usage": usage}


def test_the_workload_is_what_the_client_sent():
    report = bench_report([row(0, 1.0, 200, 50, lag_ms=3.0), row(1, 0.5, 210, 52, lag_ms=600.0), row(2, 2.0, 190, 49)])
    requests = accuracy.workload_from_bench(report)
    assert [r.arrival_s for r in requests] == pytest.approx([0.0, 0.097, 0.997])  # sends: 1.003, 1.1, 2.0
    assert [(r.prompt_tokens, r.output_tokens) for r in requests] == [(128, 64)] * 3
    with pytest.raises(ConfigError):
        accuracy.workload_from_bench(bench_report([]))


def test_measured_percentiles_are_the_bench_ones_over_successes():
    rows = [row(i, i, 100 + i, 50 + i) for i in range(10)] + [row(10, 10, 9999, 9999, ok=False)]
    measured = accuracy.measured_metrics(bench_report(rows))
    assert measured["ttft_ms_p50"] == pytest.approx(np.percentile([100 + i for i in range(10)], 50))
    assert measured["tpot_ms_p90"] == pytest.approx(np.percentile([50 + i for i in range(10)], 90))


def test_comparison_rows_errors_and_bounds():
    measured = {"ttft_ms_p50": 200.0, "ttft_ms_p90": 300.0, "tpot_ms_p50": 100.0, "tpot_ms_p90": 120.0}
    predicted = {"ttft_ms_p50": 220.0, "ttft_ms_p90": 390.0, "tpot_ms_p50": 84.0, "tpot_ms_p90": math.nan}
    rows = {r["metric"]: r for r in accuracy.compare(measured, predicted)}
    assert rows["ttft_ms_p50"]["error"] == pytest.approx(0.10) and rows["ttft_ms_p50"]["within"]
    assert rows["ttft_ms_p90"]["error"] == pytest.approx(0.30) and not rows["ttft_ms_p90"]["within"]
    assert rows["tpot_ms_p50"]["bound"] == 0.15 and not rows["tpot_ms_p50"]["within"]  # -16%
    assert not rows["tpot_ms_p90"]["within"]  # no prediction is never within
    table = accuracy.markdown_table(list(rows.values()))
    assert table.splitlines()[0].startswith("| metric | measured (ms) | simulated (ms) | error")
    assert "| ttft p50 | 200.0 | 220.0 | +10.0% | ±15% | yes |" in table
    assert not accuracy.all_within(list(rows.values()))


def test_calibration_measures_the_request_overhead_outside_the_servers_prefill():
    rows = [row(i, 5.0 * i, 200.0 + i, 50.0) for i in range(5)]  # TTFT - queue - prefill = 7 ms each
    calibration = accuracy.calibrate(bench_report(rows), accuracy.Calibration(sources={"transfer_gb_s": "x"}))
    assert calibration.request_overhead_ms == pytest.approx(7.0)
    assert set(calibration.sources) == {"transfer_gb_s", "request_overhead_ms"}
    with pytest.raises(ConfigError):
        accuracy.calibrate(bench_report([row(0, 0.0, 100.0, 50.0, ok=False)]), accuracy.Calibration())


def test_a_replayed_report_is_simulated_with_the_profile():
    profile = EngineProfile.load(EXAMPLE_PROFILE)
    rows = [row(i, 4.0 * i, 0.0, 0.0) for i in range(6)]  # far apart: nothing queues
    calibration = accuracy.Calibration(request_overhead_ms=5.0, decode_kv_load_steps=1)
    config = accuracy.sim_config(str(EXAMPLE_PROFILE), calibration, max_num_seqs=64, max_batched_tokens=2048)
    summary, _ = simulate(config, accuracy.workload_from_bench(bench_report(rows)))
    predicted = accuracy.predicted_metrics(summary)
    assert predicted["ttft_ms_p50"] == pytest.approx(5.0 + profile.predict_prefill_ms([128]))
    step_ms = profile.predict_decode_step_ms(1, 160)
    assert predicted["tpot_ms_p50"] == pytest.approx(step_ms, rel=0.1)


def test_the_script_parses_and_has_no_side_effects_on_import():
    spec = importlib.util.spec_from_file_location("sim_vs_real", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.pdserve("up")[-1] == "up" and callable(module.main)


def test_foreign_load_is_the_machines_busy_time_less_this_runs():
    # (wall s, machine busy jiffies, this run's jiffies) at 100 jiffies per second on 2 cores
    samples = [(0.0, 0, 0), (1.0, 150, 100), (2.0, 250, 200), (4.0, 650, 300)]
    load = accuracy.foreign_cores(samples, ticks_per_s=100)
    assert load == [(0.5, pytest.approx(0.5)), (1.5, pytest.approx(0.0)), (3.0, pytest.approx(1.5))]
    report = bench_report([row(0, 0.0, 100, 50), row(1, 2.5, 100, 50)])
    report["requests"][0]["e2e_ms"], report["requests"][1]["e2e_ms"] = 1500.0, 1000.0
    per_request = accuracy.foreign_load_per_request(report, 0.0, load)
    assert per_request == {0: pytest.approx(0.25), 1: pytest.approx(1.5)}  # request 1: the nearest sample
    assert accuracy.quiet(per_request, 0.3) == {0}


def test_subsets_compare_the_same_requests_on_both_sides():
    rows = [row(i, 4.0 * i, 100.0 + 100 * (i % 2), 50.0) for i in range(6)]
    report = bench_report(rows)
    odd = {1, 3, 5}
    assert accuracy.measured_metrics(report, odd)["ttft_ms_p50"] == 200.0
    config = accuracy.sim_config(str(EXAMPLE_PROFILE), accuracy.Calibration(), max_num_seqs=64, max_batched_tokens=2048)
    _, result = simulate(config, accuracy.workload_from_bench(report))
    assert sorted(r.request_id for r in result.requests) == list(range(6))
    predicted = accuracy.predicted_metrics_of(result.requests, odd)
    assert predicted["ttft_ms_p50"] == pytest.approx(result.requests[1].ttft_s * 1e3)


def test_cpu_split_separates_engines_stack_and_other_processes():
    # 10 s at 100 jiffies/s: the machine was busy 1500 jiffies, this run 1200 of them, its engines 1000
    split = accuracy.cpu_split([(0.0, 0, 0, 0), (5.0, 700, 600, 500), (10.0, 1500, 1200, 1000)], ticks_per_s=100)
    assert split == {"engines": pytest.approx(1.0), "stack": pytest.approx(0.2), "foreign": pytest.approx(0.3)}
    assert accuracy.cpu_split([(0.0, 0, 0), (1.0, 1, 1)]) is None  # samples without the engines' share
