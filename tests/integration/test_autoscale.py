"""The autoscaling loop end to end on timing-engine workers (real Ray actors, real KV bytes over ZeroMQ,
step times from the shipped profile): under a prompt-heavy phase the prefill pool grows, under a
generation-heavy phase the decode pool grows, each on its own, both shrink afterwards, and no request
fails. `pdserve bench --ramp` drives it and records replicas over time, as a user would.
"""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

from clusters import start_serving

pytestmark = [pytest.mark.ray, pytest.mark.slow]

# The synthetic SmolLM2 profile: its decode step time grows with the batch (the measured CPU one is flat up
# to the batch 16 it measured), so a generation-heavy load needs more decode workers.
PROFILE = Path(__file__).resolve().parents[2] / "orchestrator" / "data" / "profiles" / "smollm2-135m-cpu-synthetic.yaml"
PLANNER = {
    "planner.enabled": True, "planner.interval_s": 2.0, "planner.forecast_horizon_s": 4.0,
    "planner.slo": {"ttft_ms": 1500, "itl_ms": 120, "percentile": 90},
    "planner.prefill": {"min_replicas": 1, "max_replicas": 5, "scale_down_cooldown_s": 4, "scale_down_window_s": 4},
    "planner.decode": {"min_replicas": 1, "max_replicas": 6, "scale_down_cooldown_s": 4, "scale_down_window_s": 4},
}


@pytest.fixture(scope="module")
def timing_serving(ray_session, loop_thread):
    serving = start_serving(loop_thread, "smollm2-135m-instruct", **{
        "engine.kind": "timing", "engine.profile": str(PROFILE), "pools.cpus_per_worker": 0.1,
        "server.max_concurrent_requests": 1024, **PLANNER})
    try:
        yield serving
    finally:
        serving.stop()


def test_each_pool_follows_its_own_load_and_shrinks_after(timing_serving, tmp_path):
    report = tmp_path / "ramp.json"
    result = subprocess.run(
        [str(Path(sys.executable).with_name("pdserve")), "bench", "--target", timing_serving.grpc_target, "--ramp",
         "--rate", "1", "--ramp-shape", "3,3,0.2", "--ramp-lengths", "768x4,64x160,64x4", "--duration-s", "60",
         "--ramp-tail-s", "30", "--poll-interval-s", "0.5", "--num-requests", "1000", "--quiet", "--out", str(report)],
        capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]  # exit 0: no request failed
    rows = list(csv.DictReader(open(tmp_path / "ramp.replicas.csv")))
    by_phase: dict[str, dict[str, list[int]]] = {}
    for row in rows:
        phase = by_phase.setdefault(row["phase"], {"prefill": [], "decode": []})
        for tier in ("prefill", "decode"):
            if row[f"{tier}_actual"]:
                phase[tier].append(int(row[f"{tier}_actual"]))
    prompt_heavy, generation_heavy = by_phase["0"], by_phase["1"]
    assert max(prompt_heavy["prefill"]) >= 2, by_phase  # the prefill pool grew with the prompts ...
    assert max(prompt_heavy["decode"]) == 1, by_phase  # ... and the decode pool did not
    assert max(generation_heavy["decode"]) >= 2, by_phase  # the decode pool grew with the generations
    last = rows[-1]
    assert int(last["decode_actual"]) < max(generation_heavy["decode"]), rows[-5:]  # and shrinks afterwards
    assert int(last["prefill_actual"]) < max(prompt_heavy["prefill"]), rows[-5:]
