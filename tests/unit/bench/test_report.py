import json

import pytest

from orchestrator.errors import ConfigError
from pdserve.bench import report
from pdserve.bench.outcome import Outcome
from pdserve.bench.stats import compute_summary


def _summary(ttft_s, duration_s):
    outcomes = []
    for i in range(10):
        o = Outcome(i, 0, 0.0, 8, 2, start_s=0.0, end_s=ttft_s + 0.1)
        o.token_times_s, o.token_counts, o.finish_reason = [ttft_s, ttft_s + 0.1], [1, 1], "length"
        outcomes.append(o)
    return compute_summary(outcomes, duration_s)


def test_comparison_ratios_are_this_over_baseline():
    rows = {r["metric"]: r for r in report.compute_comparison(_summary(0.2, 5.0), _summary(0.4, 10.0))}
    assert rows["throughput.requests_per_s"]["ratio"] == pytest.approx(2.0)
    assert rows["ttft_ms.p50"]["ratio"] == pytest.approx(0.5)
    assert rows["ttft_ms.p50"]["better"] == "lower"
    assert rows["num_failed"]["ratio"] is None  # 0 / 0 is undefined, not 1


def test_table_and_comparison_render(tmp_path):
    summary = _summary(0.2, 5.0)
    table = report.format_table(summary)
    assert "ttft_ms" in table and "2.000 req/s" in table
    text = report.format_comparison(report.compute_comparison(summary, summary), "base.json")
    assert "base.json" in text and "1.000" in text


def test_document_round_trips_and_bad_baselines_are_refused(tmp_path):
    document = report.build_document(command="pdserve bench", argv=["bench"], config={}, started_at="now",
                                     summary=_summary(0.1, 1.0), notes=["n"], requests=[])
    path = tmp_path / "run.json"
    report.write_json(document, path)
    assert report.load_json(path)["summary"]["num_succeeded"] == 10
    with pytest.raises(ConfigError):
        report.load_json(tmp_path / "missing.json")
    (tmp_path / "other.json").write_text(json.dumps({"x": 1}))
    with pytest.raises(ConfigError):
        report.load_json(tmp_path / "other.json")
