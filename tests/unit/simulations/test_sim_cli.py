"""The CLI as a user runs it: outputs written, bad input answered with exit code 2 and a useful message."""

import json

from pdserve.cli import main


def test_simulate_writes_summary_report_and_plot(tmp_path, capsys):
    out = tmp_path / "sim"
    code = main(["simulate", "--trace", "azure_code", "--limit", "150", "--decode", "2", "--out", str(out), "--no-progress"])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    for key in ("tokens_per_s_per_mw", "usd_per_million_tokens", "goodput_rps", "ttft_ms_p50", "ttft_ms_p90",
                "ttft_ms_p99", "tpot_ms_p50", "tpot_ms_p90", "tpot_ms_p99", "replicas", "configuration"):
        assert key in summary
    assert summary["num_requests"] == 150 and summary["replicas"]["decode"] == 2
    assert (out / "report.md").read_text().startswith("# Simulation")
    assert (out / "replicas.png").stat().st_size > 1000


def test_plan_in_process_writes_frontier(tmp_path):
    out = tmp_path / "plan"
    code = main(["plan", "--workload", "chat", "--rate", "2", "--duration", "20", "--gpus", "2,4", "--decode-tps", "1",
                 "--prefill-tps", "1", "--ratios", "1:1", "--scales", "1,2", "--workers", "0", "--out", str(out),
                 "--no-progress"])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["frontier"] and summary["best"]["meets_slo"] and len(summary["scaling"]) == 2
    assert (out / "pareto.png").exists() and (out / "scaling.png").exists()


def test_bad_input_exits_2_with_the_valid_names(capsys):
    assert main(["simulate", "--model", "gpt-9", "--no-progress"]) == 2
    assert "llama-3.1-8b" in capsys.readouterr().err
    assert main(["plan", "--accelerators", "h100-sxm,tpu", "--workers", "0"]) == 2
    assert "b200" in capsys.readouterr().err
    assert main(["simulate", "--trace", "/nonexistent/trace.csv"]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["simulate", "--tpot-slo-ms", "0"]) == 2
    assert main(["simulate", "--coefficients", "1,2,3"]) == 2
    assert main(["plan", "--ratios", "1-2", "--workers", "0"]) == 2


CPU_PROFILE = "orchestrator/data/profiles/smollm2-135m-cpu.yaml"


def test_plan_with_a_measured_profile_times_every_engine_by_it(tmp_path):
    out = tmp_path / "plan"
    code = main(["plan", "--profile", CPU_PROFILE, "--workload", "chat", "--rate", "0.3", "--duration", "60",
                 "--gpus", "2,4", "--ttft-slo-ms", "3000", "--tpot-slo-ms", "200", "--scales", "1", "--workers", "0",
                 "--out", str(out), "--no-progress"])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    configurations = [p["configuration"] for p in summary["candidates"]]
    assert configurations and all(c["timing"] == "profile" and c["profile"] == CPU_PROFILE for c in configurations)
    assert all(c["model"] == "smollm2-135m" for c in configurations)  # the profile's model is the default
    assert {(c["prefill_tp"], c["decode_tp"]) for c in configurations} == {(1, 1)}  # the engine as measured
    assert {c["mode"] for c in configurations} == {"disaggregated", "colocated"}


def test_plan_with_coefficients_and_measured_timing_errors(capsys):
    code = main(["plan", "--coefficients", "5,0.1,0,10,0.001,0.2", "--kv-tokens", "100000", "--workload", "chat",
                 "--rate", "0.5", "--duration", "30", "--gpus", "2", "--scales", "", "--workers", "0", "--no-progress"])
    assert code in (0, 1)  # a search ran (whether anything met the default SLOs is the workload's business)
    assert "searching" in capsys.readouterr().out
    assert main(["plan", "--profile", CPU_PROFILE, "--decode-tps", "1,2", "--workers", "0"]) == 2
    assert "TP degree" in capsys.readouterr().err
    assert main(["plan", "--profile", CPU_PROFILE, "--coefficients", "1,2,3,4,5,6", "--workers", "0"]) == 2
    assert "not both" in capsys.readouterr().err
    assert main(["simulate", "--kv-tokens", "1000", "--no-progress"]) == 2
    assert "--kv-tokens applies" in capsys.readouterr().err
