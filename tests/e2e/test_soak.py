"""The bounded soak, 3 minutes of it: `benchmarks/soak.py` as a user runs it, with its own `pdserve up`.

It starts its own cluster (1 prefill + 1 decode vLLM-CPU worker, the default model) rather than using the
integration tests' session cluster: the soak measures the RSS of `pdserve up`'s whole process tree, and
the session cluster's processes live inside pytest's. The e2e tests run before the integration ones
(pytest's directory order), so no session cluster is up meanwhile: two engines here, at most.

Method and bounds: benchmarks/soak.py and benchmarks/soak_report.py (capacity by a 60 s closed loop, then
three 1-minute windows at 0.8 of it; window 1 is the warm-up; RSS growth < 5% per process group, p99 TTFT
and TPOT of window 3 within +10% of window 2's, 0 failed). This test asserts the failures and the RSS
growth; the drift bound needs the 30-minute run's sample sizes (see the assertion).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[2]
SOAK_TIMEOUT_S = 900  # start (about 1 min) + capacity (1 min) + 3 windows + the last requests + stop
GROUPS = {"pdserve up", "ray system", "controller", "prefill worker", "prefill engine", "decode worker", "decode engine"}


@pytest.mark.ray
@pytest.mark.vllm
@pytest.mark.slow
def test_a_3_minute_soak_fails_nothing_and_leaks_nothing(tmp_path, summary_line):
    process = subprocess.Popen([sys.executable, str(ROOT / "benchmarks" / "soak.py"), "--duration-s", "180",
                                "--window-s", "60", "--out", str(tmp_path)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    try:
        output, _ = process.communicate(timeout=SOAK_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGINT)  # the soak stops its `pdserve up` on Ctrl-C
        output, _ = process.communicate(timeout=180)
        pytest.fail(f"the soak ran past {SOAK_TIMEOUT_S} s:\n{output[-5000:]}")
    report_path = tmp_path / "soak.json"
    assert report_path.exists(), output[-5000:]
    report = json.loads(report_path.read_text())
    verdict = report["verdict"]
    drift = verdict["p99_drift"]
    growth = [v for v in verdict["rss_growth"].values() if v is not None]
    summary_line(f"soak (3 min): capacity {report['capacity']['requests_per_s']} req/s, "
                 f"{sum(w['num_sent'] for w in report['windows'])} requests at {report['rate_per_s']} req/s, "
                 f"{verdict['num_failed']} failed; p99 drift TTFT {drift['ttft_ms']['drift']}, TPOT "
                 f"{drift['tpot_ms']['drift']}; RSS growth {verdict['rss_growth'].get('total')} in all, "
                 f"largest group {max(growth, default=None)}")
    # Asserted here: nothing failed and no process group grew (a leak shows in 3 minutes). The p99 drift is
    # printed, not asserted: a 1-minute window holds ~80 requests, so its p99 is its second-slowest request,
    # and two such windows differed by up to 17% on a quiet machine with nothing wrong. The drift bound is
    # the 30-minute soak's (soak.py's own verdict and exit code), where each half holds ~1,000 requests.
    assert verdict["num_failed"] == 0, output[-5000:]
    assert growth and max(growth) < verdict["bounds"]["max_rss_growth"], verdict["rss_growth"]
    assert process.returncode in (0, 1), output[-5000:]  # 1: a bound broke (the drift, here), not a crash
    assert len(report["windows"]) == 3 and [w["warmup"] for w in report["windows"]] == [True, False, False]
    assert all(w["num_sent"] >= 30 for w in report["windows"]), "too few requests per window to mean anything"
    assert GROUPS <= set(report["windows"][-1]["rss_bytes"]), "a process group of the cluster was not measured"
    assert (tmp_path / "soak.png").stat().st_size > 10_000
    assert not _left_in_session(report["root_pid"]), "the soak left processes of its `pdserve up` behind"


def _left_in_session(root_pid: int) -> list[str]:
    """Processes still in the session `pdserve up` led (Ray's workers re-parent but keep it)."""
    left = []
    for proc in psutil.process_iter(["pid", "name"]):
        try:
            if proc.pid != os.getpid() and os.getsid(proc.pid) == root_pid:
                left.append(f"{proc.info['name']} ({proc.pid})")
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return left
