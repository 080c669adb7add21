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
