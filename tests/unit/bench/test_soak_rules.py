"""The pure parts of benchmarks/soak.py (`benchmarks/soak_report.py`): the mix, the windows' requests,
process groups, and the pass rules, each of which must break the verdict when its bound is broken."""

import importlib.util
import sys
from pathlib import Path

import pytest

from pdserve.bench.outcome import Outcome

SCRIPT = Path(__file__).resolve().parents[3] / "benchmarks" / "soak_report.py"
_spec = importlib.util.spec_from_file_location("soak_report", SCRIPT)
soak_report = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("soak_report", soak_report)
_spec.loader.exec_module(soak_report)

GIB = 2**30


def outcome(ttft_ms: float, tpot_ms: float = 50.0, error: str | None = None) -> Outcome:
    """A finished 11-token request whose first token came `ttft_ms` after its send."""
    result = Outcome(0, 0, 0.0, 96, 11, start_s=100.0)
    first = 100.0 + ttft_ms / 1e3
    result.token_times_s = [first, first + 10 * tpot_ms / 1e3]
    result.token_counts = [1, 10]
    result.finish_reason = "length"
    result.end_s = result.token_times_s[-1]
    if error:
        result.fail(error, "refused", result.end_s)
    return result


def windows(ttft_p99s, rss_gib, failed=(), groups=None):
    """Window rows: window k has 98 requests at 100 ms TTFT and two at `ttft_p99s[k]` (its p99), RSS
    `rss_gib[k]` in the decode engine at its end."""
    rows = []
    for k, (slow, rss) in enumerate(zip(ttft_p99s, rss_gib)):
        outcomes = [outcome(100.0) for _ in range(98)] + [outcome(slow), outcome(slow)]
        outcomes += [outcome(100.0, error="UNAVAILABLE") for _ in range(failed[k] if failed else 0)]
        by_group = {"pdserve up": int(0.5 * GIB), "decode engine": int(rss * GIB)}
        by_group.update((groups or {}).get(k, {}))
        by_group["total"] = sum(by_group.values())
        rows.append(soak_report.window_row(k, outcomes, by_group, 1.5, warmup=k == 0))
    return rows


def test_a_steady_soak_passes():
    verdict = soak_report.compute_verdict(windows([900, 1000, 1020], [3.0, 3.05, 3.06]), capacity_failed=0)
    assert verdict["passed"], verdict["broken"]
    assert verdict["rss_growth"]["decode engine"] == pytest.approx(0.02, abs=1e-4)  # since the warm-up's end
    assert verdict["p99_drift"]["ttft_ms"]["drift"] == pytest.approx(0.02, abs=1e-3)


def test_rss_growth_after_warmup_breaks_the_verdict_per_group():
    """A 0.5 GB gateway growing 6% breaks the soak although the whole tree grows less than 1%."""
    rows = windows([1000, 1000, 1000], [8.0, 8.0, 8.0], groups={2: {"pdserve up": int(0.53 * GIB)}})
    verdict = soak_report.compute_verdict(rows, capacity_failed=0)
    assert not verdict["passed"]
    assert verdict["rss_growth"]["pdserve up"] == pytest.approx(0.06, abs=1e-3)
    assert verdict["rss_growth"]["total"] < 0.01
    assert any("pdserve up" in line for line in verdict["broken"])


def test_p99_drift_upward_breaks_the_verdict_and_a_faster_later_half_does_not():
    slower = soak_report.compute_verdict(windows([500, 1000, 1200], [3, 3, 3]), capacity_failed=0)
    assert not slower["passed"] and slower["p99_drift"]["ttft_ms"]["drift"] > 0.10
    faster = soak_report.compute_verdict(windows([500, 1200, 1000], [3, 3, 3]), capacity_failed=0)
    assert faster["passed"] and faster["p99_drift"]["ttft_ms"]["drift"] < 0


def test_any_failure_breaks_the_verdict_in_a_window_or_in_the_capacity_run():
    rows = windows([1000] * 3, [3] * 3, failed=(0, 0, 1))
    assert not soak_report.compute_verdict(rows, 0)["passed"]
    assert "failed: 1 (UNAVAILABLE: 1)" in soak_report.format_table(rows, soak_report.compute_verdict(rows, 0))
    assert not soak_report.compute_verdict(windows([1000] * 3, [3] * 3), capacity_failed=2)["passed"]


def test_drift_halves_compare_window_3_with_2_and_pool_halves_of_a_long_soak():
    assert soak_report.drift_halves(windows([1] * 3, [1] * 3)) == ([1], [2])
    rows = windows([1000] * 30, [3] * 30)
    assert soak_report.drift_halves(rows) == (list(range(1, 15)), list(range(16, 30)))  # window 15 left out
    with pytest.raises(ValueError):
        soak_report.compute_verdict(windows([1] * 2, [1] * 2), 0)


def test_every_window_sends_the_same_schedule_with_prompts_of_its_own():
    first, third = soak_report.window_requests(0, 2.0, 60.0, seed=3), soak_report.window_requests(2, 2.0, 60.0, seed=3)
    assert [(r.arrival_s, r.prompt_tokens, r.output_tokens) for r in first] == \
        [(r.arrival_s, r.prompt_tokens, r.output_tokens) for r in third]
    assert 80 < len(first) < 160 and all(r.arrival_s < 60.0 for r in first)
    assert not {r.index for r in first} & {r.index for r in third}
    assert {(r.prompt_tokens, r.output_tokens) for r in first} == \
        {(e.prompt_tokens, e.output_tokens) for e in soak_report.MIX}


def test_processes_are_grouped_by_role_and_tier():
    group = soak_report.process_group
    assert group(10, "pdserve", 10, None) == "pdserve up"
    assert group(11, "ray::Worker.generate", 10, "decode") == "decode worker"
    assert group(12, "VLLM::EngineCore", 10, "prefill") == "prefill engine"
    assert group(13, "ray::ClusterCon", 10, None) == "controller"  # psutil's name() when it has only /proc's comm
    assert group(14, "gcs_server", 10, None) == "ray system"
    assert group(15, "VLLM::EngineCor", 10, None) == "engines, tier unknown"  # never counted as Ray's own
    assert soak_report.rss_by_group([("a", 1), ("b", 2), ("a", 3)]) == {"a": 4, "b": 2, "total": 6}


def test_table_and_plot(tmp_path):
    rows = windows([900, 1000, 1020], [3.0, 3.1, 3.1])
    verdict = soak_report.compute_verdict(rows, 0)
    table = soak_report.format_table(rows, verdict)
    assert "(warm-up)" in table and table.endswith("PASS")
    samples = [{"t_s": 60.0 * (k + 1), "rss_bytes": row["rss_bytes"]} for k, row in enumerate(rows)]
    soak_report.plot(tmp_path / "soak.png", samples, rows, 60.0)
    assert (tmp_path / "soak.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
